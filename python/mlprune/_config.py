"""Configs in every form users hold them, turned into what the Rust core reads.

The core reads coremltools' ``OptimizationConfig.from_dict`` layout, as JSON text, or a JSON or YAML
file. A ``coremltools.optimize.coreml.OptimizationConfig`` is written out in that layout: each op
config as its class name (``config_type``) and its fields, ``None`` entries kept (they skip ops).
The core validates the result exactly as coremltools would.
"""

import json
import os
from typing import Any, Dict, Optional, Tuple

# (config_json, config_path): exactly one is set.
ConfigSource = Tuple[Optional[str], Optional[str]]


def config_source(config: Any) -> ConfigSource:
    if isinstance(config, (str, os.PathLike)):
        return None, os.fspath(config)
    if isinstance(config, dict):
        return _to_json(config, "config"), None
    if all(hasattr(config, a) for a in ("global_config", "op_type_configs", "op_name_configs")):
        return _to_json(_optimization_config_dict(config), "config"), None
    raise ValueError(
        "config must be a coremltools.optimize.coreml.OptimizationConfig, a dict in "
        f"OptimizationConfig.from_dict layout, or a path to a JSON or YAML file; got {type(config).__name__}"
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
