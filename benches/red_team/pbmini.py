"""Minimal stdlib-only writer of Core ML ML Program packages, for the red-team benches here (session 22)."""
import json, os, struct

def varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F; n >>= 7
        if n: out.append(b | 0x80)
        else: out.append(b); return bytes(out)

def f_var(num, v): return varint(num << 3) + varint(v)
def f_len(num, b):
    if isinstance(b, str): b = b.encode()
    return varint(num << 3 | 2) + varint(len(b)) + b

FP16 = 10
def tensor_type(dtype, dims):
    t = f_var(1, dtype) + f_var(2, len(dims))
    for d in dims: t += f_len(3, f_len(1, f_var(1, d)))
    return f_len(1, t)  # ValueType.tensorType

def nvt(name, vtype): return f_len(1, name) + f_len(2, vtype)
def str_value(s):
    return f_len(2, f_len(1, f_var(1, 2))) + f_len(3, f_len(1, f_len(4, f_len(1, s))))
def attr(key, value): return f_len(5, f_len(1, key) + f_len(2, value))
def inp(key, name): return f_len(2, f_len(1, key) + f_len(2, f_len(1, f_len(1, name))))

def const_op(name, dims, offset, dtype=FP16):
    vt = tensor_type(dtype, dims)
    val = f_len(2, vt) + f_len(5, f_len(1, "@model_path/weights/weight.bin") + f_var(2, offset))
    return f_len(1, "const") + f_len(3, nvt(name, vt)) + attr("name", str_value(name)) + attr("val", val)

def linear_op(name, x, w, out_dims, dtype=FP16):
    return (f_len(1, "linear") + inp("x", x) + inp("weight", w)
            + f_len(3, nvt(name, tensor_type(dtype, out_dims))) + attr("name", str_value(name)))

def feature(name, dims):
    return f_len(1, name) + f_len(3, f_len(5, f_len(1, b"".join(varint(d) for d in dims)) + f_var(2, 65552)))

def model(ops, out_name, in_dims, out_dims, opset="CoreML6", spec=7):
    block = f_len(2, out_name) + b"".join(f_len(3, op) for op in ops)
    func = f_len(1, nvt("x", tensor_type(FP16, in_dims))) + f_len(2, opset) + f_len(3, f_len(1, opset) + f_len(2, block))
    prog = f_var(1, 1) + f_len(2, f_len(1, "main") + f_len(2, func))
    desc = f_len(1, feature("x", in_dims)) + f_len(10, feature(out_name, out_dims))
    return f_var(1, spec) + f_len(2, desc) + f_len(502, prog)

class WeightBin:
    def __init__(self): self.buf = bytearray(64); self.n = 0
    def add(self, data, code=1):
        while len(self.buf) % 64: self.buf.append(0)
        off = len(self.buf)
        self.buf += struct.pack("<IIQQQ", 0xDEADBEEF, code, len(data), off + 64, 0) + bytes(32) + data
        self.n += 1
        return off
    def bytes(self):
        b = bytearray(self.buf); b[0:8] = struct.pack("<II", self.n, 2)
        while len(b) % 64: b.append(0)
        return bytes(b)

def package(path, model_bytes, weight_bytes):
    d = os.path.join(path, "Data", "com.apple.CoreML")
    os.makedirs(os.path.join(d, "weights"), exist_ok=True)
    open(os.path.join(d, "model.mlmodel"), "wb").write(model_bytes)
    open(os.path.join(d, "weights", "weight.bin"), "wb").write(weight_bytes)
    man = {"fileFormatVersion": "1.0.0", "itemInfoEntries": {
        "A": {"author": "com.apple.CoreML", "description": "CoreML Model Weights", "name": "weights", "path": "com.apple.CoreML/weights"},
        "B": {"author": "com.apple.CoreML", "description": "CoreML Model Specification", "name": "model.mlmodel", "path": "com.apple.CoreML/model.mlmodel"}},
        "rootModelIdentifier": "B"}
    json.dump(man, open(os.path.join(path, "Manifest.json"), "w"), indent=4)

def linear_chain(path, names, rows=64, data=None):
    """One fp16 [rows, rows] weight per name, each feeding a linear; returns nothing."""
    wb = WeightBin(); ops = []; prev = "x"
    for i, n in enumerate(names):
        blob = data[i] if data else bytes((j * 7 + i) % 251 & 0x3B for j in range(rows * rows * 2))
        off = wb.add(blob)
        ops.append(const_op(n, (rows, rows), off)); ops.append(linear_op(f"l{i}", prev, n, (1, rows))); prev = f"l{i}"
    package(path, model(ops, prev, (1, rows), (1, rows)), wb.bytes())
