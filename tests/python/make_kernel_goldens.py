#!/usr/bin/env python3
"""Generates tests/golden/kernels/*.json: expected outputs of coremltools 9.0's pruning kernels.

Run with the project venv (coremltools 9.0, numpy 2.4):
    .venv/bin/python tests/python/make_kernel_goldens.py [--out tests/golden/kernels]

numpy's SIMD argsort (x86-simd-sort) breaks ties unstably for float32, so numpy's CPU dispatch is
limited before numpy is imported (spec §5.8); the goldens are defined under that setting.

Two sources of expected values, recorded per case in "source":
* "coremltools_model": a one-op ML Program (`linear` for rank 2, `conv` for rank 3/4) is converted
  with ct.convert, pruned with cto.coreml.prune_weights, and the dense weight is read back with the
  decompression oracle of spec §6 (constexpr_sparse_to_dense.materialized_val_inference). The input
  weights are read back from the unpruned model the same way.
* "coremltools_pass": coremltools' own pass kernels (`prune_weights.compress_by_threshold`,
  `compress_by_magnitude`, `compress_by_nm_sparsity`) called on the dense array — the exact code the
  pass runs on a const's value, minus model building. Used for the bulk of the cases and for inputs a
  model cannot carry (NaN, ±inf, int8/uint8). Every model case is also checked against this path.

Each case: {"name", "source", "dtype" (fp16|fp32|int8|uint8), "shape", "mode"
(threshold|magnitude|block|n_m), "params" (non-finite floats as strings, e.g. "inf"), "weights" (hex of little-endian bytes), "expected"} with
expected either {"mask": hex of the LSB-first packed keep mask, "nonzero": hex, "kept": count},
{"skipped": "<coremltools warning text>"} or {"error": "<exception>"}.
"""
import os

os.environ["NPY_DISABLE_CPU_FEATURES"] = "X86_V3 X86_V4 AVX512_ICL"
os.environ.setdefault("TQDM_DISABLE", "1")  # coremltools' pass progress bars

import argparse
import json
import logging
import sys
import tempfile
import warnings

import numpy as np

warnings.simplefilter("ignore")
logging.getLogger("coremltools").setLevel(logging.WARNING)

import coremltools as ct  # noqa: E402
import coremltools.optimize as cto  # noqa: E402
from coremltools.converters.mil import Builder as mb  # noqa: E402
from coremltools.converters.mil.frontend.milproto.load import load as milproto_to_pymil  # noqa: E402
from coremltools.optimize.coreml._quantization_passes import prune_weights as PW  # noqa: E402

DTYPES = {"fp16": np.float16, "fp32": np.float32, "int8": np.int8, "uint8": np.uint8}
NAMES = {np.dtype(v): k for k, v in DTYPES.items()}


class Captured(logging.Handler):
    """Collects coremltools' warnings (the skip messages)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


CAPTURE = Captured()
logging.getLogger("coremltools").addHandler(CAPTURE)


def hexle(a):
    a = np.ascontiguousarray(a)
    return a.astype(a.dtype.newbyteorder("<")).tobytes().hex()


def sparse_expected(nonzero, mask):
    return {"mask": hexle(np.asarray(mask, np.uint8)), "nonzero": hexle(nonzero), "kept": int(nonzero.size)}


def run_pass(w, mode, params):
    """coremltools' pass kernel on `w` -> expected dict."""
    CAPTURE.messages.clear()
    try:
        if mode == "threshold":
            r = PW.compress_by_threshold(w, params["threshold"], params["minimum_sparsity_percentile"])
        elif mode == "magnitude":
            r = PW.compress_by_magnitude(w, params["target_sparsity"])
        elif mode == "block":
            r = PW.compress_by_magnitude(w, params["target_sparsity"], block_size=params["block_size"], dim=params["dim"])
        else:
            r = PW.compress_by_nm_sparsity(w, (params["n"], params["m"]), params["dim"])
    except Exception as e:  # coremltools itself fails: the Rust kernel must return an error
        return {"error": f"{type(e).__name__}: {e}"}
    if r is None:
        assert len(CAPTURE.messages) == 1, CAPTURE.messages
        return {"skipped": CAPTURE.messages[0]}
    assert r.nonzero_data.dtype == w.dtype, (r.nonzero_data.dtype, w.dtype)
    assert tuple(r.shape) == w.shape
    return sparse_expected(r.nonzero_data, r.mask)


