#!/usr/bin/env python3
"""Generates fresh models the unit tests never saw, for end-to-end checks of mlprune.

Usage: make_zoo.py OUTDIR [--seed N]

Each model is built with coremltools 9.0 (MIL Builder + ct.convert) in fp16 and fp32, for iOS16
(spec 7) and iOS18 (spec 9). Layer sizes and weights are drawn from the seed (random by default;
the seed is printed to stderr so a failure can be reproduced), with odd sizes so masks have
padding bits and some weights sit just below or above the default weight_threshold of 2048.
Prints one line per model written to stdout.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import oracle  # noqa: E402,F401  (pins numpy CPU features before numpy loads)

import argparse  # noqa: E402
import secrets  # noqa: E402
import time  # noqa: E402
import zlib  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from coremltools.converters.mil import Builder as mb  # noqa: E402
from coremltools.converters.mil.mil import types  # noqa: E402

import package_tools as pt  # noqa: E402

TARGETS = ("ios16", "ios18")
PRECISIONS = ("fp16", "fp32")


def weights(rng, shape):
    """Normal weights with a few exact zeros and negative zeros, which pruning must handle."""
    w = pt.seeded_normal(rng, shape)
    flat = w.reshape(-1)
    picks = rng.choice(flat.size, size=max(1, flat.size // 50), replace=False)
    flat[picks[: len(picks) // 2]] = 0.0
    flat[picks[len(picks) // 2 :]] = -0.0
    return w


def mlp(rng, opset, precision):
    """Three linear layers with biases and relus."""
    sizes = ((24, 80), (33, 90), (20, 70), (5, 40))
    d_in, h1, h2, d_out = (int(rng.integers(lo, hi)) for lo, hi in sizes)
    params = [
        (weights(rng, (h1, d_in)), pt.seeded_normal(rng, (h1,))),
        (weights(rng, (h2, h1)), pt.seeded_normal(rng, (h2,))),
        (weights(rng, (d_out, h2)), pt.seeded_normal(rng, (d_out,))),
    ]

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, d_in))], opset_version=opset)
    def prog(x):
        for i, (w, b) in enumerate(params):
            x = mb.linear(x=x, weight=w, bias=b, name=f"fc{i + 1}")
            if i < len(params) - 1:
                x = mb.relu(x=x, name=f"relu{i + 1}")
        return x

    return prog


def conv2d_groups(rng, opset, precision):
    """Grouped 2-D convolution: weight [Cout, Cin/groups, k, k]."""
    groups = int(rng.choice([2, 4]))
    cin = groups * int(rng.integers(3, 10))
    cout = groups * int(rng.integers(4, 12))
    k = int(rng.choice([3, 5]))
    w = weights(rng, (cout, cin // groups, k, k))
    b = pt.seeded_normal(rng, (cout,))

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, cin, 12, 12))], opset_version=opset)
    def prog(x):
        return mb.conv(x=x, weight=w, bias=b, groups=groups, pad_type="same", name="gconv")

    return prog


def conv1d(rng, opset, precision):
    """1-D convolution: weight [Cout, Cin, k]."""
    cin, cout, k = int(rng.integers(5, 24)), int(rng.integers(17, 64)), int(rng.choice([3, 5, 7]))
    w = weights(rng, (cout, cin, k))

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, cin, 32))], opset_version=opset)
    def prog(x):
        return mb.conv(x=x, weight=w, pad_type="valid", name="conv1d")

    return prog


def conv3d(rng, opset, precision):
    """3-D convolution: weight [Cout, Cin, k, k, k]."""
    cin, cout = int(rng.integers(3, 9)), int(rng.integers(9, 24))
    w = weights(rng, (cout, cin, 3, 3, 3))
    b = pt.seeded_normal(rng, (cout,))

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, cin, 6, 6, 6))], opset_version=opset)
    def prog(x):
        return mb.conv(x=x, weight=w, bias=b, pad_type="same", name="conv3d")

    return prog


def gather_embedding(rng, opset, precision):
    """Embedding lookup: gather rows of a [100, 32] table by int32 indices."""
    table = weights(rng, (100, 32))

    @mb.program(
        input_specs=[mb.TensorSpec(shape=(1, 8), dtype=types.int32)], opset_version=opset
    )
    def prog(ids):
        return mb.gather(x=table, indices=ids, axis=0, name="embed")

    return prog


def matmul_const(rng, opset, precision):
    """matmul whose second operand (y) is a constant [k, n]."""
    m, k, n = int(rng.integers(2, 9)), int(rng.integers(20, 70)), int(rng.integers(20, 70))
    y = weights(rng, (k, n))

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, m, k))], opset_version=opset)
    def prog(x):
        return mb.matmul(x=x, y=y, name="mm")

    return prog


def add_const(rng, opset, precision):
    """Element-wise add of a constant [a, b] tensor, broadcast over the batch."""
    a, b = int(rng.integers(20, 70)), int(rng.integers(20, 70))
    c = weights(rng, (a, b))

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, a, b))], opset_version=opset)
    def prog(x):
        return mb.add(x=x, y=c, name="add_c")

    return prog


def shared_const(rng, opset, precision):
    """One weight const consumed by two ops of different types (linear and matmul)."""
    d_in, d_out = int(rng.integers(30, 80)), int(rng.integers(30, 80))
    w_val = weights(rng, (d_out, d_in))

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, d_in))], opset_version=opset)
    def prog(x):
        w = mb.const(val=w_val, name="shared_w")
        a = mb.linear(x=x, weight=w, name="use_linear")
        b = mb.matmul(x=x, y=w, transpose_y=True, name="use_matmul")
        return mb.add(x=a, y=b, name="sum")

    return prog


def cond_outer_const(rng, opset, precision):
    """A cond whose two branches (nested blocks) both read one const defined outside them.

    For fp16 the program is written in fp16 itself: left to the converter's fp16 pass, an fp32
    outer const would be cast separately inside each branch, and nothing would be shared.
    """
    d_in, d_out = int(rng.integers(30, 80)), int(rng.integers(30, 80))
    dtype = np.float16 if precision == "fp16" else np.float32
    w_val = weights(rng, (d_out, d_in)).astype(dtype)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, d_in))], opset_version=opset)
    def prog(x):
        w = mb.const(val=w_val, name="outer_w")
        if precision == "fp16":
            x = mb.cast(x=x, dtype="fp16", name="x_fp16")
        total = mb.reduce_sum(x=x, name="total")
        pred = mb.greater(x=total, y=dtype(0.0), name="pred")
        return mb.cond(
            pred=pred,
            _true_fn=lambda: mb.linear(x=x, weight=w, name="then_fc"),
            _false_fn=lambda: mb.linear(x=mb.relu(x=x, name="else_relu"), weight=w, name="else_fc"),
            name="branch",
        )

    return prog


# name -> builder(rng, opset, precision) returning a Builder program. Builders write fp32 and let
# ct.convert's compute_precision make the fp16 variant; only cond_outer_const needs the precision.
MODELS = {
    "mlp": mlp,
    "conv2d_groups": conv2d_groups,
    "conv1d": conv1d,
    "conv3d": conv3d,
    "gather_embedding": gather_embedding,
    "matmul_const": matmul_const,
    "add_const": add_const,
    "shared_const": shared_const,
    "cond_outer_const": cond_outer_const,
}


def model_rng(seed, name):
    """Independent stream per model, so adding a model does not change the others."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--seed", type=int, default=None, help="default: random")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    print(f"make_zoo: seed {seed}", file=sys.stderr, flush=True)

    start = time.monotonic()
    args.outdir.mkdir(parents=True, exist_ok=True)
    count = 0
    for name, builder in MODELS.items():
        for target in TARGETS:
            for precision in PRECISIONS:
                # Same draws for every variant of a model: only dtype and spec version differ.
                prog = builder(model_rng(seed, name), pt.TARGETS[target], precision)
                model = pt.convert(prog, target, precision)
                path = pt.save(model, args.outdir / f"{name}_{precision}_{target}.mlpackage")
                print(pt.summarize(path), flush=True)
                count += 1
    print(
        f"make_zoo: {count} models in {time.monotonic() - start:.1f}s", file=sys.stderr, flush=True
    )


if __name__ == "__main__":
    main()
