#!/usr/bin/env python3
"""Run pruning-config cases through coremltools 9.0 and print what it accepts, as JSON.

Each case is a document in coremltools' `OptimizationConfig.from_dict` layout, given as JSON-able
data ("json") or as YAML text ("yaml", read with yaml.safe_load like `from_yaml`). A case is
accepted when `OptimizationConfig.from_dict` succeeds *and* the `prune_weights` pass accepts the
config (its constructor checks the config classes). For rejections the first leaf exception of
cattrs' exception groups is recorded, since that is the message a user sees first.

`divergence` marks the few cases where mlprune deliberately rejects what coremltools accepts
(see src/config/validate.rs); `message_differs` marks rejections whose message mlprune does not
reproduce (other config classes' own field checks); `repr_differs` marks accepted values mlprune
stores differently (saturated integers).

Usage (regenerates the golden file the Rust tests read):
    /work/main/.venv/bin/python tests/python/config_cases.py > tests/golden/config_cases.json
"""
import copy
import json
import logging
import sys
import warnings

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)

import yaml  # noqa: E402
import coremltools  # noqa: E402
from coremltools.optimize.coreml import OptimizationConfig  # noqa: E402
from coremltools.optimize.coreml._quantization_passes import prune_weights  # noqa: E402

T = "OpThresholdPrunerConfig"
M = "OpMagnitudePrunerConfig"


def thr(**fields):
    return {"config_type": T, "global_config": fields}


def mag(**fields):
    return {"config_type": M, "global_config": fields}


def mag_yaml(*lines):
    """A magnitude config in YAML whose global_config holds `lines` (YAML text, one field each)."""
    return "config_type: OpMagnitudePrunerConfig\nglobal_config:\n" + "".join(f"  {l}\n" for l in lines)


def thr_yaml(*lines):
    return "config_type: OpThresholdPrunerConfig\nglobal_config:\n" + "".join(f"  {l}\n" for l in lines)


