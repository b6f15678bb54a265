#!/usr/bin/env python3
"""Builds the small, seeded fixture packages committed under tests/fixtures/.

Usage: make_fixtures.py OUTDIR

Every fixture is made with coremltools 9.0 (MIL Builder + ct.convert, then optionally one of
coremltools' own compression passes) from weights drawn with a fixed seed, and saved with
reproducible manifest identifiers, so rerunning the script reproduces the committed bytes.
OUTDIR/README.md is regenerated from what was actually written (spec version, ops, tensors).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import oracle  # noqa: E402,F401  (pins numpy CPU features before numpy loads)

import argparse  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import numpy as np  # noqa: E402
import coremltools.optimize as cto  # noqa: E402
from coremltools.converters.mil import Builder as mb  # noqa: E402

import package_tools as pt  # noqa: E402

SEED = 20240917


def linear_program(target, seed):
    """x[1,64] -> linear(48x64, bias) -> relu -> linear(16x48, no bias).

    fc1's weight (3072 elements) is above coremltools' default weight_threshold (2048); fc2's
    (768) is below it, so a default prune touches exactly one tensor.
    """
    rng = np.random.default_rng(seed)
    w1 = pt.seeded_normal(rng, (48, 64))
    b1 = pt.seeded_normal(rng, (48,))
    w2 = pt.seeded_normal(rng, (16, 48))

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 64))], opset_version=pt.TARGETS[target])
    def prog(x):
        y = mb.linear(x=x, weight=w1, bias=b1, name="fc1")
        y = mb.relu(x=y, name="relu1")
        return mb.linear(x=y, weight=w2, name="fc2")

    return prog


def conv_program(target, seed):
    """x[1,8,16,16] -> conv(16x8x3x3, bias) -> relu -> conv(24x16x3x3, no bias).

    conv1's weight (1152) is below the default weight_threshold, conv2's (3456) above it.
    """
    rng = np.random.default_rng(seed)
    w1 = pt.seeded_normal(rng, (16, 8, 3, 3))
    b1 = pt.seeded_normal(rng, (16,))
    w2 = pt.seeded_normal(rng, (24, 16, 3, 3))

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 8, 16, 16))], opset_version=pt.TARGETS[target])
    def prog(x):
        y = mb.conv(x=x, weight=w1, bias=b1, pad_type="same", name="conv1")
        y = mb.relu(x=y, name="relu1")
        return mb.conv(x=y, weight=w2, pad_type="valid", name="conv2")

    return prog


def tiny_program(target, seed):
    """x[1,4] -> linear(2x4, bias[2]): every const has < 10 elements, so no weight.bin exists."""
    rng = np.random.default_rng(seed)
    w = pt.seeded_normal(rng, (2, 4))
    b = pt.seeded_normal(rng, (2,))

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4))], opset_version=pt.TARGETS[target])
    def prog(x):
        return mb.linear(x=x, weight=w, bias=b, name="fc")

    return prog


def palettize(model):
    # "uniform" rather than "kmeans": k-means needs scikit-learn, which the venv does not carry.
    config = cto.coreml.OptimizationConfig(
        global_config=cto.coreml.OpPalettizerConfig(mode="uniform", nbits=4)
    )
    return cto.coreml.palettize_weights(model, config)


def quantize(model):
    config = cto.coreml.OptimizationConfig(
        global_config=cto.coreml.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8")
    )
    return cto.coreml.linear_quantize_weights(model, config)


def prune(model):
    config = cto.coreml.OptimizationConfig(
        global_config=cto.coreml.OpMagnitudePrunerConfig(target_sparsity=0.5)
    )
    return cto.coreml.prune_weights(model, config)


@dataclass
class Fixture:
    name: str  # file name without .mlpackage
    program: Callable
    target: str
    precision: str
    purpose: str
    transform: Callable = None  # coremltools compression applied after conversion
    zipped: bool = False  # committed as a .zip (git cannot hold the empty weights/ folder)


def fixture_list():
    fixtures = []
    plain = (
        ("linear", linear_program, "fc1's weight (3072)", "fc2's (768)"),
        ("conv", conv_program, "conv2's weight (3456)", "conv1's (1152)"),
    )
    for kind, program, big, small in plain:
        for target in ("ios16", "ios17", "ios18"):
            for precision in ("fp16", "fp32"):
                form = "iOS18 (inputs, uint1 mask)" if target == "ios18" else "iOS16 (attributes)"
                fixtures.append(
                    Fixture(
                        f"{kind}_{precision}_{target}",
                        program,
                        target,
                        precision,
                        f"plain {kind} model; {big} is above and {small} below the default"
                        f" weight_threshold (2048); pruning emits the {form} sparse op",
                    )
                )
    fixtures += [
        Fixture(
            "linear_fp32_ios15",
            linear_program,
            "ios15",
            "fp32",
            "spec 6 input: pruning must bump to spec 7 and rename opset CoreML5 -> CoreML6",
        ),
        Fixture(
            "palettized_linear_fp16_ios18",
            linear_program,
            "ios18",
            "fp16",
            "palettize_weights(uniform, nbits=4): constexpr_lut_to_dense with uint4 indices;"
            " plain mode must leave it alone, joint mode prunes it",
            transform=palettize,
        ),
        Fixture(
            "quantized_linear_fp16_ios18",
            linear_program,
            "ios18",
            "fp16",
            "linear_quantize_weights(int8, symmetric): constexpr_blockwise_shift_scale;"
            " plain mode must leave it alone, joint mode prunes it",
            transform=quantize,
        ),
        Fixture(
            "pruned_linear_fp16_ios16",
            linear_program,
            "ios16",
            "fp16",
            "prune_weights(target_sparsity=0.5) output: inspect sees an iOS16"
            " constexpr_sparse_to_dense",
            transform=prune,
        ),
        Fixture(
            "pruned_linear_fp32_ios18",
            linear_program,
            "ios18",
            "fp32",
            "prune_weights(target_sparsity=0.5) output: inspect sees an iOS18"
            " constexpr_sparse_to_dense",
            transform=prune,
        ),
        Fixture(
            "tiny_fp32_ios16",
            tiny_program,
            "ios16",
            "fp32",
            "all consts < 10 elements: empty weights/ folder, no weight.bin (zipped because git"
            " does not store empty folders)",
            zipped=True,
        ),
    ]
    return fixtures


def build(fixture, outdir, scratch):
    model = pt.convert(fixture.program(fixture.target, SEED), fixture.target, fixture.precision)
    if fixture.transform is not None:
        model = fixture.transform(model)
    if not fixture.zipped:
        return pt.save(model, outdir / f"{fixture.name}.mlpackage")
    folder = pt.save(model, scratch / f"{fixture.name}.mlpackage")
    return pt.zip_package(folder, outdir / f"{fixture.name}.mlpackage.zip")


README_HEAD = """# Test fixtures

