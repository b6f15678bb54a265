"""`mlprune prune --global-sparsity` against a numpy restatement of its rule (README, "Whole-model
sparsity"):

* eligible: the consts coremltools' own `prune_weights` with a global
  OpMagnitudePrunerConfig(target_sparsity, weight_threshold=W) turns sparse (asked of coremltools
  here, not of mlprune), minus those named by --exclude or feeding an op named by --exclude;
* N = their element count, k = floor(S × N) with S the exact decimal given (fractions.Fraction);
* v = the k-th smallest |w| over all of them (fp16 and fp32 compared exactly as float64, NaN last);
* every eligible element with |w| <= v becomes 0 (all of them when v is NaN), k = 0 changes nothing.

Models mix fp16 and fp32 weights, hold ties across the two dtypes at the cut, NaN, ±inf and ±0, and
are built for iOS16 and iOS18 (`--seed` draws other weights); four conformance-suite models (a const
shared by two ops, consts read inside cond branches, NaN/inf/overflowing values, conv3d) are checked
too. Every materialized weight is compared bit for bit, every eligible tensor must be stored as
constexpr_sparse_to_dense, and the report's cut, k, sparsities and devices are checked.

    python tests/python/global_sparsity.py --mlprune target/debug/mlprune [--device cpu|gpu] [--seed N]

Exits non-zero on any mismatch.
"""

import oracle  # noqa: F401  (pins NPY_DISABLE_CPU_FEATURES before numpy is imported)

import argparse
import json
import subprocess
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import coremltools as ct
import coremltools.optimize as cto
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.frontend.milproto.load import load as milproto_to_pymil

import conformance_models
import package_tools as pt

TARGETS = {"ios16": ct.target.iOS16, "ios18": ct.target.iOS18}
CONFORMANCE_MODELS = ("shared/fp16/ios18", "cond/fp32/ios16", "special/fp16d/ios18", "conv3d/fp16/ios16")


def _weights(rng, shape, dtype, specials=False, raw=False):
    """Values on a 1/16 grid (exact in fp16 and fp32, so ties cross dtypes), a few exact ±0, and
    with `specials` NaN and ±inf; with `raw`, every other value off the grid (fp32 values between
    two fp16 ones, so the cut often lies between fp16 values)."""
    w = np.round(rng.standard_normal(shape) * 16) / 16
    flat = w.reshape(-1)
    if raw:
        flat[::2] = rng.standard_normal(flat[::2].size)
    idx = rng.permutation(flat.size)
    flat[idx[:5]] = 0.0
    flat[idx[5:10]] = -0.0
    if specials:
        flat[idx[10:13]] = np.nan
        flat[idx[13]] = np.inf
        flat[idx[14]] = -np.inf
    return w.astype(dtype)


def build(target, path, seed):
    """fp32 linear 64x53 (half off the fp16 grid) and conv 32x5x4x4 (NaN, inf), fp16 linears 64x64
    and 48x64 (NaN, inf), a small fp32 const under the weight threshold and a rank-1 bias."""
    rng = np.random.default_rng(seed)
    w1 = _weights(rng, (64, 53), np.float32, raw=True)
    wc = _weights(rng, (32, 5, 4, 4), np.float32, specials=True)
    w2 = _weights(rng, (64, 64), np.float16, raw=True)
    w3 = _weights(rng, (48, 64), np.float16, specials=True)
    small = _weights(rng, (8, 8), np.float32)
    b1 = rng.standard_normal(64).astype(np.float32)

    @mb.program(
        input_specs=[mb.TensorSpec(shape=(1, 53)), mb.TensorSpec(shape=(1, 5, 6, 6))],
        opset_version=TARGETS[target],
    )
    def prog(x, img):
        h = mb.linear(x=x, weight=w1, bias=b1, name="fc1")
        h = mb.cast(x=h, dtype="fp16", name="h_fp16")
        h = mb.linear(x=h, weight=w2, name="fc2")
        h = mb.linear(x=h, weight=w3, name="fc3")
        h = mb.cast(x=h, dtype="fp32", name="h_fp32")
        s = mb.matmul(x=mb.slice_by_size(x=h, begin=[0, 0], size=[1, 8], name="s"), y=small, name="mm")
        c = mb.conv(x=img, weight=wc, pad_type="same", name="conv")
        return h, s, c

    model = ct.convert(
        prog,
        convert_to="mlprogram",
        minimum_deployment_target=TARGETS[target],
        compute_precision=ct.precision.FLOAT32,
    )
    return pt.save(model, path)