# YAML 1.1 scalar resolution (PyYAML's implicit resolvers and SafeConstructor), as fields see it.
BIG = "0x" + "1" + "0" * 50  # 2**200
YAML11_CASES = [
    (f"yaml11 weight_threshold {v}", {"yaml": mag_yaml("target_sparsity: 0.5", f"weight_threshold: {v}")}) for v in [
        "07777", "0o17", "1e3", "1.0e3", "1.e+3", "1.5e3", "12e+3", "0x1_F", "0b1010", "0b_", "1_000", "1:20", "-1:20",
        "190:20:30", "1:30.5", "08", "0_", "00", "+12", "-0", "'07777'", '"1_000"', "yes", "off", "On", "~", "Null", ".inf", ".5",
        "2001-12-14", "2001-02-30", "'2001-12-14'", "=", "'='", "!!str 07777", "!!float 1", "yEs",
    ]
] + [
    ("yaml11 weight_threshold !!int '07'", {"yaml": mag_yaml("target_sparsity: 0.5", "weight_threshold: !!int '07'"), "divergence": "explicit !!int/!!float/!!bool tags also pass serde_norway's YAML 1.2 check, which refuses '07'"}),
    ("yaml11 merge list, one-letter keys", {"yaml": "config_type: OpMagnitudePrunerConfig\nop_name_configs:\n  <<: [{w: {target_sparsity: 0.5}, ww: {target_sparsity: 0.5}}, {w: {target_sparsity: 0.75}, ww: {target_sparsity: 0.75}}]\n"}),
] + [
    ("yaml11 weight_threshold 2**64", {"yaml": mag_yaml("target_sparsity: 0.5", "weight_threshold: 18446744073709551616"), "repr_differs": "mlprune saturates to u64::MAX"}),
    ("yaml11 weight_threshold 2**64 hex", {"yaml": mag_yaml("target_sparsity: 0.5", "weight_threshold: 0x10000000000000000"), "repr_differs": "mlprune saturates to u64::MAX"}),
    ("yaml11 weight_threshold 2**200", {"yaml": mag_yaml("target_sparsity: 0.5", f"weight_threshold: {BIG}"), "repr_differs": "mlprune saturates to u64::MAX"}),
    ("yaml11 weight_threshold -2**200", {"yaml": mag_yaml("target_sparsity: 0.5", f"weight_threshold: -{BIG}")}),
    ("yaml11 weight_threshold 4300 digits", {"yaml": mag_yaml("target_sparsity: 0.5", "weight_threshold: " + "1" * 4300), "repr_differs": "mlprune saturates to u64::MAX"}),
    ("yaml11 weight_threshold 4301 digits", {"yaml": mag_yaml("target_sparsity: 0.5", "weight_threshold: " + "1" * 4301)}),
    ("yaml11 weight_threshold 5000 digits", {"yaml": mag_yaml("target_sparsity: 0.5", "weight_threshold: " + "1" * 5000)}),
    ("yaml11 weight_threshold quoted 4301 digits", {"yaml": mag_yaml("target_sparsity: 0.5", "weight_threshold: '" + "1" * 4301 + "'")}),
] + [
    (f"yaml11 dim {v}", {"yaml": mag_yaml("target_sparsity: 0.5", "block_size: 2", f"dim: {v}")}) for v in [
        "on", "off", "yes", "no", "Y", "true", "1:00", "0b1", "01", "1.9", "'on'",
    ]
] + [
    ("yaml11 n_m_ratio [1, 2**64]", {"yaml": mag_yaml("n_m_ratio: [1, 18446744073709551616]"), "repr_differs": "mlprune saturates to u64::MAX"}),
    ("yaml11 n_m_ratio [-2**200, 4]", {"yaml": mag_yaml(f"n_m_ratio: [-{BIG}, 4]"), "divergence": "negative n: Python's negative slicing prunes m + n values"}),
] + [
    (f"yaml11 n_m_ratio {v}", {"yaml": mag_yaml(f"n_m_ratio: {v}")}) for v in [
        f"[{BIG}, 0x{'1' + '0' * 40}]", "[0b10, 0x4]", "[02, 04]", "[1:00, 2:00]",
        "[yes, 4]", "[2, 4.9]",
    ]
] + [
    (f"yaml11 threshold {v}", {"yaml": thr_yaml(f"threshold: {v}")}) for v in [
        "1e3", "1e-3", "0x10", "1:30", "1:30.5", "yes", "1_0.5", "." + "5" * 3, "1" + "0" * 400, "0x1" + "0" * 300, "-.inf", "+.inf",
        "1.0e+999", "'1e3'",
    ]
] + [
    ("yaml11 target_sparsity 5e-1", {"yaml": mag_yaml("target_sparsity: 5e-1")}),
    ("yaml11 target_sparsity 0.5e+0", {"yaml": mag_yaml("target_sparsity: 0.5e+0")}),
    ("yaml11 target_sparsity 1:00", {"yaml": mag_yaml("target_sparsity: 0:30")}),
    ("yaml11 config_type yes", {"yaml": "config_type: yes\nglobal_config: {}\n"}),
    ("yaml11 top-level key yes", {"yaml": "config_type: OpThresholdPrunerConfig\nyes: 1\n"}),
    ("yaml11 duplicate field keeps the last", {"yaml": mag_yaml("target_sparsity: 0.2", "target_sparsity: 0.5")}),
    ("yaml11 duplicate global_config keeps the last", {"yaml": "config_type: OpMagnitudePrunerConfig\nglobal_config: {target_sparsity: 2}\nglobal_config: {target_sparsity: 0.5}\n"}),
    ("yaml11 duplicate config_type keeps the last", {"yaml": "config_type: OpThresholdPrunerConfig\nconfig_type: OpMagnitudePrunerConfig\nglobal_config: {target_sparsity: 0.5}\n"}),
    ("yaml11 duplicate op name keeps the last", {"yaml": "config_type: OpMagnitudePrunerConfig\nop_name_configs:\n  w: {target_sparsity: 2}\n  w: {target_sparsity: 0.25}\n"}),
    ("yaml11 merge key", {"yaml": "config_type: OpMagnitudePrunerConfig\nglobal_config:\n  <<: {target_sparsity: 0.5, weight_threshold: 3}\n  weight_threshold: 10\n"}),
    ("yaml11 merge list first wins", {"yaml": "config_type: OpMagnitudePrunerConfig\nop_name_configs:\n  a: &a {target_sparsity: 0.5}\n  b: &b {target_sparsity: 0.75, weight_threshold: 5}\n  c:\n    <<: [*a, *b]\n"}),
    ("yaml11 merge of a scalar", {"yaml": "config_type: OpMagnitudePrunerConfig\nglobal_config:\n  <<: 5\n  target_sparsity: 0.5\n"}),
    ("yaml11 merge key as a value", {"yaml": mag_yaml("target_sparsity: <<")}),
    ("yaml11 equals key", {"yaml": "config_type: OpMagnitudePrunerConfig\nglobal_config:\n  target_sparsity: 0.5\n  =: 1\n"}),
    ("yaml11 op_name key true", {"yaml": "config_type: OpMagnitudePrunerConfig\nop_name_configs:\n  true: {target_sparsity: 0.5}\n  w: {target_sparsity: 0.25}\n"}),
    ("yaml11 op_name key null", {"yaml": "config_type: OpMagnitudePrunerConfig\nop_name_configs:\n  ~: {target_sparsity: 0.5}\n"}),
    ("yaml11 op_name key float", {"yaml": "config_type: OpMagnitudePrunerConfig\nop_name_configs:\n  1.5: null\n"}),
    ("yaml11 op_name key date", {"yaml": "config_type: OpMagnitudePrunerConfig\nop_name_configs:\n  2001-12-14: {target_sparsity: 0.5}\n"}),
    ("yaml11 op_name key int with a bad entry", {"yaml": "config_type: OpMagnitudePrunerConfig\nop_name_configs:\n  5: {target_sparsity: 2}\n"}),
    ("yaml11 op_type key int structural", {"yaml": "config_type: OpMagnitudePrunerConfig\nop_type_configs:\n  5: {n_m_ratio: [2, 4]}\n"}),
    ("yaml11 op_name keys 1 and true are one key", {"yaml": "config_type: OpMagnitudePrunerConfig\nop_name_configs:\n  1: {target_sparsity: 2}\n  true: {target_sparsity: 0.5}\n"}),
    ("yaml11 op_name key list", {"yaml": "config_type: OpMagnitudePrunerConfig\nop_name_configs:\n  ? [a]\n  : null\n"}),
    ("yaml11 op_name key quoted yes", {"yaml": "config_type: OpMagnitudePrunerConfig\nop_name_configs:\n  'yes': {target_sparsity: 0.5}\n"}),
]

