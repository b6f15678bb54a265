import os
from typing import Any, Dict, List, Literal, Union

_Path = Union[str, os.PathLike[str]]
_Device = Literal["auto", "cpu", "gpu"]

__version__: str

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