def _program(path):
    model = oracle.load_package(path)
    spec = model.get_spec()
    return milproto_to_pymil(
        model_spec=spec, specification_version=spec.specificationVersion, file_weights_dir=model.weights_dir
    )


def weight_inputs(path):
    """{(consumer op, input name): (producer op name, producer op type, output var name)} for every
    op input bound to a const or constexpr output."""
    out = {}
    for func in _program(path).functions.values():
        for op in oracle._walk_ops(func):
            for param, var in op.inputs.items():
                for v in var if isinstance(var, (list, tuple)) else [var]:
                    prod = v.op
                    tensor_const = prod is not None and prod.op_type == "const" and isinstance(v.val, np.ndarray)
                    if tensor_const or (prod is not None and prod.op_type.startswith("constexpr_")):
                        out[(op.name, param)] = (prod.name, prod.op_type, v.name)
    return out


def eligible_by_coremltools(src, weight_threshold, scratch):
    """The (consumer, input) pairs whose weight coremltools' global magnitude config prunes."""
    config = cto.coreml.OptimizationConfig(
        global_config=cto.coreml.OpMagnitudePrunerConfig(target_sparsity=0.5, weight_threshold=weight_threshold)
    )
    pruned = cto.coreml.prune_weights(oracle.load_package(src), config)
    path = pt.save(pruned, scratch / f"ct_{Path(src).stem}_{weight_threshold}.mlpackage")
    return {key for key, (_, op_type, _) in weight_inputs(path).items() if op_type == "constexpr_sparse_to_dense"}


def magnitude_key(values):
    """float64 |w| with NaN as +inf's successor (sorts last, equal to every NaN)."""
    return np.abs(values.astype(np.float64))


def bits(a):
    a = np.ascontiguousarray(a)
    return a.view({1: np.uint8, 2: np.uint16, 4: np.uint32}[a.dtype.itemsize])


def f32_key(v):
    """The report's cut_key: bits of |v| as an f32, NaN 0x7fffffff."""
    if np.isnan(v):
        return 0x7FFFFFFF
    return int(np.array([abs(v)], dtype=np.float32).view(np.uint32)[0])