CASES = [
    # --- top level -------------------------------------------------------------------------
    ("empty global threshold config", {"json": thr()}),
    ("no config_type", {"json": {"global_config": {}}}),
    ("config_type null", {"json": {"config_type": None, "global_config": {}}}),
    ("config_type number", {"json": {"config_type": 5, "global_config": {}}}),
    ("config_type only", {"json": {"config_type": T}}),
    ("global_config null", {"json": {"config_type": T, "global_config": None}}),
    ("unknown top-level key", {"json": {"config_type": T, "zz": 1, "config_typ": 2}}),
    ("op_type_configs list", {"json": {"config_type": T, "op_type_configs": []}}),
    ("op_type_configs string", {"json": {"config_type": T, "op_type_configs": "abc"}}),
    ("op_name_configs number", {"json": {"config_type": T, "op_name_configs": 1.5}}),
    ("op_type_configs null", {"json": {"config_type": T, "op_type_configs": None}}),
    ("op_type_configs empty", {"json": {"config_type": T, "op_type_configs": {}}}),
    ("op_type entry null", {"json": {"config_type": T, "op_type_configs": {"linear": None}}}),
    ("op_name entry null", {"json": {"config_type": M, "op_name_configs": {"w": None}, "global_config": {"target_sparsity": 0.5}}}),
    ("global_config list", {"json": {"config_type": T, "global_config": []}}),
    ("global_config number", {"json": {"config_type": T, "global_config": 0}}),
    ("global_config false", {"json": {"config_type": T, "global_config": False}}),
    ("global_config string", {"json": {"config_type": T, "global_config": "abc"}}),
    ("op_type entry list", {"json": {"config_type": T, "op_type_configs": {"a": []}}}),
    ("document is a list", {"json": [1, 2]}),
    # --- config classes --------------------------------------------------------------------
    ("linear quantizer class", {"json": {"config_type": "OpLinearQuantizerConfig", "global_config": {}}}),
    ("palettizer class", {"json": {"config_type": "OpPalettizerConfig", "global_config": {"nbits": 4}}}),
    ("palettizer class with its own error", {"json": {"config_type": "OpPalettizerConfig", "global_config": {}}, "message_differs": "OpPalettizerConfig field checks are not mirrored"}),
    ("unknown class", {"json": {"config_type": "Foo", "global_config": {}}}),
    ("abstract class", {"json": {"config_type": "OpCompressorConfig", "global_config": {}}}),
    ("quantizer top-level, pruner entry override", {"json": {"config_type": "OpLinearQuantizerConfig", "op_type_configs": {"linear": {"config_type": T}}}}),
    ("entry override to magnitude", {"json": {"config_type": T, "global_config": {"threshold": 0.01}, "op_type_configs": {"conv": {"config_type": M, "n_m_ratio": [3, 4]}}}}),
    ("entry override null", {"json": {"config_type": T, "global_config": {"config_type": None}}}),
    ("foreign entry after structural error", {"json": {"config_type": T, "global_config": {"config_type": "OpLinearQuantizerConfig"}, "op_type_configs": {"matmul": {"config_type": M, "n_m_ratio": [1, 2]}}}}),
    ("foreign op_name entry", {"json": {"config_type": T, "op_name_configs": {"w": {"config_type": "OpPalettizerConfig", "nbits": 4}}}}),
    # --- threshold fields ------------------------------------------------------------------
    ("threshold int 0", {"json": thr(threshold=0)}),
    ("threshold float", {"json": thr(threshold=0.01)}),
    ("threshold true", {"json": thr(threshold=True)}),
    ("threshold numeric string", {"json": thr(threshold="0.5")}),
    ("threshold string with underscore", {"json": thr(threshold="1_0.5")}),
    ("threshold bad string", {"json": thr(threshold="abc")}),
    ("threshold null", {"json": thr(threshold=None)}),
    ("threshold list", {"json": thr(threshold=[1])}),
    ("threshold negative int", {"json": thr(threshold=-1)}),
    ("threshold tiny negative", {"json": thr(threshold=-1e-300)}),
    ("threshold negative zero", {"json": thr(threshold=-0.0)}),
    ("threshold huge", {"json": thr(threshold=1e300)}),
    ("threshold nan (yaml)", {"yaml": "config_type: OpThresholdPrunerConfig\nglobal_config:\n  threshold: .nan\n", "divergence": "a config holding NaN never equals itself: the pass raises a config conflict for every const it applies to"}),
    ("minimum_sparsity_percentile nan (yaml)", {"yaml": "config_type: OpThresholdPrunerConfig\nglobal_config:\n  minimum_sparsity_percentile: .nan\n", "divergence": "a config holding NaN never equals itself: the pass raises a config conflict for every const it applies to"}),
    ("minimum_sparsity_percentile inf (yaml)", {"yaml": "config_type: OpThresholdPrunerConfig\nglobal_config:\n  minimum_sparsity_percentile: .inf\n"}),
    ("threshold -inf (yaml)", {"yaml": "config_type: OpThresholdPrunerConfig\nglobal_config:\n  threshold: -.inf\n"}),
    ("threshold inf (yaml)", {"yaml": "config_type: OpThresholdPrunerConfig\nglobal_config:\n  threshold: .inf\n"}),
    ("threshold string Infinity", {"json": thr(threshold="Infinity")}),
    ("min sparsity int 1", {"json": thr(minimum_sparsity_percentile=1)}),
    ("min sparsity 2", {"json": thr(minimum_sparsity_percentile=2)}),
    ("min sparsity negative", {"json": thr(minimum_sparsity_percentile=-0.1)}),
    ("two conversion errors: field order wins", {"json": thr(minimum_sparsity_percentile="x", threshold="abc")}),
    ("conversion error before extra key", {"json": thr(threshold="abc", foo=1)}),
    ("validator error hidden by extra key", {"json": thr(threshold=-1, foo=1)}),
    ("extra keys sorted", {"json": thr(zzz=1, aaa=2)}),
    ("weight_threshold float truncated", {"json": thr(weight_threshold=2.7)}),
    ("weight_threshold -0.5 truncates to 0", {"json": thr(weight_threshold=-0.5)}),
    ("weight_threshold numeric string", {"json": thr(weight_threshold=" 12 ")}),
    ("weight_threshold underscore string", {"json": thr(weight_threshold="1_000")}),
    ("weight_threshold exponent string", {"json": thr(weight_threshold="1e3")}),
    ("weight_threshold float string", {"json": thr(weight_threshold="2.5")}),
    ("weight_threshold null", {"json": thr(weight_threshold=None)}),
    ("weight_threshold negative", {"json": thr(weight_threshold=-1)}),
    ("weight_threshold -1.5", {"json": thr(weight_threshold=-1.5)}),
    ("weight_threshold true", {"json": thr(weight_threshold=True)}),
    ("weight_threshold zero", {"json": thr(weight_threshold=0)}),
    ("weight_threshold huge", {"json": thr(weight_threshold=10**30), "repr_differs": "mlprune saturates to u64::MAX"}),
    ("weight_threshold nan (yaml)", {"yaml": "config_type: OpThresholdPrunerConfig\nglobal_config:\n  weight_threshold: .nan\n"}),
    ("weight_threshold inf (yaml)", {"yaml": "config_type: OpThresholdPrunerConfig\nglobal_config:\n  weight_threshold: .inf\n"}),
    ("threshold field in magnitude config", {"json": mag(target_sparsity=0.5, threshold=0.1)}),
    # --- magnitude fields ------------------------------------------------------------------
    ("target_sparsity float", {"json": mag(target_sparsity=0.5)}),
    ("target_sparsity int 1", {"json": mag(target_sparsity=1)}),
    ("target_sparsity int 0", {"json": mag(target_sparsity=0)}),
    ("target_sparsity over 1", {"json": mag(target_sparsity=1.0000001)}),
    ("target_sparsity negative", {"json": mag(target_sparsity=-0.1)}),
    ("target_sparsity negative zero", {"json": mag(target_sparsity=-0.0)}),
    ("target_sparsity exponent string", {"json": mag(target_sparsity="5e-1")}),
    ("target_sparsity null", {"json": mag(target_sparsity=None)}),
    ("target_sparsity nan (yaml)", {"yaml": "config_type: OpMagnitudePrunerConfig\nglobal_config:\n  target_sparsity: .nan\n", "divergence": "coremltools accepts NaN and then fails while pruning (config conflict, or numpy.percentile)"}),
    ("target_sparsity inf (yaml)", {"yaml": "config_type: OpMagnitudePrunerConfig\nglobal_config:\n  target_sparsity: .inf\n"}),
    ("magnitude empty", {"json": mag()}),
    ("target_sparsity and n_m_ratio", {"json": mag(target_sparsity=0.5, n_m_ratio=[1, 2])}),
    ("n_m_ratio null", {"json": mag(n_m_ratio=None)}),
    ("block_size", {"json": mag(target_sparsity=0.5, block_size=4)}),
    ("block_size 1", {"json": mag(target_sparsity=0.5, block_size=1)}),
    ("block_size 0", {"json": mag(target_sparsity=0.5, block_size=0)}),
    ("block_size negative", {"json": mag(target_sparsity=0.5, block_size=-3)}),
    ("block_size true", {"json": mag(target_sparsity=0.5, block_size=True)}),
    ("block_size float truncated", {"json": mag(target_sparsity=0.5, block_size=2.5)}),
    ("block_size string", {"json": mag(target_sparsity=0.5, block_size="4")}),
    ("block_size list", {"json": mag(target_sparsity=0.5, block_size=[2])}),
    ("block_size huge", {"json": mag(target_sparsity=0.5, block_size=10**15)}),
    ("block_size with n_m_ratio", {"json": mag(n_m_ratio=[1, 2], block_size=2)}),
    ("block_size null and dim null", {"json": mag(target_sparsity=0.5, block_size=None, dim=None)}),
    ("n_m_ratio list", {"json": mag(n_m_ratio=[3, 4])}),
    ("n_m_ratio flow sequence (yaml)", {"yaml": "config_type: OpMagnitudePrunerConfig\nglobal_config:\n  n_m_ratio: [2, 4]\n"}),
    ("n_m_ratio block sequence (yaml)", {"yaml": "config_type: OpMagnitudePrunerConfig\nglobal_config:\n  n_m_ratio:\n    - 1\n    - 2\n"}),
    ("n_m_ratio three values", {"json": mag(n_m_ratio=[3, 4, 5])}),
    ("n_m_ratio one value", {"json": mag(n_m_ratio=[3])}),
    ("n_m_ratio empty", {"json": mag(n_m_ratio=[])}),
    ("n_m_ratio n > m", {"json": mag(n_m_ratio=[5, 4])}),
    ("n_m_ratio n = m", {"json": mag(n_m_ratio=[4, 4])}),
    ("n_m_ratio n = 0", {"json": mag(n_m_ratio=[0, 4])}),
    ("n_m_ratio 0:0", {"json": mag(n_m_ratio=[0, 0]), "divergence": "m = 0 divides by zero in the pass"}),
    ("n_m_ratio 1:0", {"json": mag(n_m_ratio=[1, 0])}),
    ("n_m_ratio -1:0", {"json": mag(n_m_ratio=[-1, 0]), "divergence": "m = 0 divides by zero in the pass"}),
    ("n_m_ratio -1:4", {"json": mag(n_m_ratio=[-1, 4]), "divergence": "negative n works through Python slicing only"}),
    ("n_m_ratio floats truncated", {"json": mag(n_m_ratio=[1.5, 4])}),
    ("n_m_ratio strings", {"json": mag(n_m_ratio=["1", "4"])}),
    ("n_m_ratio two-char string", {"json": mag(n_m_ratio="34")}),
    ("n_m_ratio three-char string", {"json": mag(n_m_ratio="345")}),
    ("n_m_ratio int", {"json": mag(n_m_ratio=3)}),
    ("n_m_ratio bad element", {"json": mag(n_m_ratio=[1, "b"])}),
    ("n_m_ratio bad element and too long", {"json": mag(n_m_ratio=["a", 1, 2])}),
    ("n_m_ratio nested list", {"json": mag(n_m_ratio=[[1], 2])}),
    ("n_m_ratio huge", {"json": mag(n_m_ratio=[1, 10**15])}),
    ("dim 0 with n_m_ratio", {"json": mag(n_m_ratio=[3, 4], dim=0)}),
    ("dim 2", {"json": mag(n_m_ratio=[3, 4], dim=2)}),
    ("dim -1", {"json": mag(target_sparsity=0.5, block_size=2, dim=-1)}),
    ("dim 1 with block_size", {"json": mag(target_sparsity=0.5, block_size=2, dim=1)}),
    ("dim float", {"json": mag(target_sparsity=0.5, block_size=2, dim=1.0)}),
    ("dim true", {"json": mag(target_sparsity=0.5, block_size=2, dim=True)}),
    ("dim string", {"json": mag(target_sparsity=0.5, block_size=2, dim="1")}),
    ("dim without block or n_m", {"json": mag(target_sparsity=0.5, dim=0)}),
    ("dim null with n_m_ratio", {"json": mag(n_m_ratio=[1, 2], dim=None)}),
    ("attrs order: target_sparsity first", {"json": mag(target_sparsity=2, block_size=1, dim=5)}),
    ("attrs order: block_size before n_m_ratio", {"json": mag(n_m_ratio=[5, 4], block_size=1, dim=7)}),
    ("attrs order: dim before weight_threshold", {"json": mag(target_sparsity=0.5, dim=7, weight_threshold=-1)}),
    ("magnitude weight_threshold negative", {"json": mag(target_sparsity=0.5, weight_threshold=-5)}),
    # --- construction checks ---------------------------------------------------------------
    ("structural op type matmul", {"json": {"config_type": M, "op_type_configs": {"matmul": {"n_m_ratio": [1, 2]}}}}),
    ("block op type gather", {"json": {"config_type": M, "op_type_configs": {"gather": {"target_sparsity": 0.5, "block_size": 2}}}}),
    ("structural op types conv and linear", {"json": {"config_type": M, "op_type_configs": {"conv": {"n_m_ratio": [1, 2]}, "linear": {"target_sparsity": 0.5, "block_size": 2}}}}),
    ("structural op name any", {"json": {"config_type": M, "op_name_configs": {"matmul": {"n_m_ratio": [1, 2]}}}}),
    ("unstructured op type matmul", {"json": {"config_type": M, "op_type_configs": {"matmul": {"target_sparsity": 0.5}}}}),
    ("const op type accepted at construction", {"json": {"config_type": T, "op_type_configs": {"const": {}}}}),
    ("entry error location in op_name_configs", {"json": {"config_type": T, "op_name_configs": {"w": {"threshold": -1}}}}),
    ("everything together", {"json": {
        "config_type": M,
        "global_config": {"target_sparsity": 0.25, "weight_threshold": 1024},
        "op_type_configs": {"conv": {"n_m_ratio": [2, 4]}, "linear": None, "matmul": {"config_type": T, "threshold": 0.001}},
        "op_name_configs": {"conv_0": {"target_sparsity": 0.5, "block_size": 2, "dim": 1}, "w": None},
    }}),
    # --- YAML specifics ---------------------------------------------------------------------
    ("yaml docs example", {"yaml": "config_type: OpThresholdPrunerConfig\nglobal_config:\n    threshold: 0.01\nop_type_configs:\n    conv:\n        config_type: OpMagnitudePrunerConfig\n        n_m_ratio: [3, 4]\n"}),
    ("yaml empty document", {"yaml": ""}),
    ("yaml tilde null entry", {"yaml": "config_type: OpThresholdPrunerConfig\nop_type_configs:\n  linear: ~\n"}),
    ("yaml empty entry is null", {"yaml": "config_type: OpThresholdPrunerConfig\nglobal_config:\n"}),
    ("yaml exponent float with dot", {"yaml": "config_type: OpThresholdPrunerConfig\nglobal_config:\n  threshold: 1.0e-3\n"}),
    ("yaml quoted number", {"yaml": "config_type: OpThresholdPrunerConfig\nglobal_config:\n  weight_threshold: '100'\n"}),
    ("yaml int key", {"yaml": "config_type: OpThresholdPrunerConfig\nop_name_configs:\n  5: {}\n"}),
    ("yaml anchor under an unknown key", {"yaml": "config_type: OpMagnitudePrunerConfig\nbase: &b {target_sparsity: 0.5}\n"}),
] + YAML11_CASES


