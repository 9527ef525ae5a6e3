"""Type aliases of the public API (annotations only; nothing here runs at import)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Union

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import scipy.sparse

#: Inputs a model takes: an array-like of shape (n_samples, n_in), or a scipy.sparse matrix or array.
Inputs = Union[npt.ArrayLike, "scipy.sparse.spmatrix", "scipy.sparse.sparray"]
#: Targets: integer class labels (n_samples,) or one-hot rows (n_samples, n_out).
Targets = npt.ArrayLike
#: The parameters by name: "Wh", "bh", "Wy", "by".
Params = Mapping[str, np.ndarray]
#: A file system path.
PathLike = Union[str, "os.PathLike[str]"]
#: An epoch -> learning rate function.
Schedule = Callable[[int], float]

__all__ = ["Inputs", "Params", "PathLike", "Schedule", "Targets"]