def check_case(args, src, target, s_text, extra, eligible_all, scratch, name):
    """Runs one prune and compares it with the rule. Returns a list of failure lines."""
    out = scratch / f"{name}.mlpackage"
    report = scratch / f"{name}.json"
    cmd = [args.mlprune, "prune", str(src), str(out), "--global-sparsity", s_text, "--report", str(report),
           "--device", args.device, "--quiet"] + extra
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        return [f"{name}: exit {run.returncode}: {run.stderr.strip()}"]
    excluded = set(extra[i + 1] for i, a in enumerate(extra) if a == "--exclude")
    before = weight_inputs(src)
    dense_in = oracle.dense_weights(src)
    # An excluded name is a const name or a consumer op name: the whole const stays dense.
    excluded_consts = {before[key][0] for key in before if key[0] in excluded or before[key][0] in excluded}
    eligible = {key for key in eligible_all if before[key][0] not in excluded_consts}
    consts = {}
    for key in sorted(eligible):
        consts[before[key][0]] = dense_in[before[key][2]]
    values = list(consts.values())
    n = sum(v.size for v in values)
    k = int(Fraction(s_text) * n)
    if k > 0:
        mags = np.sort(np.concatenate([magnitude_key(v).reshape(-1) for v in values]))  # NaN last
        cut = mags[k - 1]
    else:
        cut = None

    def expected(w):
        if cut is None:
            prune = np.zeros(w.shape, dtype=bool)
        elif np.isnan(cut):
            prune = np.ones(w.shape, dtype=bool)
        else:
            prune = magnitude_key(w) <= cut  # NaN never <= a number
        r = np.where(prune, np.zeros((), w.dtype), w)
        # The sparse form stores only non-zeros: a kept -0.0 materializes as +0.0.
        return np.where(r == 0, np.zeros((), w.dtype), r)

    failures = []
    after = weight_inputs(out)
    dense_out = oracle.dense_weights(out)
    for key, (const_name, _, var) in sorted(before.items()):
        if key not in after:
            failures.append(f"{name}: {key} lost its weight input")
            continue
        got = dense_out[after[key][2]]
        w = dense_in[var]
        is_eligible = key in eligible
        want = expected(w) if is_eligible else w
        if got.dtype != want.dtype or got.shape != want.shape or not np.array_equal(bits(got), bits(want)):
            diff = int(np.sum(bits(got) != bits(want))) if got.shape == want.shape and got.dtype == want.dtype else "all"
            failures.append(f"{name}: {key} ({const_name}, eligible={is_eligible}) differs from the rule in {diff} elements")
        sparse = after[key][1] == "constexpr_sparse_to_dense"
        if sparse != is_eligible:
            failures.append(f"{name}: {key} is stored as {after[key][1]}, eligible={is_eligible}")
    entries = json.loads(report.read_text())
    cuts = [e["global_cut"] for e in entries if e.get("global_cut")]
    if eligible and not cuts:
        failures.append(f"{name}: report has no global_cut")
    for c in cuts:
        want_key = None if cut is None else f32_key(cut)
        if (c["k"], c["eligible_elements"], c["cut_key"]) != (k, n, want_key):
            failures.append(f"{name}: report cut {c} != k {k}, N {n}, key {want_key}")
    for e in entries:
        if e["name"] in consts and e["pruned"]:
            w = consts[e["name"]]
            want_sparsity = 1.0 - np.count_nonzero(expected(w)) / w.size
            if abs(e["sparsity"] - want_sparsity) > 1e-12:
                failures.append(f"{name}: {e['name']} sparsity {e['sparsity']} != {want_sparsity}")
    for e in entries:
        if e["pruned"] and e["device"] != args.device:
            failures.append(f"{name}: {e['name']} ran on {e['device']}, not {args.device}")
    if {e["name"] for e in entries if e["pruned"]} != set(consts):
        failures.append(f"{name}: pruned tensors {sorted(e['name'] for e in entries if e['pruned'])} != {sorted(consts)}")
    print(f"{'FAIL' if failures else 'ok  '} {name}: N={n} k={k} cut={cut}")
    return failures


