"""mlprune: coremltools' ``prune_weights``, with the same result, fast.

``prune_weights`` is a drop-in for ``coremltools.optimize.coreml.prune_weights``; ``prune`` and
``inspect`` work on paths and need no coremltools. The work is done by the ``mlprune`` Rust crate,
the same code as the ``mlprune`` command line (also installed with this package).
"""

from ._mlprune import MlpruneError, __version__
from ._api import inspect, prune, prune_weights
from ._config import GlobalSparsity

__all__ = ["GlobalSparsity", "MlpruneError", "__version__", "inspect", "prune", "prune_weights"]
