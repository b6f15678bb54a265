"""Side-by-side benchmark: mlprune vs coremltools 9.0 prune_weights on an LLM-shaped model.

Usage: benches/vs_coremltools.py MLPRUNE [--layers 8] [--dim 4096] [--repeat 3] [--workdir DIR]

Builds (once, cached in the work dir) a model of LAYERS fp16 `linear` layers of DIM x DIM with
coremltools, then for each mode (magnitude 0.5, n:m 2:4, block 4, threshold) runs each tool
--repeat times, alternating, and reports the median of each statistic for both:
  * coremltools as its users run it: a fresh Python process with numpy's SIMD on (no
    NPY_DISABLE_CPU_FEATURES) and without the OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE overrides this
    machine sets. Reported: the whole command's wall time, and inside it the time from load to
    saved package (`prune`), so interpreter start and imports (the difference) are apart;
  * mlprune: the whole command (`--device cpu`, process start included), once with its SIMD paths
    and once with `MLPRUNE_PORTABLE=1`, the portable code other CPUs (Apple silicon) run;
  * `cp -r` of the package, the I/O floor.
Every command writes into a destination that does not exist yet. Wall time is measured around the
command, peak RSS of the whole process by GNU time (`/usr/bin/time`, Debian package `time`), for
all of them alike. Speed-ups are median / median; the conservative one divides coremltools' load-
to-save time (no interpreter start) by mlprune's whole command.

Exactness is checked apart from the timing: numpy's SIMD sort may order n:m ties differently, so
a separate, untimed coremltools run per mode with NPY_DISABLE_CPU_FEATURES (spec §5.8) is compared
with mlprune's output: both decompress to identical weights.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "python"))

# The environment of every timed command: the machine's, less what slows numpy down.
TIMED_ENV = {k: v for k, v in os.environ.items()
             if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "NPY_DISABLE_CPU_FEATURES")}
# The exactness reference run only (never timed): numpy's baseline sort, as in the conformance suite.
EXACT_ENV = dict(TIMED_ENV, NPY_DISABLE_CPU_FEATURES="X86_V3 X86_V4 AVX512_ICL")

MODES = {
    "magnitude 0.5": {"config_type": "OpMagnitudePrunerConfig", "global_config": {"target_sparsity": 0.5}},
    "n:m 2:4": {"config_type": "OpMagnitudePrunerConfig", "global_config": {"n_m_ratio": [2, 4]}},
    "block 4": {"config_type": "OpMagnitudePrunerConfig", "global_config": {"target_sparsity": 0.5, "block_size": 4}},
    "threshold 0.005": {
        "config_type": "OpThresholdPrunerConfig",
        "global_config": {"threshold": 0.005, "minimum_sparsity_percentile": 0.0},
    },
}

CT_PRUNE = r"""
import json, os, resource, sys, time
import coremltools as ct, coremltools.optimize as cto
src, cfg, dst = sys.argv[1:4]
config = cto.coreml.OptimizationConfig.from_dict(json.load(open(cfg)))
t0 = time.perf_counter()
m = ct.models.MLModel(src, skip_model_load=True)
cto.coreml.prune_weights(m, config).save(dst)
t1 = time.perf_counter()
print(json.dumps({"seconds": t1 - t0, "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def build_model(path, layers, dim):
    import numpy as np
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb

    rng = np.random.default_rng(0)
    weights = [(rng.standard_normal((dim, dim), dtype=np.float32) / np.sqrt(dim)).astype(np.float16) for _ in range(layers)]

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, dim), dtype=ct.converters.mil.mil.types.fp16)],
                opset_version=ct.target.iOS16)
    def prog(x):
        for i, w in enumerate(weights):
            x = mb.linear(x=x, weight=mb.const(val=w, name=f"layer{i}_weight"), name=f"layer{i}")
        return x

    model = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16,
                       compute_precision=ct.precision.FLOAT16)
    model.save(path)


def timed(cmd, env=None):
    """Wall seconds and peak RSS (KiB) of a command, measured by GNU time: rusage from this
    (large) Python parent would count the pages a forked child shares with it before exec."""
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M"] + cmd, capture_output=True, env=env or TIMED_ENV)
    wall = time.perf_counter() - t0  # GNU time's own %e has only 10 ms resolution
    rss = proc.stderr.decode().strip().splitlines()[-1]
    return wall, int(rss), proc.stdout, proc.stderr


def run_coremltools(src, cfg_path, dst, env=None):
    """(whole-command s, load-to-save s, peak RSS KiB) of one coremltools run."""
    shutil.rmtree(dst, ignore_errors=True)
    wall, rss, out, err = timed([sys.executable, "-c", CT_PRUNE, src, cfg_path, dst], env)
    if not out.strip():
        raise SystemExit(f"coremltools failed: {err.decode()[-2000:]}")
    return wall, json.loads(out.decode().strip().splitlines()[-1])["seconds"], rss