def off_grid_sparsity(src, eligible):
    """An S (as `<digits>e-9`) whose cut v is an fp32 value that no fp16 equals, and whose fp16
    neighbours below and above both occur in the fp16 weights: the fp16 tensors are cut between two
    of their own values, so cutting one fp16 step too high or too low shows."""
    before = weight_inputs(src)
    dense = oracle.dense_weights(src)
    weights = [dense[before[key][2]] for key in sorted(eligible)]
    mags = np.sort(np.concatenate([magnitude_key(w).reshape(-1) for w in weights]))
    fp16_mags = set(np.concatenate([magnitude_key(w).reshape(-1) for w in weights if w.dtype == np.float16]).tolist())
    n = mags.size

    def neighbours(m):
        lo = np.float16(m)
        if float(lo) > m:
            lo = np.nextafter(lo, np.float16(0))
        return float(lo), float(np.nextafter(lo, np.float16(np.inf)))

    off = [
        r for r in range(n)
        if np.isfinite(mags[r]) and float(np.float16(mags[r])) != mags[r]
        and (r + 1 == n or mags[r + 1] != mags[r])
        and all(x in fp16_mags for x in neighbours(mags[r]))
    ]
    assert off, "no off-grid cut with both fp16 neighbours present"
    rank = off[len(off) // 2]  # 0-based: k = rank + 1
    numerator = -(-(rank + 1) * 10**9 // n)  # ceil: floor(S × N) is then exactly rank + 1
    assert int(Fraction(numerator, 10**9) * n) == rank + 1
    return f"{numerator}e-9"


def check_integer_weights(args, scratch):
    """Eligible int8/uint8 consts are refused (exit 1, naming the tensor and --exclude); excluded
    through their consumers, the rest of the model follows the rule."""
    src = conformance_models.build("int8/fp32/ios18", scratch / "int8.mlpackage")
    out = scratch / "int8_refused.mlpackage"
    run = subprocess.run(
        [args.mlprune, "prune", str(src), str(out), "--global-sparsity", "0.5", "--weight-threshold", "100",
         "--device", args.device, "--quiet"],
        capture_output=True, text=True,
    )
    failures = []
    if run.returncode != 1 or "--exclude" not in run.stderr or "int8" not in run.stderr or out.exists():
        failures.append(f"int8: expected a clean refusal (exit 1), got {run.returncode}: {run.stderr.strip()}")
    eligible = eligible_by_coremltools(src, 100, scratch)
    extra = ["--weight-threshold", "100", "--exclude", "gather_i8", "--exclude", "gather_u8"]
    failures += check_case(args, src, None, "0.5", extra, eligible, scratch, "int8_excluded_s0.5")
    print(f"{'FAIL' if failures else 'ok  '} int8 refusal and exclusion")
    return failures


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mlprune", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=16, help="seed of the mixed models' weights")
    args = ap.parse_args()
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        for target in TARGETS:
            src = build(target, scratch / f"mixed_{target}.mlpackage", args.seed)
            eligible = {w: eligible_by_coremltools(src, w, scratch) for w in (2048, 3100)}
            if not any(key[1] == "weight" for key in eligible[2048]) or len(eligible[2048]) != 4:
                failures.append(f"{target}: coremltools found too few eligible weights: {sorted(eligible[2048])}")
            cases = [
                ("0", []),
                ("0.3", []),
                ("0.5", []),
                ("0.77", []),
                ("0.999", []),  # the cut reaches the infinities and NaNs
                ("1", []),
                ("0.5", ["--weight-threshold", "3100"]),
                ("0.5", ["--exclude", "fc2"]),  # a consumer op
            ]
            # A const name, as the model spells it.
            fc1_weight = weight_inputs(src)[("fc1", "weight")][0]
            cases.append(("0.6", ["--exclude", fc1_weight, "--exclude", "conv"]))
            # k at ±inf, and at the first NaN (which prunes everything).
            cases += [("0.9994", []), ("0.99962", [])]
            cases.append((off_grid_sparsity(src, eligible[2048]), []))
            for i, (s_text, extra) in enumerate(cases):
                w = int(extra[extra.index("--weight-threshold") + 1]) if "--weight-threshold" in extra else 2048
                name = f"{target}_{i}_s{s_text}"
                failures += check_case(args, src, target, s_text, extra, eligible[w], scratch, name)
        # Conformance-suite models built for other purposes: shared consts, nested blocks, specials.
        for model_id in CONFORMANCE_MODELS:
            src = conformance_models.build(model_id, scratch / (model_id.replace("/", "_") + ".mlpackage"))
            eligible = eligible_by_coremltools(src, 2048, scratch)
            for s_text in ("0.5", "0.9"):
                name = f"{model_id.replace('/', '_')}_s{s_text}"
                failures += check_case(args, src, None, s_text, [], eligible, scratch, name)
        failures += check_integer_weights(args, scratch)
    for line in failures:
        print(line, file=sys.stderr)
    if failures:
        print(f"global sparsity: {len(failures)} mismatches", file=sys.stderr)
        return 1
    print("global sparsity: every case matches the rule")
    return 0


if __name__ == "__main__":
    sys.exit(main())
