"""The Python API: ``prune_weights`` (coremltools' drop-in), ``prune`` and ``inspect`` (paths)."""

import atexit
import json
import os
import secrets
import shutil
import sys
import tempfile
from typing import Any, Callable, Dict, List, Union

from . import _mlprune
from ._config import ConfigSource, config_source

PathLike = Union[str, "os.PathLike[str]"]


def prune(
    src: PathLike,
    dst: PathLike,
    config: Any,
    *,
    joint_compression: bool = False,
    device: str = "auto",
    force: bool = False,
    progress: bool = False,
) -> List[Dict[str, Any]]:
    """Prunes the package ``src`` (an ``.mlpackage`` folder or a zip holding one) into ``dst``.

    Returns the per-tensor report: the entries ``mlprune prune --report`` writes. ``config`` is an
    ``OptimizationConfig``, a dict in its ``from_dict`` layout, a JSON or YAML file, or a
    ``GlobalSparsity`` (one cut across the whole model). Invalid
    configs and arguments raise ``ValueError``, bad input ``MlpruneError``; either way nothing is
    left at ``dst``. Needs no coremltools.
    """
    report = _prune(src, dst, config_source(config), joint_compression, device, force, progress)
    return json.loads(report)


def _prune(
    src: PathLike,
    dst: PathLike,
    source: ConfigSource,
    joint_compression: bool,
    device: str,
    force: bool,
    progress: bool,
) -> str:
    """The extension's prune, with the config already in the form it reads; the report as JSON."""
    _quiet_wayland_probe(device)
    return _mlprune.prune(
        os.fspath(src),
        os.fspath(dst),
        **source.arguments(),
        joint_compression=joint_compression,
        device=device,
        force=force,
        progress=progress,
    )


def inspect(path: PathLike) -> Dict[str, Any]:
    """What ``mlprune inspect PATH --json`` prints, as Python objects."""
    return json.loads(_mlprune.inspect(os.fspath(path)))


def prune_weights(
    mlmodel: Any,
    config: Any,
    joint_compression: bool = False,
    *,
    device: str = "auto",
    progress: bool = False,
) -> Any:
    """``coremltools.optimize.coreml.prune_weights``, done by mlprune: the same weights and ops.

    ``mlmodel`` is a ``coremltools.models.MLModel`` of type mlprogram, or the path of an
    ``.mlpackage`` or a zip holding one. Returns a new ``MLModel`` backed by a temporary package
    (``is_temp_package``), removed when Python exits, as coremltools' result is.

    A multifunction model (which coremltools refuses) has every function pruned; the returned model
    opens the function ``mlmodel`` had open (its ``function_name``), the default one for a path.
    ``config`` may also be a ``GlobalSparsity``: one magnitude cut across the whole model, which
    coremltools does not offer.
    """
    import coremltools as ct

    source = config_source(config)  # an unusable config fails before anything is saved
    # Named before they are made, so that the cleanup knows them whenever a Ctrl-C comes: one
    # that came as tempfile.mkdtemp() returned left its folder for good (red team, session 21).
    # And removed at exit too, in case a Ctrl-C lands in the cleanup itself before it begins,
    # which no Python code can rule out (1 in 200 calls with random Ctrl-Cs).
    scratch = _fresh_temp_path("mlprune-", "")
    scratch_at_exit = _remove_at_exit(scratch)
    try:
        os.mkdir(scratch, 0o700)
        if isinstance(mlmodel, (str, bytes, os.PathLike)):
            src = os.fsdecode(mlmodel)
            compute_units = ct.ComputeUnit.ALL
            skip_model_load = sys.platform != "darwin"
            function_name = None
        else:
            src = _package_of(mlmodel, scratch)
            compute_units = mlmodel.compute_unit
            skip_model_load = mlmodel.__proxy__ is None
            function_name = getattr(mlmodel, "function_name", None)
        dst = _fresh_temp_path("tmp", ".mlpackage")  # mlprune makes it, never into an existing one
        dst_at_exit = _remove_at_exit(dst)
        try:
            _prune(src, dst, source, joint_compression, device, False, progress)
            # Removed at exit once the MLModel holds it (is_temp_package), and not before: until
            # then nothing would remove it, if a Ctrl-C came after the run's final check, say.
            pruned = ct.models.MLModel(
                dst,
                compute_units=compute_units,
                skip_model_load=skip_model_load,
                is_temp_package=True,
                function_name=function_name,
            )
        except BaseException:
            _remove_whole(dst)
            atexit.unregister(dst_at_exit)
            raise
        atexit.unregister(dst_at_exit)  # the MLModel's own removal at exit takes over
        return pruned
    finally:
        _remove_whole(scratch)
        atexit.unregister(scratch_at_exit)


