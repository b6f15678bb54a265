"""coremltools 9.0 view of an .mlpackage: the oracle mlprune's outputs are checked against.

Import this module before numpy/coremltools anywhere in the test tooling: it pins numpy's CPU
dispatch (spec §5.8 — fp32 argsort tie order differs under AVX2/AVX-512) and silences the
"Failed to load _MLModelProxy" warnings coremltools logs on Linux, where no Core ML runtime exists.

Public API:
    load_package(path) -> ct.models.MLModel       .mlpackage folder or a .zip of one
    dense_weights(path) -> dict[str, np.ndarray]  spec §6 decompression oracle
    op_types(path) -> list[tuple[str, str]]       (op name, op type) in program order
    spec_version(path) -> int                     Model.specificationVersion
"""

import os
import sys

# numpy reads this once, when it is first imported; later changes have no effect.
if "numpy" in sys.modules and "NPY_DISABLE_CPU_FEATURES" not in os.environ:
    print(
        "oracle.py: numpy was imported before NPY_DISABLE_CPU_FEATURES was set; fp32 n:m tie order"
        " may differ from the spec (import oracle first, or set the variable)",
        file=sys.stderr,
    )
os.environ.setdefault("NPY_DISABLE_CPU_FEATURES", "X86_V3 X86_V4 AVX512_ICL")

import logging
import tempfile
import zipfile
from collections import defaultdict
from pathlib import Path

logging.getLogger("coremltools").setLevel(logging.ERROR)

import numpy as np  # noqa: E402
import coremltools as ct  # noqa: E402
from coremltools.converters.mil.mil.builder import Builder  # noqa: E402
from coremltools.converters.mil.frontend.milproto.load import (  # noqa: E402
    load as milproto_to_pymil,
)

__all__ = ["load_package", "dense_weights", "op_types", "spec_version", "extract_zip"]


def extract_zip(zip_path, dest_dir):
    """Extracts a zipped package into dest_dir and returns the package folder.

    Accepts the two layouts a zipped .mlpackage can reasonably have: one top-level
    `<name>.mlpackage/` folder (what `zip -r x.zip x.mlpackage` makes), or the package contents at
    the archive root (`Manifest.json` at the top), which is extracted into `<zip stem>.mlpackage`.
    Refuses anything else, and member paths that would escape dest_dir, so a bad archive fails
    loudly instead of being half-read.
    """
    dest = Path(dest_dir).resolve()
    with zipfile.ZipFile(zip_path) as zf:
        members = [m for m in zf.namelist() if not m.startswith("__MACOSX/")]
        for member in members:
            target = (dest / member).resolve()
            if dest != target and dest not in target.parents:
                raise ValueError(f"{zip_path}: member {member!r} escapes the extraction folder")
        if "Manifest.json" in members:
            stem = Path(zip_path).name
            stem = stem[: -len(".zip")] if stem.lower().endswith(".zip") else stem
            if not stem.endswith(".mlpackage"):
                stem += ".mlpackage"
            root = dest / stem
            zf.extractall(root, members)
            return root
        roots = {m.split("/", 1)[0] for m in members}
        if len(roots) != 1 or not next(iter(roots)).endswith(".mlpackage"):
            raise ValueError(
                f"{zip_path}: expected one top-level .mlpackage folder or Manifest.json at the"
                f" root, found {sorted(roots)}"
            )
        zf.extractall(dest, members)
    return dest / roots.pop()


def load_package(path):
    """Opens an .mlpackage folder (or a .zip holding one) without compiling it.

    For a zip, the package is extracted to a temporary folder whose lifetime is tied to the returned
    model (coremltools reads weight.bin lazily from `model.weights_dir`), so keep the model alive
    while using anything derived from it.
    """
    path = Path(path)
    if path.is_file() and zipfile.is_zipfile(path):
        tmp = tempfile.TemporaryDirectory(prefix="mlprune-oracle-")
        pkg = extract_zip(path, tmp.name)
        model = ct.models.MLModel(str(pkg), skip_model_load=True)
        model._mlprune_tmpdir = tmp  # removed when the model is garbage-collected
        return model
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not an .mlpackage folder or a zip file")
    return ct.models.MLModel(str(path), skip_model_load=True)


def spec_version(path):
    """The package's Model.specificationVersion (6 = iOS15, 7 = iOS16, 8 = iOS17, 9 = iOS18)."""
    return int(load_package(path).get_spec().specificationVersion)


def _walk_ops(block):
    for op in block.operations:
        yield op
        for nested in op.blocks:
            yield from _walk_ops(nested)


def dense_weights(path):
    """Every constant tensor of the program, decompressed (spec §6).

    Keys are output names. `const` ops contribute their ndarray value (scalars and strings are
    skipped); every `constexpr_*` op contributes each of its outputs, materialized by coremltools'
    own reference decompression. Walks all functions and nested (control-flow) blocks.
    """
    model = load_package(path)
    spec = model.get_spec()
    # The loader names materialized constexpr inputs `<op>_<param>_<k>` from Builder's process-wide
    # counter; a fresh counter per load makes the names independent of what was loaded before
    # (k = 0, as in a fresh process), so two packages can be compared by name.
    saved_counts = Builder.name_count
    Builder.name_count = defaultdict(int)
    try:
        prog = milproto_to_pymil(
            model_spec=spec,
            specification_version=spec.specificationVersion,
            file_weights_dir=model.weights_dir,
        )
    finally:
        Builder.name_count = saved_counts
    out = {}
    for func in prog.functions.values():
        for op in _walk_ops(func):
            if op.op_type == "const" and isinstance(op.outputs[0].val, np.ndarray):
                out[op.outputs[0].name] = op.outputs[0].val
            elif op.op_type.startswith("constexpr_"):
                vals = op.materialized_val_inference()
                vals = vals if isinstance(vals, (tuple, list)) else [vals]
                for var, v in zip(op.outputs, vals):
                    out[var.name] = np.asarray(v)
    return out


def _proto_op_name(op):
    """The op's `name` attribute (coremltools' op name), else its first output name."""
    attr = op.attributes.get("name")
    if attr is not None:
        names = attr.immediateValue.tensor.strings.values
        if names:
            return names[0]
    return op.outputs[0].name if op.outputs else ""


def _walk_proto_ops(block):
    for op in block.operations:
        yield op
        for nested in op.blocks:
            yield from _walk_proto_ops(nested)


def op_types(path):
    """(op name, op type) for every op as stored in model.mlmodel, in program order.

    Reads the protobuf directly rather than pymil, so inlined constexpr inputs are not reported as
    extra const ops. Functions are visited in name order, each through the block of its own opset,
    recursing into nested blocks right after the op that owns them.
    """
    program = load_package(path).get_spec().mlProgram
    result = []
    for fname in sorted(program.functions):
        func = program.functions[fname]
        block = func.block_specializations[func.opset]
        for op in _walk_proto_ops(block):
            result.append((_proto_op_name(op), op.type))
    return result
