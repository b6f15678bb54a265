"""Moves every op of a package's main block into the nested block of one `cond` op, which returns
the block's output (for `benches/many_tensors.sh --nested`). Uses coremltools' own protobuf
classes, so it needs the project's venv (`scripts/setup-python.sh`).

Usage: python benches/nest_ops.py PACKAGE
"""

import sys
from pathlib import Path

from coremltools.proto import MIL_pb2, Model_pb2

path = Path(sys.argv[1]) / "Data/com.apple.CoreML/model.mlmodel"
model = Model_pb2.Model()
model.ParseFromString(path.read_bytes())
function = next(iter(model.mlProgram.functions.values()))
block = next(iter(function.block_specializations.values()))
last = block.outputs[0]
last_type = next(o.type for op in block.operations for o in op.outputs if o.name == last)
outer = MIL_pb2.Operation(type="cond")
outer.attributes["name"].type.tensorType.dataType = MIL_pb2.STRING
outer.attributes["name"].immediateValue.tensor.strings.values.append("nested")
out = outer.outputs.add(name="nested_out")
out.type.CopyFrom(last_type)
inner = outer.blocks.add()
inner.outputs.append(last)
inner.operations.extend(block.operations)
del block.operations[:]
block.operations.append(outer)
block.outputs[:] = ["nested_out"]
model.description.output[0].name = "nested_out"
path.write_bytes(model.SerializeToString())
