"""Shared helpers for the scripts that generate test models with coremltools 9.0.

convert(prog, target, precision)   MIL Builder program -> ct.models.MLModel (mlprogram)
save(model, path)                  save with reproducible Manifest.json identifiers
zip_package(folder, zip_path)      reproducible zip holding `<name>.mlpackage/` (empty dirs kept)
summarize(path)                    one-line description: spec, op types, weight tensors
"""

import oracle  # noqa: F401  (pins NPY_DISABLE_CPU_FEATURES before numpy is imported)

import json
import shutil
import uuid
import zipfile
from pathlib import Path

import numpy as np
import coremltools as ct
from coremltools.proto import Model_pb2

PRECISIONS = {"fp16": ct.precision.FLOAT16, "fp32": ct.precision.FLOAT32}
TARGETS = {
    "ios15": ct.target.iOS15,  # specificationVersion 6
    "ios16": ct.target.iOS16,  # 7
    "ios17": ct.target.iOS17,  # 8
    "ios18": ct.target.iOS18,  # 9
}

# Fixed namespace so the same package name always gets the same manifest identifiers.
_MANIFEST_NAMESPACE = uuid.UUID("5b0c6a1e-2f0e-4d8e-9b7a-6d1c0f3e8a42")
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def convert(prog, target, precision):
    """Converts a Builder program as a user would (default MIL pipeline; bars go to stderr)."""
    return ct.convert(
        prog,
        convert_to="mlprogram",
        minimum_deployment_target=TARGETS[target],
        compute_precision=PRECISIONS[precision],
    )


def save(model, path):
    """Saves an MLModel as an .mlpackage whose bytes depend only on the model, not on the run.

    coremltools draws fresh manifest UUIDs for every save and serializes protobuf maps in
    hash-table order, so two identical runs would give different bytes and noisy git diffs. Both
    are arbitrary to every reader: we derive the identifiers from the package and item names
    (uuid5; the manifest keeps coremltools' formatting) and
    re-serialize model.mlmodel with deterministic (sorted) map order — the same message.
    """
    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    model.save(str(path))
    manifest_path = path / "Manifest.json"
    manifest = json.loads(manifest_path.read_text())
    new_ids = {
        old_id: str(uuid.uuid5(_MANIFEST_NAMESPACE, f"{path.name}/{item['name']}"))
        for old_id, item in manifest["itemInfoEntries"].items()
    }
    root_item = manifest["itemInfoEntries"][manifest["rootModelIdentifier"]]
    root_model = path / "Data" / root_item["path"]
    manifest["itemInfoEntries"] = {
        new_ids[old_id]: item for old_id, item in manifest["itemInfoEntries"].items()
    }
    manifest["rootModelIdentifier"] = new_ids[manifest["rootModelIdentifier"]]
    # Same layout as coremltools' C++ writer (nlohmann): sorted keys, 4-space indent, final newline.
    manifest_path.write_text(json.dumps(manifest, indent=4, sort_keys=True) + "\n")

    spec = Model_pb2.Model()
    spec.ParseFromString(root_model.read_bytes())
    root_model.write_bytes(spec.SerializeToString(deterministic=True))
    return path


def zip_package(folder, zip_path):
    """Zips `<name>.mlpackage/` (with its directory entries, so an empty weights/ survives).

    Entries are sorted and carry a fixed timestamp and mode so the archive is reproducible.
    """
    folder = Path(folder)
    zip_path = Path(zip_path)
    paths = [folder] + sorted(folder.rglob("*"))
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in paths:
            arcname = str(Path(folder.name) / p.relative_to(folder))
            if p.is_dir():
                info = zipfile.ZipInfo(arcname.rstrip("/") + "/", _ZIP_EPOCH)
                info.external_attr = (0o40755 << 16) | 0x10
                zf.writestr(info, b"")
            else:
                info = zipfile.ZipInfo(arcname, _ZIP_EPOCH)
                info.external_attr = 0o100644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, p.read_bytes())
    return zip_path


def package_size(path):
    """Bytes on disk of a folder (recursively) or a file."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def non_const_op_types(path):
    """Op types that are not plain `const`, in first-seen program order."""
    seen = []
    for _, op_type in oracle.op_types(path):
        if op_type != "const" and op_type not in seen:
            seen.append(op_type)
    return seen


def weight_tensors(path, min_size=10):
    """(name, dtype, shape) of each dense tensor with at least min_size elements, by name."""
    out = []
    for name, value in sorted(oracle.dense_weights(path).items()):
        if value.size >= min_size:
            out.append((name, str(value.dtype), tuple(value.shape)))
    return out


def summarize(path):
    """One line: path, spec version, op types, large tensors."""
    weights = ", ".join(f"{n}:{d}{list(s)}" for n, d, s in weight_tensors(path))
    return (
        f"{path}  spec={oracle.spec_version(path)}  ops={','.join(non_const_op_types(path))}"
        f"  weights=[{weights}]  bytes={package_size(path)}"
    )


def seeded_normal(rng, shape, dtype=np.float32):
    """Standard-normal weights in fp32 (the converter casts to fp16 where asked)."""
    return rng.standard_normal(shape).astype(dtype)


__all__ = [
    "PRECISIONS",
    "TARGETS",
    "convert",
    "save",
    "zip_package",
    "package_size",
    "non_const_op_types",
    "weight_tensors",
    "summarize",
    "seeded_normal",
]