def run_mlprune(mlprune, src, cfg_path, dst, portable):
    """(whole-command s, peak RSS KiB) of one mlprune run."""
    shutil.rmtree(dst, ignore_errors=True)
    env = dict(TIMED_ENV, MLPRUNE_PORTABLE="1") if portable else TIMED_ENV
    wall, rss, _, err = timed([mlprune, "prune", src, dst, "--config", cfg_path, "-q", "--device", "cpu"], env)
    if not os.path.exists(dst):
        raise SystemExit(f"mlprune failed: {err.decode()}")
    return wall, rss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mlprune")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", default="/tmp/mlprune-bench")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    src = os.path.join(args.workdir, f"llm_{args.layers}x{args.dim}.mlpackage")
    if not os.path.exists(src):
        print(f"building {src} with coremltools ...", file=sys.stderr)
        build_model(src, args.layers, args.dim)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(src) for f in fs)
    params = args.layers * args.dim * args.dim

    import oracle  # noqa: E402  (after sys.path set-up)

    median = statistics.median
    cp_dst = os.path.join(args.workdir, "cp.mlpackage")
    cp_walls = []
    for _ in range(args.repeat):
        shutil.rmtree(cp_dst, ignore_errors=True)
        cp_walls.append(timed(["cp", "-r", src, cp_dst])[0])
    shutil.rmtree(cp_dst, ignore_errors=True)
    cp_s = median(cp_walls)

    rows = []
    for mode, cfg in MODES.items():
        cfg_path = os.path.join(args.workdir, "config.json")
        with open(cfg_path, "w") as f:
            json.dump(cfg, f)
        ct_dst = os.path.join(args.workdir, "ct.mlpackage")
        ml_dst = os.path.join(args.workdir, "ml.mlpackage")
        ct_runs, ml_runs, portable_runs = [], [], []
        for _ in range(args.repeat):
            ct_runs.append(run_coremltools(src, cfg_path, ct_dst))
            ml_runs.append(run_mlprune(args.mlprune, src, cfg_path, ml_dst, portable=False))
            portable_runs.append(run_mlprune(args.mlprune, src, cfg_path, ml_dst, portable=True))
        # Exactness, untimed: coremltools with numpy's baseline sort against mlprune's output.
        run_coremltools(src, cfg_path, ct_dst, env=EXACT_ENV)
        run_mlprune(args.mlprune, src, cfg_path, ml_dst, portable=False)
        a, b = oracle.dense_weights(ct_dst), oracle.dense_weights(ml_dst)
        same = set(a) == set(b) and all(a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes() for k in a)
        rows.append({
            "mode": mode,
            "ct_wall": median(r[0] for r in ct_runs),
            "ct_prune": median(r[1] for r in ct_runs),
            "ct_rss": median(r[2] for r in ct_runs),
            "ml": median(r[0] for r in ml_runs),
            "ml_rss": median(r[1] for r in ml_runs),
            "portable": median(r[0] for r in portable_runs),
            "portable_rss": median(r[1] for r in portable_runs),
            "same": same,
        })
        shutil.rmtree(ct_dst, ignore_errors=True)
        shutil.rmtree(ml_dst, ignore_errors=True)

    print(f"\nModel: {args.layers} x fp16 linear {args.dim}x{args.dim} ({params/1e6:.0f}M parameters, "
          f"{size/2**20:.0f} MiB); cp -r: {cp_s:.3f} s; cores: {os.cpu_count()}; "
          f"median of {args.repeat} runs of each tool, peak RSS of the whole process (GNU time)\n")
    print("| mode | coremltools command s | of which start + imports s | coremltools load→save s "
          "| coremltools peak RSS MiB | mlprune s | mlprune peak RSS MiB | speed-up (load→save / mlprune) "
          "| speed-up (command / command) | mlprune portable s | portable speed-up (load→save) "
          "| mlprune / cp -r | same weights |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['ct_wall']:.2f} | {r['ct_wall'] - r['ct_prune']:.2f} | {r['ct_prune']:.2f} "
              f"| {r['ct_rss']/1024:.0f} | {r['ml']:.3f} | {r['ml_rss']/1024:.0f} | {r['ct_prune']/r['ml']:.1f}x "
              f"| {r['ct_wall']/r['ml']:.1f}x | {r['portable']:.3f} | {r['ct_prune']/r['portable']:.1f}x "
              f"| {r['ml']/cp_s:.1f}x | {'yes' if r['same'] else 'NO'} |")
    if not all(r["same"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
