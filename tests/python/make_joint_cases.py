#!/usr/bin/env python3
"""Generates tests/golden/joint/: joint-compression goldens (spec §4.4, §5.9) made by coremltools 9.0.

Usage: make_joint_cases.py [OUTDIR]   (default: tests/golden/joint next to this script's repo)

For every case, OUTDIR gets
* `<case>.mlpackage`: an iOS18 model whose weights are already palettized or quantized
  (`cto.coreml.palettize_weights` / `linear_quantize_weights`, or constexpr ops written directly
  with the MIL Builder for combinations those APIs do not produce);
* `<case>/<config>.mlpackage`: coremltools' `prune_weights(..., joint_compression=True)` output for
  each pruning config that prunes something;
and OUTDIR/cases.json lists, per case: `dense` — every `constexpr_blockwise_shift_scale` /
`constexpr_lut_to_dense` op's `materialized_val_inference()` (name -> dtype, shape, hex of
little-endian bytes; or `error` when coremltools cannot materialize it) — and `configs` — per
config its coremltools dict, the output package (or null when nothing changed), the warnings
coremltools logged, or the exception it raised.

Each prune runs in a fresh Builder name counter (as in a fresh process), so auto names start at
`constexpr_sparse_blockwise_shift_scale_0` / `constexpr_lut_to_sparse_0`.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import oracle  # noqa: E402,F401  (pins numpy CPU features before numpy loads)

import json  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import coremltools as ct  # noqa: E402
import coremltools.optimize as cto  # noqa: E402
from coremltools.converters.mil import Builder as mb  # noqa: E402
from coremltools.converters.mil.mil import types  # noqa: E402
from coremltools.converters.mil.frontend.milproto.load import load as milproto_to_pymil  # noqa: E402

import package_tools as pt  # noqa: E402

SEED = 20250611


class Captured(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


CAPTURE = Captured()
# oracle.py raises coremltools' logger to ERROR; the skip warnings are part of the goldens.
logging.getLogger("coremltools").setLevel(logging.WARNING)
logging.getLogger("coremltools").addHandler(CAPTURE)


def hexle(a):
    a = np.ascontiguousarray(a)
    return a.astype(a.dtype.newbyteorder("<")).tobytes().hex()


def dtype_name(a):
    meta = a.dtype.metadata
    if meta and "true_dtype" in meta:
        return types.builtin_to_string(meta["true_dtype"])
    return {"float16": "fp16", "float32": "fp32"}.get(str(a.dtype), str(a.dtype))


# ---------------------------------------------------------------------------------------------
# Models


def linear_model(precision, shape=(32, 96), target="ios18", rng=None):
    rng = rng or np.random.default_rng(SEED)
    w = pt.seeded_normal(rng, shape)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, shape[1]))], opset_version=pt.TARGETS[target])
    def prog(x):
        return mb.linear(x=x, weight=w, name="fc")

    return pt.convert(prog, target, precision)


def conv_model(precision):
    rng = np.random.default_rng(SEED + 1)
    w = pt.seeded_normal(rng, (24, 16, 3, 3))

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 16, 8, 8))], opset_version=ct.target.iOS18)
    def prog(x):
        return mb.conv(x=x, weight=w, name="conv")

    return pt.convert(prog, "ios18", precision)


def three_linear_model():
    """fc1 int8-quantized, fc2 2-bit palettized, fc3 int4-quantized: checks the auto-name counters."""
    rng = np.random.default_rng(SEED + 2)
    w1 = pt.seeded_normal(rng, (32, 96))
    w2 = pt.seeded_normal(rng, (72, 32))
    w3 = pt.seeded_normal(rng, (48, 72))

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 96))], opset_version=ct.target.iOS18)
    def prog(x):
        y = mb.linear(x=x, weight=w1, name="fc1")
        y = mb.linear(x=y, weight=w2, name="fc2")
        return mb.linear(x=y, weight=w3, name="fc3")

    model = pt.convert(prog, "ios18", "fp16")
    q8 = cto.coreml.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8")
    q4 = cto.coreml.OpLinearQuantizerConfig(
        mode="linear", dtype="int4", granularity="per_block", block_size=8
    )
    model = cto.coreml.linear_quantize_weights(
        model,
        cto.coreml.OptimizationConfig(
            op_name_configs={"fc1_weight_0_to_fp16": q8, "fc2_weight_0_to_fp16": None, "fc3_weight_0_to_fp16": q4}
        ),
    )
    return cto.coreml.palettize_weights(
        model,
        cto.coreml.OptimizationConfig(global_config=cto.coreml.OpPalettizerConfig(mode="uniform", nbits=2)),
    )


def builder_model(make_ops, in_features=96):
    """A linear whose weight is produced by constexpr ops written with the Builder."""

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, in_features))], opset_version=ct.target.iOS18)
    def prog(x):
        w = make_ops()
        if w.dtype != types.fp32:
            x = mb.cast(x=x, dtype=types.builtin_to_string(w.dtype))
        return mb.linear(x=x, weight=w, name="fc")

    return pt.convert(prog, "ios18", "fp32")


def palettized(precision, nbits, granularity, model=None):
    kw = {"granularity": granularity}
    if granularity == "per_grouped_channel":
        kw["group_size"] = 8
    cfg = cto.coreml.OpPalettizerConfig(mode="uniform", nbits=nbits, **kw)
    model = model or linear_model(precision)
    return cto.coreml.palettize_weights(model, cto.coreml.OptimizationConfig(global_config=cfg))


def quantized(precision, dtype, mode, granularity, block_size=None, target="ios18"):
    kw = {"granularity": granularity}
    if block_size:
        kw["block_size"] = block_size
    cfg = cto.coreml.OpLinearQuantizerConfig(mode=mode, dtype=dtype, **kw)
    return cto.coreml.linear_quantize_weights(
        linear_model(precision, target=target), cto.coreml.OptimizationConfig(global_config=cfg)
    )


def shift_scale_builder(data_dtype, scale_dtype, offset_dtype, block):
    """constexpr_blockwise_shift_scale with dtype combinations the quantizer never writes."""
    rng = np.random.default_rng(SEED + 3)

    def make():
        lo, hi = (-128, 128) if data_dtype == "int8" else (0, 256)
        data = rng.integers(lo, hi, size=(32, 96)).astype(data_dtype)
        shape = (32, 96 // block)
        scale = (rng.standard_normal(shape) * 0.05).astype(scale_dtype)
        kwargs = {"data": data, "scale": scale}
        if offset_dtype is not None:
            offset = rng.integers(lo // 2, hi // 2, size=shape).astype(offset_dtype)
            if offset_dtype in ("float16", "float32"):
                offset = (offset + rng.standard_normal(shape)).astype(offset_dtype)
            kwargs["offset"] = offset
        return mb.constexpr_blockwise_shift_scale(**kwargs, name="w_quantized")

    return builder_model(make)


def lut_builder(lut_dtype, vector_size=1):
    """constexpr_lut_to_dense with an integer LUT, or vector palettization (vector_axis 0)."""
    rng = np.random.default_rng(SEED + 4)

    def make():
        rows = 32 // vector_size
        indices = rng.integers(0, 4, size=(rows, 96)).astype(types.np_uint2_dtype)
        if lut_dtype == "int8":
            lut = rng.integers(-128, 128, size=(2, 1, 4, vector_size)).astype(np.int8)
        else:
            lut = rng.standard_normal((2, 1, 4, vector_size)).astype(lut_dtype)
        kwargs = {"indices": indices, "lut": lut}
        if vector_size > 1:
            kwargs["vector_axis"] = np.int32(0)
        return mb.constexpr_lut_to_dense(**kwargs, name="w_palettized")

    def make_cast():
        w = make()
        # An int8 LUT gives an int8 weight; linear needs floats.
        return mb.cast(x=w, dtype="fp32") if lut_dtype == "int8" else w

    return builder_model(make_cast)


MAG50 = {"config_type": "OpMagnitudePrunerConfig", "global_config": {"target_sparsity": 0.5}}
MAG80 = {"config_type": "OpMagnitudePrunerConfig", "global_config": {"target_sparsity": 0.8}}
THR = {
    "config_type": "OpThresholdPrunerConfig",
    "global_config": {"threshold": 0.3, "minimum_sparsity_percentile": 0.2},
}
BLOCK = {"config_type": "OpMagnitudePrunerConfig", "global_config": {"target_sparsity": 0.5, "block_size": 2}}
NM = {"config_type": "OpMagnitudePrunerConfig", "global_config": {"n_m_ratio": [1, 4]}}
BIG_THRESHOLD = {
    "config_type": "OpMagnitudePrunerConfig",
    "global_config": {"target_sparsity": 0.5, "weight_threshold": 4000},
}
DEFAULT_CONFIGS = {"mag50": MAG50, "thr": THR}


def cases():
    out = {}
    for nbits in (1, 2, 3, 4, 6, 8):
        for gran, tag in (("per_tensor", "t"), ("per_grouped_channel", "g")):
            precision = "fp16" if nbits % 2 == 0 else "fp32"
            out[f"lut{nbits}{tag}_{precision}"] = (
                lambda n=nbits, g=gran, p=precision: palettized(p, n, g),
                DEFAULT_CONFIGS,
            )
    out["lut4g_conv_fp16"] = (lambda: palettized("fp16", 4, "per_grouped_channel", conv_model("fp16")), {"mag80": MAG80})
    out["q_int8_channel_fp16"] = (
        lambda: quantized("fp16", "int8", "linear_symmetric", "per_channel"),
        {**DEFAULT_CONFIGS, "mag80": MAG80, "block": BLOCK, "nm": NM, "big": BIG_THRESHOLD},
    )
    out["q_uint8_channel_fp32"] = (lambda: quantized("fp32", "uint8", "linear", "per_channel"), DEFAULT_CONFIGS)
    out["q_int4_block_fp16"] = (lambda: quantized("fp16", "int4", "linear", "per_block", 16), DEFAULT_CONFIGS)
    out["q_uint4_block_fp32"] = (
        lambda: quantized("fp32", "uint4", "linear_symmetric", "per_block", 32),
        DEFAULT_CONFIGS,
    )
    out["q_int8_ios17"] = (
        lambda: quantized("fp16", "int8", "linear_symmetric", "per_channel", target="ios17"),
        {"mag50": MAG50},
    )
    out["three_linear_fp16"] = (three_linear_model, {"mag50": MAG50})
    out["ss_int8_fp16_offset_fp16"] = (lambda: shift_scale_builder("int8", "float16", "float16", 8), {"mag50": MAG50})
    out["ss_uint8_fp16_offset_fp32"] = (lambda: shift_scale_builder("uint8", "float16", "float32", 96), {"mag50": MAG50})
    out["ss_uint8_fp32_offset_uint8"] = (lambda: shift_scale_builder("uint8", "float32", "uint8", 4), {"mag50": MAG50})
    out["ss_int8_fp32_no_offset"] = (lambda: shift_scale_builder("int8", "float32", None, 1), {"mag50": MAG50})
    out["lut2_int8_values"] = (lambda: lut_builder("int8"), {"mag50": MAG50})
    out["lut2_vector2_fp32"] = (lambda: lut_builder("float32", vector_size=2), {"mag50": MAG50})
    return out


# ---------------------------------------------------------------------------------------------
# Oracle


def materialized(path):
    model = oracle.load_package(path)
    spec = model.get_spec()
    saved = mb.name_count
    mb.name_count = defaultdict(int)
    try:
        prog = milproto_to_pymil(
            model_spec=spec, specification_version=spec.specificationVersion, file_weights_dir=model.weights_dir
        )
    finally:
        mb.name_count = saved
    dense = {}
    for func in prog.functions.values():
        for op in func.operations:
            if op.op_type in ("constexpr_blockwise_shift_scale", "constexpr_lut_to_dense"):
                try:
                    v = np.asarray(op.materialized_val_inference())
                    dense[op.name] = {"dtype": dtype_name(v), "shape": list(v.shape), "hex": hexle(v)}
                except Exception as e:  # noqa: BLE001
                    dense[op.name] = {"error": f"{type(e).__name__}: {e}"}
    return dense


def joint_prune(model, config_dict):
    CAPTURE.messages.clear()
    mb.name_count.clear()  # a fresh process
    config = cto.coreml.OptimizationConfig.from_dict(config_dict)
    try:
        pruned = cto.coreml.prune_weights(model, config, joint_compression=True)
    except Exception as e:  # noqa: BLE001
        return None, {"error": f"{type(e).__name__}: {e}", "warnings": list(CAPTURE.messages)}
    return pruned, {"warnings": list(CAPTURE.messages)}


def main():
    root = Path(__file__).resolve().parents[2]
    outdir = Path(sys.argv[1]) if len(sys.argv) > 1 else root / "tests" / "golden" / "joint"
    if outdir.exists():
        shutil.rmtree(outdir)
    outdir.mkdir(parents=True)
    summary = {}
    for name, (make, configs) in cases().items():
        model = make()
        src = pt.save(model, outdir / f"{name}.mlpackage")
        # Prune what was written, as mlprune reads it: the in-memory model still carries its
        # pymil program, whose names can differ from the serialized ones.
        model = oracle.load_package(src)
        entry = {
            "spec": oracle.spec_version(src),
            "dense": materialized(src) if oracle.spec_version(src) >= 9 else {},
            "configs": {},
        }
        for cname, cdict in configs.items():
            pruned, result = joint_prune(model, cdict)
            result["config"] = cdict
            result["output"] = None
            if pruned is not None:
                before = model.get_spec().SerializeToString(deterministic=True)
                after = pruned.get_spec().SerializeToString(deterministic=True)
                if before != after:
                    out = pt.save(pruned, outdir / name / f"{cname}.mlpackage")
                    result["output"] = str(out.relative_to(outdir))
            entry["configs"][cname] = result
        summary[name] = entry
        print(name, {k: (v.get("output") or v.get("error") or v["warnings"]) for k, v in entry["configs"].items()})
    (outdir / "cases.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
