#!/usr/bin/env python3
"""Writes examples/sample/sample.mlpackage and checks examples/sample/config.yaml against it.

Usage: make_sample.py OUTDIR [--check-only]

The sample is a small fp16 MLP (iOS16, spec 7): x[1,256] -> fc1, fc2, fc3 (256x256, relu between)
-> head (16x256). The check loads OUTDIR/config.yaml with coremltools'
OptimizationConfig.from_yaml, prunes the sample with prune_weights, and asserts that every weight
became a constexpr_sparse_to_dense with the sparsity the config asks for (fc3 overridden to 0.75,
the rest 0.5). Exits 1 if anything differs.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import oracle  # noqa: E402,F401  (pins numpy CPU features before numpy loads)

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import coremltools.optimize as cto  # noqa: E402
from coremltools.converters.mil import Builder as mb  # noqa: E402

import package_tools as pt  # noqa: E402

SEED = 7
WIDTH = 256
# Weight const name (as the fp16 conversion names it) -> fraction of zeros the config asks for.
EXPECTED_SPARSITY = {
    "fc1_weight_0_to_fp16": 0.5,
    "fc2_weight_0_to_fp16": 0.5,
    "fc3_weight_0_to_fp16": 0.75,
    "head_weight_0_to_fp16": 0.5,
}


def sample_program():
    rng = np.random.default_rng(SEED)
    layers = [(f"fc{i}", WIDTH) for i in (1, 2, 3)] + [("head", 16)]
    params = {
        name: (pt.seeded_normal(rng, (out, WIDTH)), pt.seeded_normal(rng, (out,)))
        for name, out in layers
    }

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, WIDTH))], opset_version=pt.TARGETS["ios16"])
    def prog(x):
        for name, _ in layers:
            weight, bias = params[name]
            x = mb.linear(x=x, weight=weight, bias=bias, name=name)
            if name != "head":
                x = mb.relu(x=x, name=f"{name}_relu")
        return x

    return prog


def write_sample(outdir):
    model = pt.convert(sample_program(), "ios16", "fp16")
    return pt.save(model, outdir / "sample.mlpackage")


def check_config(sample, config_path):
    """Prunes the sample with coremltools using config_path; returns a list of problems."""
    config = cto.coreml.OptimizationConfig.from_yaml(str(config_path))
    pruned = cto.coreml.prune_weights(oracle.load_package(sample), config)
    problems = []
    with tempfile.TemporaryDirectory(prefix="mlprune-sample-") as tmp:
        out = pt.save(pruned, Path(tmp) / "pruned.mlpackage")
        ops = dict(oracle.op_types(out))
        dense = oracle.dense_weights(out)
        for name, target in EXPECTED_SPARSITY.items():
            sparse_name = f"{name}_sparsified"
            if ops.get(sparse_name) != "constexpr_sparse_to_dense":
                problems.append(f"{name}: not pruned (op types: {ops})")
                continue
            weight = dense[sparse_name]
            sparsity = float(np.count_nonzero(weight == 0)) / weight.size
            print(f"  {name}: {list(weight.shape)} sparsity {sparsity:.4f} (asked {target})")
            # Magnitude pruning zeroes floor((N-1)*s)+1 values, plus fp16 ties: within 1%.
            if abs(sparsity - target) > 0.01:
                problems.append(f"{name}: sparsity {sparsity:.4f}, expected about {target}")
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument(
        "--check-only", action="store_true", help="keep sample.mlpackage, only check config.yaml"
    )
    args = parser.parse_args()

    start = time.monotonic()
    args.outdir.mkdir(parents=True, exist_ok=True)
    sample = args.outdir / "sample.mlpackage"
    if not args.check_only:
        write_sample(args.outdir)
    print(pt.summarize(sample))
    config_path = args.outdir / "config.yaml"
    if not config_path.exists():
        print(f"{config_path}: missing, nothing to check")
        return 1
    print(f"pruning {sample} with coremltools and {config_path}:")
    problems = check_config(sample, config_path)
    for problem in problems:
        print(f"FAIL {problem}")
    print(f"{'FAILED' if problems else 'ok'} in {time.monotonic() - start:.1f}s")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
