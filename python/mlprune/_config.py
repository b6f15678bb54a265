"""Configs in every form users hold them, turned into what the Rust core reads.

The core reads coremltools' ``OptimizationConfig.from_dict`` layout, as the dict's own values (not
JSON text, which turns a key ``None`` into ``"null"`` and cannot say ``float("inf")``), or a JSON or
YAML file. A ``coremltools.optimize.coreml.OptimizationConfig`` is written out in that layout: each
op config as its class name (``config_type``) and its fields, ``None`` entries kept (they skip ops).
The core validates the result exactly as coremltools would.
"""

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
        if weight_threshold is not None and (
            isinstance(weight_threshold, bool)
            or not isinstance(weight_threshold, int)
            or not 0 <= weight_threshold < 2**64
        ):
            # as the CLI's --weight-threshold: a count of elements
            raise ValueError(
                f"weight_threshold must be a whole number from 0 to 2**64 - 1, got {weight_threshold!r}"
            )
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
        layout: Optional[Dict[Any, Any]] = None,
        path: Optional[str] = None,
        global_sparsity: Optional[GlobalSparsity] = None,
    ) -> None:
        self.layout = layout
        self.path = path
        self.global_sparsity = global_sparsity

    def arguments(self) -> Dict[str, Any]:
        """The keyword arguments of the extension's ``prune`` that say what to do."""
        g = self.global_sparsity
        if g is None:
            return {"config_dict": self.layout, "config_path": self.path}
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
        return ConfigSource(layout=config)
    if all(hasattr(config, a) for a in ("global_config", "op_type_configs", "op_name_configs")):
        return ConfigSource(layout=_optimization_config_dict(config))
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

    name = type(op_config).__name__
    if name not in ("OpMagnitudePrunerConfig", "OpThresholdPrunerConfig"):
        # Refused by its class, as coremltools' prune_weights refuses it, whatever its fields
        # hold (a quantizer's dtype is a class, which no config value can be).
        return {"config_type": name}
    fields = attrs.asdict(op_config, recurse=False)
    return {"config_type": name, **fields}