# ---- end-to-end through a model ------------------------------------------------------------------

def dense_weights(pkg_path):
    """Spec §6 oracle."""
    m = ct.models.MLModel(pkg_path, skip_model_load=True)
    spec = m.get_spec()
    prog = milproto_to_pymil(model_spec=spec, specification_version=spec.specificationVersion,
                             file_weights_dir=m.weights_dir)
    out = {}

    def walk(block):
        for op in block.operations:
            yield op
            for b in op.blocks:
                yield from walk(b)

    for func in prog.functions.values():
        for op in walk(func):
            if op.op_type == "const" and isinstance(op.outputs[0].val, np.ndarray):
                out[op.outputs[0].name] = op.outputs[0].val
            elif op.op_type.startswith("constexpr_"):
                vals = op.materialized_val_inference()
                vals = vals if isinstance(vals, (tuple, list)) else [vals]
                for var, v in zip(op.outputs, vals):
                    out[var.name] = np.asarray(v)
    return out


def the_weight(dense, shape, sparsified):
    hits = [(k, v) for k, v in dense.items()
            if v.shape == tuple(shape) and k.endswith("_sparsified") == sparsified and "_mask" not in k]
    assert len(hits) == 1, [k for k, _ in hits]
    return hits[0][1]


def build_model(w32, fp16):
    shape = w32.shape
    if w32.ndim == 2:
        @mb.program(input_specs=[mb.TensorSpec(shape=(1, shape[1]))], opset_version=ct.target.iOS16)
        def prog(x):
            return mb.linear(x=x, weight=w32, name="lin")
    else:
        spatial = tuple(s + 2 for s in shape[2:])

        @mb.program(input_specs=[mb.TensorSpec(shape=(1, shape[1]) + spatial)], opset_version=ct.target.iOS16)
        def prog(x):
            return mb.conv(x=x, weight=w32, name="conv")
    precision = ct.precision.FLOAT16 if fp16 else ct.precision.FLOAT32
    return ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16,
                      compute_precision=precision, skip_model_load=True)


def config_for(mode, params):
    if mode == "threshold":
        c = cto.coreml.OpThresholdPrunerConfig(threshold=params["threshold"],
                                               minimum_sparsity_percentile=params["minimum_sparsity_percentile"],
                                               weight_threshold=0)
    elif mode == "magnitude":
        c = cto.coreml.OpMagnitudePrunerConfig(target_sparsity=params["target_sparsity"], weight_threshold=0)
    elif mode == "block":
        c = cto.coreml.OpMagnitudePrunerConfig(target_sparsity=params["target_sparsity"],
                                               block_size=params["block_size"], dim=params["dim"],
                                               weight_threshold=0)
    else:
        c = cto.coreml.OpMagnitudePrunerConfig(n_m_ratio=(params["n"], params["m"]), dim=params["dim"],
                                               weight_threshold=0)
    return cto.coreml.OptimizationConfig(global_config=c)


def run_model(w32, fp16, mode, params, tmp):
    """Returns (input weights as stored in the model, expected dict)."""
    model = build_model(w32, fp16)
    src = os.path.join(tmp, "src.mlpackage")
    model.save(src)
    w = the_weight(dense_weights(src), w32.shape, sparsified=False)
    CAPTURE.messages.clear()
    pruned = cto.coreml.prune_weights(ct.models.MLModel(src, skip_model_load=True), config_for(mode, params))
    dst = os.path.join(tmp, "dst.mlpackage")
    pruned.save(dst)
    dense = dense_weights(dst)
    try:
        d = the_weight(dense, w32.shape, sparsified=True)
    except AssertionError:
        # Not sparsified: coremltools skipped it; the first warning is the kernel's own message.
        skip = [m for m in CAPTURE.messages if "not applicable for Op" not in m and "op named" not in m]
        return w, {"skipped": skip[0]}
    flat = d.reshape(-1)
    keep = flat != 0
    return w, sparse_expected(flat[keep], np.packbits(keep.astype(np.uint8), bitorder="little"))


# ---- case generation -----------------------------------------------------------------------------

