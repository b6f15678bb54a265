"""Side-by-side benchmark: mlprune vs coremltools 9.0 prune_weights on an LLM-shaped model.

Usage: benches/vs_coremltools.py MLPRUNE [--layers 8] [--dim 4096] [--repeat 3] [--workdir DIR]

Builds (once, cached in the work dir) a model of LAYERS fp16 `linear` layers of DIM x DIM with
coremltools, then for each mode (magnitude 0.5, n:m 2:4, block 4, threshold) times:
  * coremltools: a fresh Python process that loads the package, runs prune_weights and saves;
    the time is measured inside the process from load to saved (interpreter start and imports
    excluded, which favours coremltools), peak RSS is the whole process's;
  * mlprune: the whole command with `--device cpu` (what issue #5 measures), wall time and peak
    RSS, best of --repeat runs, each into a destination that does not exist yet (as for cp);
  * `cp -r` of the package, the I/O floor.
GNU time (`/usr/bin/time`, Debian package `time`) measures the commands. Checks that both outputs decompress to identical weights (once per mode) and prints a Markdown
table with the ratios.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

os.environ.setdefault("NPY_DISABLE_CPU_FEATURES", "X86_V3 X86_V4 AVX512_ICL")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "python"))

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


def timed(cmd):
    """Wall seconds and peak RSS (KiB) of a command, measured by GNU time: rusage from this
    (large) Python parent would count the pages a forked child shares with it before exec."""
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M"] + cmd, capture_output=True)
    wall = time.perf_counter() - t0  # GNU time's own %e has only 10 ms resolution
    rss = proc.stderr.decode().strip().splitlines()[-1]
    return wall, int(rss), proc.stdout, proc.stderr


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

    cp_dst = os.path.join(args.workdir, "cp.mlpackage")
    cp_best = None
    for _ in range(args.repeat):
        shutil.rmtree(cp_dst, ignore_errors=True)
        wall, _, _, _ = timed(["cp", "-r", src, cp_dst])
        cp_best = wall if cp_best is None else min(cp_best, wall)
    shutil.rmtree(cp_dst, ignore_errors=True)

    rows = []
    for mode, cfg in MODES.items():
        cfg_path = os.path.join(args.workdir, "config.json")
        with open(cfg_path, "w") as f:
            json.dump(cfg, f)
        ct_dst = os.path.join(args.workdir, "ct.mlpackage")
        ml_dst = os.path.join(args.workdir, "ml.mlpackage")
        shutil.rmtree(ct_dst, ignore_errors=True)
        _, ct_rss, out, err = timed([sys.executable, "-c", CT_PRUNE, src, cfg_path, ct_dst])
        if not out.strip():
            raise SystemExit(f"coremltools failed: {err.decode()[-2000:]}")
        ct_s = json.loads(out.decode().strip().splitlines()[-1])["seconds"]
        ml_best, ml_rss = None, 0
        for _ in range(args.repeat):
            # Like `cp -r` above: the destination does not exist when the clock starts.
            shutil.rmtree(ml_dst, ignore_errors=True)
            wall, rss, _, err = timed([args.mlprune, "prune", src, ml_dst, "--config", cfg_path, "-q", "--device", "cpu"])
            if not os.path.exists(ml_dst):
                raise SystemExit(f"mlprune failed: {err.decode()}")
            ml_best = wall if ml_best is None else min(ml_best, wall)
            ml_rss = max(ml_rss, rss)
        a, b = oracle.dense_weights(ct_dst), oracle.dense_weights(ml_dst)
        same = all(k in b and a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes() for k in a)
        rows.append((mode, ct_s, ct_rss, ml_best, ml_rss, same))

    print(f"\nModel: {args.layers} x fp16 linear {args.dim}x{args.dim} ({params/1e6:.0f}M parameters, "
          f"{size/2**20:.0f} MiB); cp -r: {cp_best:.3f} s; cores: {os.cpu_count()}\n")
    print("| mode | coremltools s | coremltools peak RSS MiB | mlprune s | mlprune peak RSS MiB | speed-up | mlprune / cp -r | same weights |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for mode, ct_s, ct_rss, ml_s, ml_rss, same in rows:
        print(f"| {mode} | {ct_s:.2f} | {ct_rss/1024:.0f} | {ml_s:.3f} | {ml_rss/1024:.0f} | "
              f"{ct_s/ml_s:.1f}x | {ml_s/cp_best:.1f}x | {'yes' if same else 'NO'} |")
    if not all(r[5] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
