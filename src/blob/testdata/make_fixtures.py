"""Regenerates the coremltools-written weight.bin fixtures used by src/blob tests.

Run with the coremltools 9.0 venv:  python make_fixtures.py  (writes into the current directory).
linear_fp16.weight.bin        : fp16 64x48 linear weight (blob at 64) + fp16 bias (64 elements)
linear_fp16_pruned.weight.bin : the same model after prune_weights(target_sparsity=0.5):
                                fp16 nonzero_data, uint1 mask, fp16 bias
"""
import os
import shutil
import tempfile

import numpy as np
import coremltools as ct
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import types
from coremltools.optimize.coreml import OpMagnitudePrunerConfig, OptimizationConfig, prune_weights

rng = np.random.default_rng(7)
W = rng.standard_normal((64, 48)).astype(np.float16)
b = rng.standard_normal((64,)).astype(np.float16)


@mb.program(input_specs=[mb.TensorSpec(shape=(1, 48), dtype=types.fp16)], opset_version=ct.target.iOS18)
def prog(x):
    return mb.linear(x=x, weight=W, bias=b, name="y")


model = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18,
                   compute_precision=ct.precision.FLOAT16)
config = OptimizationConfig(global_config=OpMagnitudePrunerConfig(target_sparsity=0.5, weight_threshold=100))
pruned = prune_weights(model, config)

with tempfile.TemporaryDirectory() as tmp:
    for name, m in [("linear_fp16", model), ("linear_fp16_pruned", pruned)]:
        pkg = os.path.join(tmp, name + ".mlpackage")
        m.save(pkg)
        shutil.copy(os.path.join(pkg, "Data/com.apple.CoreML/weights/weight.bin"), name + ".weight.bin")