RNG = np.random.default_rng(20250911)


def normal(shape, dtype, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(dtype)


def grid(shape, dtype, step=0.125, span=8):
    """Coarse grid: many exact ties, +x and -x, and exact zeros."""
    return (RNG.integers(-span, span + 1, shape) * step).astype(dtype)


def with_specials(w, kinds=("nan", "inf", "-inf", "-0", "0")):
    w = w.copy()
    flat = w.reshape(-1)
    vals = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "-0": -0.0, "0": 0.0}
    for k in kinds:
        for i in RNG.choice(flat.size, size=max(1, flat.size // 40), replace=False):
            flat[i] = vals[k]
    return w


def with_nan_payloads(w):
    """Signalling and payload-carrying NaNs of both signs: numpy's `w * mask` quiets them."""
    w = w.copy()
    bits = {np.float16: [0x7C01, 0xFD23, 0x7E00, 0xFFFF], np.float32: [0x7F800001, 0xFFA12345, 0x7FC00000, 0xFFFFFFFF]}
    ut = np.uint16 if w.dtype == np.float16 else np.uint32
    flat = w.reshape(-1).view(ut)
    for k, b in enumerate(bits[w.dtype.type]):
        flat[(k * 7 + 3) % flat.size] = b
    return w


def lerp_variants(a, b, g, T):
    """numpy 2's `_lerp` (the spec formula) and plausible misreadings of it; keyed by name."""
    diff = T(b - a)
    spec = T(b - T(diff * T(1 - g))) if g >= 0.5 else T(a + T(diff * T(g)))
    return {
        "spec": spec,
        "one_minus_Tg": T(b - T(diff * T(1 - T(g)))) if g >= 0.5 else spec,
        "branch_on_Tg": T(b - T(diff * T(1 - g))) if T(g) >= 0.5 else T(a + T(diff * T(g))),
        "g_via_f32": T(b - T(diff * T(np.float32(1 - g)))) if g >= 0.5 else T(a + T(diff * T(np.float32(g)))),
        "f64_math": T(b - (float(b) - float(a)) * (1 - g)) if g >= 0.5 else T(float(a) + (float(b) - float(a)) * g),
    }


def mine_lerp_cases(c, per_variant=2):
    """fp16 magnitude cases on which a misreading of the interpolation prunes differently from the
    spec formula; coremltools then says which is right. A difference needs the interpolated value
    to round onto B in one reading and not the other, so the magnitudes are drawn from a few
    consecutive fp16 codes (A and B one ulp apart) and gamma is placed near 0.5.
    ("branch_on_Tg" is indistinguishable: T(g) can only reach 0.5 from below where both branches
    give the same exact midpoint, so it is not required.)"""
    required = ("one_minus_Tg", "f64_math")
    found = {k: 0 for k in lerp_variants(np.float16(0), np.float16(1), 0.25, np.float16) if k != "spec"}
    total = 0
    for attempt in range(400000):
        n = int(RNG.integers(10, 40))
        codes = RNG.integers(0x3C00, 0x3C00 + int(RNG.integers(4, 64)), n).astype(np.uint16)
        codes |= (RNG.integers(0, 2, n) << 15).astype(np.uint16)
        w = codes.view(np.float16).reshape(1, n)
        ts = float((RNG.integers(0, n - 1) + 0.5 + RNG.uniform(-3e-4, 3e-4)) / (n - 1))
        mag = np.sort(np.abs(w).ravel())
        quantile = (ts * 100) / 100.0
        vi = (mag.size - 1) * quantile
        prev = int(np.floor(vi))
        g = vi - prev
        a, b = mag[prev], mag[min(prev + 1, mag.size - 1)]
        v = lerp_variants(a, b, g, np.float16)
        counts = {k: int(np.sum(mag <= t)) for k, t in v.items()}
        wrong = [k for k in found if counts[k] != counts["spec"] and found[k] < per_variant]
        if wrong:
            c.add(f"mag_fp16_lerp_mined_{total}_{'_'.join(wrong)}", w, "magnitude", {"target_sparsity": ts})
            total += 1
            for k in wrong:
                found[k] += 1
            if all(found[k] >= per_variant for k in required):
                return
    raise AssertionError(f"not enough discriminating lerp cases: {found}")


def order_sensitive(shape, dim, b, T):
    """Blocks holding one large and b-1 small magnitudes, the large one first or last. Summed
    sequentially in the weight dtype the small squares vanish when the large one comes first;
    summed pairwise in f32 they do not. So the two reduction orders rank these blocks differently."""
    big, small = (1.0, 0.02) if T == np.float16 else (1.0, 1e-4)
    x = np.moveaxis(np.full(shape, small, T), dim, 0).copy()  # blocks run along axis 0 here
    for blk in range(x.shape[0] // b):
        rest = x[blk * b:(blk + 1) * b].reshape(b, -1)
        for r in range(rest.shape[1]):
            rest[0 if (blk + r) % 2 == 0 else b - 1, r] = big
        x[blk * b:(blk + 1) * b] = rest.reshape((b,) + x.shape[1:])
    return np.ascontiguousarray(np.moveaxis(x, 0, dim))


def ints(shape, dtype):
    info = np.iinfo(dtype)
    return RNG.integers(info.min, info.max + 1, shape).astype(dtype)


def small_ints(shape, dtype, span=11):
    lo = -span if dtype == np.int8 else 0
    return RNG.integers(lo, span + 1, shape).astype(dtype)


class Cases:
    def __init__(self):
        self.cases = []
        self.names = set()

    def add(self, name, w, mode, params, source="coremltools_pass", expected=None):
        assert name not in self.names, name
        self.names.add(name)
        if expected is None:
            expected = run_pass(w, mode, params)
        # JSON has no infinity: non-finite parameters are written as strings ("inf").
        params = {k: (repr(v) if isinstance(v, float) and not np.isfinite(v) else v) for k, v in params.items()}
        self.cases.append({"name": name, "source": source, "dtype": NAMES[w.dtype], "shape": list(w.shape),
                           "mode": mode, "params": params, "weights": hexle(w), "expected": expected})


def threshold_cases(c):
    for dt in ("fp16", "fp32"):
        T = DTYPES[dt]
        w = normal((24, 20), T, 0.1)
        for t in (0.0, 1e-12, 0.05, 0.1, 0.5, 1e6):
            for m in (0.0, 0.3, 0.5, 1.0):
                c.add(f"thr_{dt}_normal_t{t}_m{m}", w, "threshold", {"threshold": t, "minimum_sparsity_percentile": m})
        g = grid((17, 13), T)
        for t in (0.125, 0.25, 0.375):
            c.add(f"thr_{dt}_grid_t{t}", g, "threshold", {"threshold": t, "minimum_sparsity_percentile": 0.0})
        s = with_specials(normal((16, 16), T))
        for t in (0.0, 0.7, float("inf")):
            c.add(f"thr_{dt}_specials_t{t}", s, "threshold", {"threshold": t, "minimum_sparsity_percentile": 0.0})
    # A threshold that rounds onto an fp16 value (spec §5.5) and one just below an fp16 value.
    w = normal((12, 12), np.float16, 0.1)
    w.reshape(-1)[::7] = np.float16(0.0999755859375)
    c.add("thr_fp16_rounds_onto_value", w, "threshold", {"threshold": 0.09997, "minimum_sparsity_percentile": 0.0})
    v = float(np.float16(0.0999755859375))
    c.add("thr_fp16_just_below_value", w, "threshold",
          {"threshold": float(np.nextafter(v, 0)), "minimum_sparsity_percentile": 0.0})
    c.add("thr_fp16_just_above_value", w, "threshold",
          {"threshold": float(np.nextafter(v, 1)), "minimum_sparsity_percentile": 0.0})
    # Midpoint between two fp16 values: only a direct f64->f16 rounding gets this right.
    lo, hi = np.float16(0.5), np.nextafter(np.float16(0.5), np.float16(1))
    mid = (float(lo) + float(hi)) / 2
    w2 = np.full((4, 8), hi, np.float16)
    w2[::2] = lo
    for t in (mid, float(np.nextafter(mid, 1)), float(np.nextafter(mid, 0))):
        c.add(f"thr_fp16_midpoint_{t!r}", w2, "threshold", {"threshold": t, "minimum_sparsity_percentile": 0.0})
    # Sparsity exactly equal to the minimum passes.
    w3 = np.array([[0.1, 0.9] * 10], np.float32).reshape(4, 5)
    c.add("thr_fp32_sparsity_equals_minimum", w3, "threshold", {"threshold": 0.5, "minimum_sparsity_percentile": 0.5})
    c.add("thr_fp32_sparsity_below_minimum", w3, "threshold", {"threshold": 0.5, "minimum_sparsity_percentile": 0.55})
    w4 = normal((7, 11), np.float32)
    c.add("thr_fp32_odd_sparsity_message", w4, "threshold", {"threshold": 0.01, "minimum_sparsity_percentile": 0.9})
    for dt in ("int8", "uint8"):
        wi = ints((12, 10), DTYPES[dt])
        wi.reshape(-1)[::9] = np.iinfo(DTYPES[dt]).min
        for t in (0.0, 3.5, 10.0, 127.0, 300.0):
            c.add(f"thr_{dt}_t{t}", wi, "threshold", {"threshold": t, "minimum_sparsity_percentile": 0.0})


def magnitude_cases(c):
    for dt in ("fp16", "fp32"):
        T = DTYPES[dt]
        for shape in ((32, 24), (7, 13), (3, 5, 7)):
            w = normal(shape, T)
            for ts in (0.0, 0.1, 0.333, 0.5, 0.77, 0.999, 1.0):
                c.add(f"mag_{dt}_normal_{shape}_s{ts}", w, "magnitude", {"target_sparsity": ts})
        g = grid((19, 21), T)
        for ts in (0.1, 0.5, 0.77, 0.9):
            c.add(f"mag_{dt}_grid_s{ts}", g, "magnitude", {"target_sparsity": ts})
        z = normal((10, 10), T)
        z.reshape(-1)[::3] = 0
        z.reshape(-1)[1::5] = -0.0
        for ts in (0.0, 0.2, 0.5, 1.0):
            c.add(f"mag_{dt}_zeros_s{ts}", z, "magnitude", {"target_sparsity": ts})
        s = with_specials(normal((12, 12), T))
        for ts in (0.0, 0.5, 1.0):
            c.add(f"mag_{dt}_specials_s{ts}", s, "magnitude", {"target_sparsity": ts})
        inf = normal((4, 5), T)
        inf.reshape(-1)[[3, 11]] = [np.inf, -np.inf]
        for ts in (0.1, 0.3, 0.93, 0.97, 1.0):
            c.add(f"mag_{dt}_inf_s{ts}", inf, "magnitude", {"target_sparsity": ts})
        p = with_nan_payloads(normal((6, 5), T))
        for ts in (0.0, 0.5, 1.0):
            c.add(f"mag_{dt}_nan_payloads_s{ts}", p, "magnitude", {"target_sparsity": ts})
        one = np.array([[normal((), T)]], T)
        c.add(f"mag_{dt}_single_element", one, "magnitude", {"target_sparsity": 0.5})
        tiny = (RNG.integers(-40, 40, (9, 9)) * 2.0 ** -24).astype(T)
        c.add(f"mag_{dt}_subnormal", tiny, "magnitude", {"target_sparsity": 0.6})
    big = normal((40, 40), np.float16)
    for ts in (0.1, 0.37, 0.5, 0.9):
        c.add(f"mag_fp16_1600_s{ts}", big, "magnitude", {"target_sparsity": ts})
    for dt in ("int8", "uint8"):
        wi = ints((11, 10), DTYPES[dt])
        for ts in (0.1, 0.5, 0.77, 1.0):
            c.add(f"mag_{dt}_s{ts}", wi, "magnitude", {"target_sparsity": ts})
    # int8 -128: np.abs keeps it negative, so percentile's b - a wraps (np.percentile -> -128.3).
    w = np.array([-128, 127, 127, 127] * 3, np.int8).reshape(3, 4)
    for ts in (0.05, 0.1, 0.2, 0.25, 0.5, 0.9):
        c.add(f"mag_int8_wrap_s{ts}", w, "magnitude", {"target_sparsity": ts})
    mine_lerp_cases(c)


def block_cases(c):
    shapes = [(16, 12), (13, 10), (10, 13), (1, 40), (40, 1), (8, 6, 3), (5, 12, 1), (6, 4, 3, 3), (10, 8, 1, 1),
              (9, 7, 2, 2), (4, 6, 2, 2, 2)]
    for dt in ("fp16", "fp32"):
        T = DTYPES[dt]
        for shape in shapes:
            w = normal(shape, T)
            for dim in (0, 1):
                for b in (2, 3, 4, 5, 8, 16):
                    if b > shape[dim] / 2:
                        continue  # skips are covered by the explicit cases below
                    ts = (0.1, 0.5, 0.77)[(b + dim) % 3]
                    c.add(f"blk_{dt}_{shape}_d{dim}_b{b}_s{ts}", w, "block",
                          {"target_sparsity": ts, "block_size": b, "dim": dim})
        g = grid((24, 18), T, step=0.25, span=3)
        for dim in (0, 1):
            for b in (2, 4, 8, 9):
                c.add(f"blk_{dt}_grid_d{dim}_b{b}", g, "block", {"target_sparsity": 0.5, "block_size": b, "dim": dim})
        s = with_specials(normal((12, 10), T))
        for ts in (0.0, 0.5, 1.0):
            c.add(f"blk_{dt}_specials_s{ts}", s, "block", {"target_sparsity": ts, "block_size": 2, "dim": 0})
        # Innermost pairwise summation above 128 elements (recursive split) and in the 8..128 range.
        wide = normal((2, 300), T, 0.5)
        for b in (9, 64, 130, 150):
            c.add(f"blk_{dt}_pairwise_b{b}", wide, "block", {"target_sparsity": 0.5, "block_size": b, "dim": 1})
        tall = normal((300, 2), T, 0.5)
        c.add(f"blk_{dt}_sequential_b130", tall, "block", {"target_sparsity": 0.5, "block_size": 130, "dim": 0})
    # Reduction order: pairwise (block axis innermost) vs sequential (otherwise).
    for dt in ("fp16", "fp32"):
        T = DTYPES[dt]
        for shape, dim in (((4, 32), 1), ((32, 4), 0), ((32, 1), 0), ((3, 32, 1, 1), 1), ((4, 32, 2), 1),
                           ((32, 3, 2, 1), 0), ((2, 300), 1), ((300, 2), 0)):
            for b in (8, 16, 12, 130):
                if b > shape[dim] / 2:
                    continue
                w = order_sensitive(shape, dim, b, T)
                for ts in (0.5, 0.3):
                    c.add(f"blk_{dt}_order_{shape}_d{dim}_b{b}_s{ts}", w, "block",
                          {"target_sparsity": ts, "block_size": b, "dim": dim})
        p = with_nan_payloads(normal((8, 6), T))
        for ts in (0.0, 0.5, 1.0):
            c.add(f"blk_{dt}_nan_payloads_s{ts}", p, "block", {"target_sparsity": ts, "block_size": 2, "dim": 0})
    # fp16 squares overflow to inf above ~255.9.
    hot = normal((16, 8), np.float16, 300.0)
    for dim in (0, 1):
        c.add(f"blk_fp16_overflow_d{dim}", hot, "block", {"target_sparsity": 0.5, "block_size": 4, "dim": dim})
    # Skips and the boundary block_size == channel / 2.
    w = normal((10, 7), np.float32)
    c.add("blk_fp32_skip_d0", w, "block", {"target_sparsity": 0.5, "block_size": 6, "dim": 0})
    c.add("blk_fp32_skip_d1", w, "block", {"target_sparsity": 0.5, "block_size": 4, "dim": 1})
    c.add("blk_fp32_skip_q0", w, "block", {"target_sparsity": 0.0, "block_size": 4, "dim": 1})
    c.add("blk_fp32_half_channel_d0", w, "block", {"target_sparsity": 0.5, "block_size": 5, "dim": 0})
    for dt in ("int8", "uint8"):
        for gen, tag in ((ints, "full"), (small_ints, "small")):
            wi = gen((8, 6), DTYPES[dt])
            for dim in (0, 1):
                c.add(f"blk_{dt}_{tag}_d{dim}", wi, "block", {"target_sparsity": 0.5, "block_size": 2, "dim": dim})
    c.add("blk_fp32_rank6_error", normal((4, 2, 1, 1, 1, 2), np.float32), "block",
          {"target_sparsity": 0.5, "block_size": 2, "dim": 0})


def nm_cases(c):
    ratios = [(1, 4), (2, 4), (3, 8), (0, 4), (4, 4), (2, 3), (1, 2)]
    shapes = [(16, 24), (7, 10), (10, 7), (8, 6, 3), (6, 8, 3, 3), (9, 10, 1, 1), (4, 8, 2, 1, 2)]
    for dt in ("fp16", "fp32"):
        T = DTYPES[dt]
        for shape in shapes:
            w = normal(shape, T)
            for dim in (0, 1):
                for (n, m) in ratios:
                    if m > shape[dim] / 2:
                        continue  # skips are covered by the explicit cases below
                    c.add(f"nm_{dt}_{shape}_d{dim}_{n}of{m}", w, "n_m", {"n": n, "m": m, "dim": dim})
        g = grid((16, 36), T, step=0.5, span=2)
        for dim in (0, 1):
            for (n, m) in ((2, 4), (3, 8), (5, 16), (5, 17), (10, 18)):
                c.add(f"nm_{dt}_grid_d{dim}_{n}of{m}", g, "n_m", {"n": n, "m": m, "dim": dim})
        s = with_specials(normal((12, 16), T))
        for (n, m) in ((2, 4), (4, 4), (0, 4), (3, 8)):
            c.add(f"nm_{dt}_specials_{n}of{m}", s, "n_m", {"n": n, "m": m, "dim": 1})
        # Groups above 16 use numpy's quicksort partitioning: ties in a non-stable order.
        t = grid((4, 128), T, step=1.0, span=3)
        for (n, m) in ((16, 32), (20, 64), (7, 40)):
            c.add(f"nm_{dt}_quicksort_{n}of{m}", t, "n_m", {"n": n, "m": m, "dim": 1})
        p = with_nan_payloads(with_specials(normal((8, 16), T), ("inf", "-inf", "-0")))
        for (n, m) in ((0, 4), (2, 4), (4, 4)):
            c.add(f"nm_{dt}_nan_payloads_{n}of{m}", p, "n_m", {"n": n, "m": m, "dim": 1})
        sk = normal((6, 7), T)
        c.add(f"nm_{dt}_skip", sk, "n_m", {"n": 2, "m": 4, "dim": 1})
    for dt in ("int8", "uint8"):
        wi = ints((8, 12), DTYPES[dt])
        wi.reshape(-1)[::5] = np.iinfo(DTYPES[dt]).min
        for dim in (0, 1):
            c.add(f"nm_{dt}_d{dim}", wi, "n_m", {"n": 2, "m": 4, "dim": dim})
    c.add("nm_fp32_rank6_error", normal((4, 8, 1, 1, 1, 1), np.float32), "n_m", {"n": 1, "m": 2, "dim": 1})


MODEL_CASES = [
    # (name, shape, fp16, mode, params, weight generator)
    ("lin_thr", (16, 24), False, "threshold", {"threshold": 0.3, "minimum_sparsity_percentile": 0.2}, "normal"),
    ("lin_thr_fp16", (16, 24), True, "threshold", {"threshold": 0.09997, "minimum_sparsity_percentile": 0.0}, "normal"),
    ("lin_thr_skip", (16, 24), False, "threshold", {"threshold": 0.01, "minimum_sparsity_percentile": 0.5}, "normal"),
    ("lin_mag", (16, 24), False, "magnitude", {"target_sparsity": 0.5}, "normal"),
    ("lin_mag_fp16", (32, 24), True, "magnitude", {"target_sparsity": 0.77}, "normal"),
    ("lin_mag_fp16_grid", (20, 20), True, "magnitude", {"target_sparsity": 0.5}, "grid"),
    ("lin_mag_all", (16, 24), False, "magnitude", {"target_sparsity": 1.0}, "normal"),
    ("lin_mag_none", (16, 24), True, "magnitude", {"target_sparsity": 0.0}, "grid"),
    ("conv2d_mag", (8, 6, 3, 3), False, "magnitude", {"target_sparsity": 0.1}, "normal"),
    ("lin_blk_d0", (16, 24), False, "block", {"target_sparsity": 0.5, "block_size": 4, "dim": 0}, "normal"),
    ("lin_blk_d1_fp16", (13, 24), True, "block", {"target_sparsity": 0.5, "block_size": 8, "dim": 1}, "normal"),
    ("lin_blk_d0_fp16_grid", (18, 16), True, "block", {"target_sparsity": 0.4, "block_size": 4, "dim": 0}, "grid"),
    ("conv1d_blk_d1", (8, 6, 3), False, "block", {"target_sparsity": 0.77, "block_size": 2, "dim": 1}, "normal"),
    ("conv2d_blk_d0_fp16", (10, 4, 3, 3), True, "block", {"target_sparsity": 0.5, "block_size": 3, "dim": 0}, "normal"),
    ("conv2d_blk_1x1_fp16", (12, 16, 1, 1), True, "block", {"target_sparsity": 0.5, "block_size": 8, "dim": 1}, "normal"),
    ("lin_blk_skip", (16, 6), False, "block", {"target_sparsity": 0.5, "block_size": 4, "dim": 1}, "normal"),
    ("lin_nm_2of4", (16, 24), False, "n_m", {"n": 2, "m": 4, "dim": 1}, "normal"),
    ("lin_nm_3of8_fp16", (16, 21), True, "n_m", {"n": 3, "m": 8, "dim": 1}, "grid"),
    ("lin_nm_1of4_d0", (18, 12), False, "n_m", {"n": 1, "m": 4, "dim": 0}, "normal"),
    ("conv2d_nm_2of4", (8, 12, 3, 3), False, "n_m", {"n": 2, "m": 4, "dim": 1}, "normal"),
    ("conv2d_nm_2of4_d0_fp16", (12, 4, 2, 2), True, "n_m", {"n": 2, "m": 4, "dim": 0}, "grid"),
    ("conv1d_nm_4of4", (8, 8, 3), False, "n_m", {"n": 4, "m": 4, "dim": 1}, "normal"),
    ("lin_nm_skip", (16, 6), False, "n_m", {"n": 2, "m": 4, "dim": 1}, "normal"),
]


def model_cases(c):
    with tempfile.TemporaryDirectory() as tmp:
        for name, shape, fp16, mode, params, gen in MODEL_CASES:
            w32 = normal(shape, np.float32) if gen == "normal" else grid(shape, np.float32)
            w, expected = run_model(w32, fp16, mode, params, tmp)
            assert w.dtype == (np.float16 if fp16 else np.float32)
            via_pass = run_pass(w, mode, params)
            assert via_pass == expected, (name, via_pass, expected)
            c.add(f"model_{name}", w, mode, params, source="coremltools_model", expected=expected)
            print(f"  model case {name}: ok", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "golden", "kernels"))
    ap.add_argument("--no-models", action="store_true", help="skip the (slow) end-to-end model cases")
    args = ap.parse_args()
    # __cpu_features__ reports the hardware, not the dispatch; check the behaviour instead: with
    # x86-simd-sort active this float32 tie pattern comes back unstable ([1 2 5 4 7 0 3 6]).
    ties = np.zeros((1, 8), np.float32)
    ties[:, ::3] = 1
    assert np.argsort(ties, axis=-1)[0].tolist() == [1, 2, 4, 5, 7, 0, 3, 6], "numpy SIMD argsort is active"
    groups = {"threshold": threshold_cases, "magnitude": magnitude_cases, "block": block_cases, "n_m": nm_cases}
    if not args.no_models:
        groups["model"] = model_cases
    os.makedirs(args.out, exist_ok=True)
    total = 0
    for name, fn in groups.items():
        c = Cases()
        fn(c)
        path = os.path.join(args.out, f"{name}.json")
        with open(path, "w") as f:
            json.dump({"generator": "tests/python/make_kernel_goldens.py", "coremltools": ct.__version__,
                       "numpy": np.__version__, "cases": c.cases}, f, separators=(",", ":"), allow_nan=False)
            f.write("\n")
        size = os.path.getsize(path)
        total += size
        kinds = {}
        for case in c.cases:
            k = next(iter(case["expected"]))
            kinds[k] = kinds.get(k, 0) + 1
        print(f"{path}: {len(c.cases)} cases {kinds}, {size} bytes", file=sys.stderr)
    print(f"total {total} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
