#!/usr/bin/env python3
"""Red team B-1 (session 22): blobs crafted to share one unseeded xxh3_64 made the blob writer's
store-once lookup quadratic (1,500 blobs: 24 s against 0.15 s); the hash is seeded since.

Builds two packages of N fp16 [32,32] weights with `mlprune generate`, then overwrites every weight
blob in weight.bin: in one, N distinct blobs that share one xxh3_64 (the writer's content hash before
session 22; two lanes of XXH3's first block whose low 32 bits equal the public default secret's, high
halves summing to a constant); in the control, the same blobs with one more distinct value each
(no collision). Times `mlprune prune IN OUT --sparsity 0.5` on both. Stdlib only. Prints FOUND where the colliding run is over 20 times slower. Run from the
repository root: `N=1500 python3 benches/red_team/hash_collisions.py`.
"""
import os, struct, subprocess, sys, tempfile, time, shutil, random

BIN = os.environ.get("BIN", "target/release/mlprune")
N = int(os.environ.get("N", "1500"))
KS = bytes.fromhex(
    "b8fe6c3923a44bbe7c01812cf721ad1cded46de9839097db7240a4a4b7b3671fcb79e64eccc0e578825ad07dccff7221b8084674f743248ee03590e6813a264c"
    "3c2852bb91c300cb88d0658b1b532ea371644897a20df94e3819ef46a9deacd8a8fa763fe39c343ff9dcbbc7c70b4f1d8a51e04bcdb45931c89f7ec9d9787364")

def f16_ok(u32):
    return all((h & 0x7C00) != 0x7C00 for h in (u32 & 0xFFFF, u32 >> 16))

def pick_lane():
    for lane in range(8):
        for s0 in range(16):
            for s1 in range(s0 + 1, 16):
                k0 = struct.unpack_from("<I", KS, 8 * (s0 + lane))[0]
                k1 = struct.unpack_from("<I", KS, 8 * (s1 + lane))[0]
                if f16_ok(k0) and f16_ok(k1):
                    return lane, s0, s1, k0, k1

def blobs(count, collide, n=2048, C=0x11111111):
    lane, s0, s1, k0, k1 = pick_lane()
    rnd = random.Random(7)
    out, t = [], 0
    while len(out) < count:
        t += 1
        a, b = t & 0xFFFFFFFF, (C - t) & 0xFFFFFFFF
        if not (f16_ok(a) and f16_ok(b)):
            continue
        buf = bytearray(n)
        struct.pack_into("<II", buf, 64 * s0 + 8 * lane, k0, a)
        struct.pack_into("<II", buf, 64 * s1 + 8 * lane, k1, b)
        if not collide:
            struct.pack_into("<H", buf, 1500, rnd.getrandbits(14))  # breaks the collision
        out.append(bytes(buf))
    return out

def patch(weight_bin, new_blobs):
    data = bytearray(open(weight_bin, "rb").read())
    off, i = 64, 0
    while off + 64 <= len(data):
        sentinel, code, size, doff = struct.unpack_from("<IIQQ", data, off)
        assert sentinel == 0xDEADBEEF
        if size == 2048:
            data[doff:doff + 2048] = new_blobs[i]; i += 1
        off = (doff + size + 63) // 64 * 64
    assert i == len(new_blobs), (i, len(new_blobs))
    open(weight_bin, "wb").write(data)

def timed(args, timeout):
    t = time.time()
    p = subprocess.run(["bash", "-c", "ulimit -v 4000000; exec timeout -s KILL %d %s" % (timeout, " ".join(args))],
                       capture_output=True)
    return time.time() - t, p.returncode, p.stderr.decode(errors="replace").strip()

def main():
    work = tempfile.mkdtemp(prefix="mlprune-bench-collide-")
    try:
        res = {}
        for kind, collide in (("control", False), ("colliding", True)):
            pkg = os.path.join(work, kind + ".mlpackage")
            subprocess.run([BIN, "generate", "--layers", str(N), "--shape", "32x32", pkg],
                           check=True, capture_output=True)
            patch(os.path.join(pkg, "Data/com.apple.CoreML/weights/weight.bin"), blobs(N, collide))
            dt, rc, err = timed([BIN, "prune", pkg, os.path.join(work, kind + "-out.mlpackage"),
                                 "--sparsity", "0.5", "-q"], 600)
            res[kind] = dt
            print(f"{kind}: {N} weights of 2 KiB, prune rc={rc} {dt:.2f} s {err[:200]}")
        ratio = res["colliding"] / max(res["control"], 0.01)
        print(f"ratio colliding/control = {ratio:.0f}x")
        print("FOUND" if res["colliding"] > 5 and ratio > 20 else "NOT FOUND")
    finally:
        shutil.rmtree(work, ignore_errors=True)

main()