Generated by `tests/python/make_fixtures.py tests/fixtures` (coremltools 9.0, numpy 2.x,
seed {seed}); do not edit by hand: rerun the script, which rewrites this file and reproduces the
same bytes.
Weights are standard-normal draws; fp16 models were converted with `compute_precision=FLOAT16`
(consts named `*_to_fp16`). "Tensors" lists every constant with at least 10 elements as the
coremltools oracle (`tests/python/oracle.py`) decompresses it; `_sparsified`, `_palettized` and
`_quantized` entries are constexpr outputs, `*_0` entries are their materialized inputs (sub-byte
uint1 masks and uint4 indices are materialized as uint8, one element per value).
Spec versions: 6 = iOS15, 7 = iOS16, 8 = iOS17, 9 = iOS18.

| file | spec | dtype | ops (besides const) | tensors | purpose |
|---|---|---|---|---|---|
"""


def readme_row(fixture, path):
    tensors = "<br>".join(f"`{n}` {d} {list(s)}" for n, d, s in pt.weight_tensors(path))
    ops = ", ".join(pt.non_const_op_types(path))
    return (
        f"| `{path.name}` | {oracle.spec_version(path)} | {fixture.precision} | {ops} | {tensors}"
        f" | {fixture.purpose} |\n"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("outdir", type=Path)
    args = parser.parse_args()

    start = time.monotonic()
    outdir = args.outdir
    outdir.mkdir(parents=True, exist_ok=True)
    readme = README_HEAD.format(seed=SEED)
    with tempfile.TemporaryDirectory(prefix="mlprune-fixtures-") as scratch:
        for fixture in fixture_list():
            for stale in (f"{fixture.name}.mlpackage", f"{fixture.name}.mlpackage.zip"):
                stale_path = outdir / stale
                if stale_path.is_dir():
                    shutil.rmtree(stale_path)
                elif stale_path.exists():
                    stale_path.unlink()
            path = build(fixture, outdir, Path(scratch))
            readme += readme_row(fixture, path)
            print(pt.summarize(path), flush=True)
    (outdir / "README.md").write_text(readme)
    total = sum(pt.package_size(p) for p in outdir.iterdir())
    elapsed = time.monotonic() - start
    print(f"wrote {len(fixture_list())} fixtures, {total} bytes, in {elapsed:.1f}s")


if __name__ == "__main__":
    main()