def leaves(e):
    if isinstance(e, BaseExceptionGroup):
        for sub in e.exceptions:
            yield from leaves(sub)
    else:
        yield e


def describe(c):
    return None if c is None else repr(c)


def run(case):
    try:
        # yaml.safe_load is what OptimizationConfig.from_yaml calls on the file's stream.
        doc = yaml.safe_load(case["yaml"]) if "yaml" in case else copy.deepcopy(case["json"])
        cfg = OptimizationConfig.from_dict(doc)
        prune_weights(config=cfg)
    except Exception as e:  # record what the user would see
        first = next(leaves(e))
        return {"accepted": False, "error_type": type(first).__name__, "message": str(first)}
    return {
        "accepted": True,
        "global": describe(cfg.global_config),
        # A non-string key (YAML `5:`, `true:`) is kept by coremltools but can never match an op;
        # mlprune checks its entry and drops it.
        "op_type": {k: describe(v) for k, v in cfg.op_type_configs.items() if isinstance(k, str)},
        "op_name": {k: describe(v) for k, v in cfg.op_name_configs.items() if isinstance(k, str)},
    }


def main():
    out = []
    for name, case in CASES:
        if "json" in case:
            # Round-trip through JSON so the golden file holds exactly what Python saw.
            case = dict(case, json=json.loads(json.dumps(case["json"])))
        record = {"name": name}
        record.update({k: v for k, v in case.items() if k in ("json", "yaml", "divergence", "message_differs", "repr_differs")})
        record.update(run(case))
        out.append(record)
    json.dump({"coremltools": coremltools.__version__, "cases": out}, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
