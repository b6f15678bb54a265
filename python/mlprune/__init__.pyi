import os
from typing import Any, Dict, Iterable, List, Literal, Optional, Union

_Path = Union[str, os.PathLike[str]]
_Device = Literal["auto", "cpu", "gpu"]

__version__: str

class GlobalSparsity:
    """One magnitude cut across the whole model (``mlprune prune --global-sparsity``)."""

    sparsity: str
    weight_threshold: Optional[int]
    exclude: List[str]
    def __init__(
        self,
        sparsity: Union[float, str],
        *,
        weight_threshold: Optional[int] = ...,
        exclude: Iterable[str] = ...,
    ) -> None: ...

class MlpruneError(Exception):
    """Bad input or a runtime failure; the message names the file and, where known, the tensor or
    offset."""

def prune_weights(
    mlmodel: Any,
    config: Any,
    joint_compression: bool = ...,
    *,
    device: _Device = ...,
    progress: bool = ...,
) -> Any: ...
def prune(
    src: _Path,
    dst: _Path,
    config: Any,
    *,
    joint_compression: bool = ...,
    device: _Device = ...,
    force: bool = ...,
    progress: bool = ...,
) -> List[Dict[str, Any]]: ...
def inspect(path: _Path) -> Dict[str, Any]: ...