def _remove_at_exit(path: str) -> Callable[[], None]:
    """Registers the removal of ``path`` at exit, and returns it (for ``atexit.unregister``)."""

    def remove() -> None:
        shutil.rmtree(path, ignore_errors=True)

    atexit.register(remove)
    return remove


def _remove_whole(path: str) -> None:
    """Removes the tree at ``path``, finishing the removal when a Ctrl-C interrupts it (one that
    came while the model copy was removed left part of it; red team, session 21), then raises
    that ``KeyboardInterrupt``."""
    interrupted = None
    for _ in range(10_000):  # each interrupted pass removes something; a bound all the same
        try:
            shutil.rmtree(path, ignore_errors=True)
            break  # done, as far as it can be
        except KeyboardInterrupt as e:
            interrupted = e
    if interrupted is not None:
        raise interrupted


def _fresh_temp_path(prefix: str, suffix: str) -> str:
    """A path in the temporary folder that nothing is at: 128 random bits in its name."""
    return os.path.join(tempfile.gettempdir(), f"{prefix}{secrets.token_hex(16)}{suffix}")


def _package_of(mlmodel: Any, scratch: str) -> str:
    """The package behind ``mlmodel``, saved into ``scratch`` first if it has none."""
    if not callable(getattr(mlmodel, "get_spec", None)):
        raise ValueError(
            "mlmodel must be a coremltools MLModel or the path of a package or zip, got "
            f"{type(mlmodel).__name__}"
        )
    model_type = mlmodel.get_spec().WhichOneof("Type")
    if model_type != "mlProgram":
        # coremltools' own words for this case
        raise TypeError(f"weight compression not applicable for model type {model_type}")
    path = getattr(mlmodel, "package_path", None)
    if path and os.path.isdir(path) and _spec_is_the_packages(mlmodel, path):
        return path
    # No package, or its spec was changed in memory (metadata, descriptions): coremltools prunes
    # the in-memory spec, so that is what gets pruned here too.
    saved = os.path.join(scratch, "model.mlpackage")
    mlmodel.save(saved)
    return saved


def _spec_is_the_packages(mlmodel: Any, path: str) -> bool:
    """Whether ``mlmodel``'s in-memory spec is the one its package holds (equal messages serialize
    to equal bytes when both are serialized deterministically by the same library)."""
    from coremltools.models.utils import load_spec

    on_disk = load_spec(path).SerializeToString(deterministic=True)
    return on_disk == mlmodel.get_spec().SerializeToString(deterministic=True)


def _quiet_wayland_probe(device: str) -> None:
    """Looking for a GPU loads the Vulkan drivers, and Mesa's probe for a Wayland display prints
    "error: XDG_RUNTIME_DIR is invalid or not set" when the variable is unset (headless boxes, CI).
    The CLI gives the probe a folder to look in; so does this, only when the variable is unset and a
    GPU may be looked for. mlprune never opens a window."""
    if device != "cpu" and "XDG_RUNTIME_DIR" not in os.environ:
        os.environ["XDG_RUNTIME_DIR"] = tempfile.gettempdir()
