"""Configs in every form users hold them, turned into what the Rust core reads.

The core reads coremltools' ``OptimizationConfig.from_dict`` layout, as JSON text, or a JSON or YAML
file. A ``coremltools.optimize.coreml.OptimizationConfig`` is written out in that layout: each op
config as its class name (``config_type``) and its fields, ``None`` entries kept (they skip ops).
The core validates the result exactly as coremltools would.
"""

import json
import os
from typing import Any, Dict, Iterable, List, Optional, Union


class GlobalSparsity:
    """Whole-model magnitude pruning, as ``mlprune prune --global-sparsity S``: one cut across every
    tensor a global ``OpMagnitudePrunerConfig(target_sparsity=sparsity,
    weight_threshold=weight_threshold)`` would prune, except those named in ``exclude`` (a const,
    or an op whose input consts are all left out). The ``floor(sparsity × N)`` smallest magnitudes
    over those N elements become zero, ties at the cut too.

    ``sparsity`` is read as the exact decimal it prints as (``str(0.1)`` is ``"0.1"``), or given as
    that text.
    """

    def __init__(
        self,
        sparsity: Union[float, str],
        *,
        weight_threshold: Optional[int] = None,
        exclude: Iterable[str] = (),
    ) -> None:
        if isinstance(sparsity, bool):
            raise ValueError(f"sparsity must be a number or its decimal text, got {sparsity!r}")
        if isinstance(exclude, str):
            raise ValueError("exclude is a list of names, not one string")
        self.sparsity = str(sparsity)
        self.weight_threshold = weight_threshold
        self.exclude: List[str] = [str(name) for name in exclude]

    def __repr__(self) -> str:
        return (
            f"GlobalSparsity({self.sparsity!r}, weight_threshold={self.weight_threshold!r}, "
            f"exclude={self.exclude!r})"
        )


class ConfigSource:
    """What the core reads: exactly one of a config as JSON text, a config file, or a whole-model
    cut (``GlobalSparsity``)."""

    def __init__(
        self,
        json_text: Optional[str] = None,
        path: Optional[str] = None,
        global_sparsity: Optional[GlobalSparsity] = None,
    ) -> None:
        self.json_text = json_text
        self.path = path
        self.global_sparsity = global_sparsity

    def arguments(self) -> Dict[str, Any]:
        """The keyword arguments of the extension's ``prune`` that say what to do."""
        g = self.global_sparsity
        if g is None:
            return {"config_json": self.json_text, "config_path": self.path}
        return {
            "global_sparsity": g.sparsity,
            "weight_threshold": g.weight_threshold,
            "exclude": g.exclude,
        }


def config_source(config: Any) -> ConfigSource:
    if isinstance(config, GlobalSparsity):
        return ConfigSource(global_sparsity=config)
    if isinstance(config, (str, os.PathLike)):
        return ConfigSource(path=os.fspath(config))
    if isinstance(config, dict):
        return ConfigSource(json_text=_to_json(config, "config"))
    if all(hasattr(config, a) for a in ("global_config", "op_type_configs", "op_name_configs")):
        return ConfigSource(json_text=_to_json(_optimization_config_dict(config), "config"))
    raise ValueError(
        "config must be a coremltools.optimize.coreml.OptimizationConfig, a dict in "
        "OptimizationConfig.from_dict layout, a path to a JSON or YAML file, or "
        f"mlprune.GlobalSparsity; got {type(config).__name__}"
    )


def _optimization_config_dict(config: Any) -> Dict[str, Any]:
    if getattr(config, "_op_selector", None) is not None:
        raise ValueError(
            "config has an op_selector: a Python callable cannot be honoured by mlprune; "
            "name the ops in op_name_configs instead"
        )
    entries = [config.global_config]
    entries += list((config.op_type_configs or {}).values())
    entries += list((config.op_name_configs or {}).values())
    first = next((e for e in entries if e is not None), None)
    layout: Dict[str, Any] = {
        "config_type": type(first).__name__ if first is not None else "OpMagnitudePrunerConfig"
    }
    if config.global_config is not None:
        layout["global_config"] = _op_config_dict(config.global_config)
    for key in ("op_type_configs", "op_name_configs"):
        section = getattr(config, key) or {}
        layout[key] = {name: None if c is None else _op_config_dict(c) for name, c in section.items()}
    return layout


def _op_config_dict(op_config: Any) -> Dict[str, Any]:
    import attrs  # coremltools' config classes are attrs classes; attrs comes with coremltools

    fields = attrs.asdict(op_config, recurse=False)
    return {"config_type": type(op_config).__name__, **fields}


def _to_json(value: Any, what: str) -> str:
    def plain(v: Any) -> Any:
        # numpy scalars and arrays, as coremltools accepts them in configs
        if hasattr(v, "tolist"):
            return v.tolist()
        raise ValueError(f"{what}: {v!r} ({type(v).__name__}) cannot be passed to mlprune")

    try:
        return json.dumps(value, default=plain, allow_nan=True)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what}: {e}") from None
