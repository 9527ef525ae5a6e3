"""``MLP``: the parameters of the network, their initialisation, prediction and model files.

Model file format (``.npz``, written by ``MLP.save``, read by ``MLP.load``, no pickle):

    Wh, bh, Wy, by      the parameters, in the model's dtype
    format_version      int, currently 1
    fastmlp_version     str, the version that wrote the file
    loss                str, the loss the model was last trained with ("ce" or "mse")

Writes are atomic: a temporary file in the same directory, flushed and fsynced,
then renamed over the target, so a failed or interrupted save leaves the
previous file intact.
"""

from __future__ import annotations

import os
import tempfile
import threading
import zipfile
from collections.abc import Callable
from typing import IO, TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from . import reference as ref
from ._typing import Inputs, PathLike
from ._validation import check_choice, check_dtype, check_nonnegative_int, check_positive_int, check_X
from ._version import __version__

if TYPE_CHECKING:
    import torch

__all__ = [
    "MLP",
    "FORMAT_VERSION",
]

FORMAT_VERSION = 1

# Rows per forward chunk in predict: bounds memory for large inputs.
_PREDICT_CHUNK = 8192


class MLP:
    """One-hidden-layer network: ``H = tanh(X Wh^T + bh)``, ``y^ = softmax(H Wy^T + by)``.

    Parameters
    ----------
    n_in, n_hidden, n_out : int
        Input features, hidden units, classes (n_out >= 2).
    dtype : float32 or float64
        The dtype of the parameters and of the arithmetic of every backend.
    init : {"xavier", "normal"}
        "xavier": Glorot uniform weights, zero biases (the default).
        "normal": every parameter ~ N(0, 0.3^2), the practical's scheme.
    seed : int
        Seed of the initialisation.

    The parameters ``Wh`` (n_hidden, n_in), ``bh`` (n_hidden,), ``Wy`` (n_out, n_hidden)
    and ``by`` (n_out,) are plain NumPy arrays. Assigning one copies the value into a
    C-contiguous array of the model's dtype after checking its shape.

    Examples
    --------
    >>> model = fastmlp.MLP(2, 10, 2, seed=0)
    >>> model
    MLP(n_in=2, n_hidden=10, n_out=2, dtype=float32)
    >>> model.Wh.shape, model.Wy.shape
    ((10, 2), (2, 10))
    >>> model.predict_proba([[0.0, 0.5]]).sum()
    np.float32(1.0)
    >>> model.Wh = np.zeros((3, 2))
    Traceback (most recent call last):
    ...
    ValueError: Wh must have shape (10, 2), got (3, 2)
    """

    def __init__(
        self,
        n_in: int,
        n_hidden: int,
        n_out: int,
        dtype: npt.DTypeLike = np.float32,
        init: str = "xavier",
        seed: int = 0,
    ) -> None:
        self._n_in = check_positive_int(n_in, "n_in")
        self._n_hidden = check_positive_int(n_hidden, "n_hidden")
        self._n_out = check_positive_int(n_out, "n_out")
        if self._n_out < 2:
            raise ValueError(f"n_out must be at least 2 (classes), got {n_out!r}")
        self._dtype = check_dtype(dtype)
        check_choice(init, "init", ref.INITS)
        seed = check_nonnegative_int(seed, "seed")
        self.loss = "ce"
        self._training = threading.Lock()
        self._params = ref.init_params(self._n_in, self._n_hidden, self._n_out, init, self._dtype, seed)

    # ---- shape and parameters ----

    n_in = property(lambda self: self._n_in, doc="Number of input features.")
    n_hidden = property(lambda self: self._n_hidden, doc="Number of hidden units.")
    n_out = property(lambda self: self._n_out, doc="Number of classes.")
    dtype = property(lambda self: self._dtype, doc="The parameters' dtype.")

    def _shape_of(self, name):
        return {
            "Wh": (self._n_hidden, self._n_in),
            "bh": (self._n_hidden,),
            "Wy": (self._n_out, self._n_hidden),
            "by": (self._n_out,),
        }[name]

    def _set(self, name, value):
        arr = np.asarray(value)
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
        if arr.shape != self._shape_of(name):
            raise ValueError(f"{name} must have shape {self._shape_of(name)}, got {arr.shape}")
        self._params[name] = np.array(arr, dtype=self._dtype, order="C", copy=True)

    Wh = property(
        lambda self: self._params["Wh"], lambda self, v: self._set("Wh", v), doc="Hidden weights, (n_hidden, n_in)."
    )
    bh = property(
        lambda self: self._params["bh"], lambda self, v: self._set("bh", v), doc="Hidden biases, (n_hidden,)."
    )
    Wy = property(
        lambda self: self._params["Wy"], lambda self, v: self._set("Wy", v), doc="Output weights, (n_out, n_hidden)."
    )
    by = property(lambda self: self._params["by"], lambda self, v: self._set("by", v), doc="Output biases, (n_out,).")

    @property
    def params(self) -> dict[str, np.ndarray]:
        """The live parameter arrays, ``{"Wh", "bh", "Wy", "by"}``."""
        return dict(self._params)

    def copy(self) -> MLP:
        """An independent copy of the model."""
        other = object.__new__(MLP)
        other.__setstate__(self.__getstate__())
        return other

    def __getstate__(self):
        state = dict(self.__dict__)
        del state["_training"]
        state["_params"] = {k: v.copy() for k, v in self._params.items()}
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._training = threading.Lock()

    def __repr__(self):
        return f"MLP(n_in={self._n_in}, n_hidden={self._n_hidden}, n_out={self._n_out}, dtype={self._dtype.name})"

    # ---- prediction ----

    def logits(self, X: Inputs) -> np.ndarray:
        """The logits ``Z = tanh(X Wh^T + bh) Wy^T + by``, (n_samples, n_out)."""
        return self._logits(check_X(X, "X", self._n_in, self._dtype))

    def _logits(self, X):
        # X already checked: C-contiguous, the model's dtype, n_in columns
        out = np.empty((X.shape[0], self._n_out), dtype=self._dtype)
        for start in range(0, X.shape[0], _PREDICT_CHUNK):
            rows = slice(start, start + _PREDICT_CHUNK)
            out[rows] = ref.forward(self._params, X[rows]).Z
        return out

    def predict_proba(self, X: Inputs) -> np.ndarray:
        """Class probabilities ``softmax(Z)``, (n_samples, n_out)."""
        return ref.softmax(self.logits(X))

    def predict(self, X: Inputs) -> np.ndarray:
        """The most probable class of each row (the first on ties), (n_samples,)."""
        return self.logits(X).argmax(axis=1)

    # ---- PyTorch (optional: pip install fastmlp[bench] or any torch) ----

    def to_torch(self) -> torch.nn.Sequential:
        """``torch.nn.Sequential(Linear(n_in, n_hidden), Tanh(), Linear(n_hidden, n_out))``
        holding copies of these weights, in the model's dtype."""
        import torch

        dtype = torch.float32 if self._dtype == np.float32 else torch.float64
        seq = torch.nn.Sequential(
            torch.nn.Linear(self._n_in, self._n_hidden, dtype=dtype),
            torch.nn.Tanh(),
            torch.nn.Linear(self._n_hidden, self._n_out, dtype=dtype),
        )
        with torch.no_grad():
            for param, name in zip(seq.parameters(), ref.PARAM_NAMES, strict=True):
                param.copy_(torch.from_numpy(self._params[name]))
        return seq

    @classmethod
    def from_torch(cls, seq: torch.nn.Sequential) -> MLP:
        """A model with the weights of ``Sequential(Linear, Tanh, Linear)`` (copied)."""
        import torch

        layers = list(seq) if isinstance(seq, torch.nn.Sequential) else None
        if (
            layers is None
            or len(layers) != 3
            or not isinstance(layers[0], torch.nn.Linear)
            or not isinstance(layers[1], torch.nn.Tanh)
            or not isinstance(layers[2], torch.nn.Linear)
            or layers[0].bias is None
            or layers[2].bias is None
            or layers[0].out_features != layers[2].in_features
        ):
            raise ValueError(
                "seq must be torch.nn.Sequential(Linear(n_in, n_hidden), Tanh(), "
                f"Linear(n_hidden, n_out)) with biases, got {seq!r}"
            )
        weights = [p.detach().cpu().numpy() for p in seq.parameters()]
        dtype = weights[0].dtype if weights[0].dtype in (np.float32, np.float64) else np.float32
        model = cls(layers[0].in_features, layers[0].out_features, layers[2].out_features, dtype=dtype)
        for name, value in zip(ref.PARAM_NAMES, weights, strict=True):
            model._set(name, value)
        return model

    # ---- model files ----

    def save(self, path: PathLike) -> None:
        """Write the model to ``path`` (.npz, see the module docstring), atomically."""
        _atomic_savez(path, **self._file_arrays())

    def _file_arrays(self):
        return dict(
            format_version=np.int64(FORMAT_VERSION),
            fastmlp_version=np.str_(__version__),
            loss=np.str_(self.loss),
            **self._params,
        )

    @classmethod
    def load(cls, path: PathLike) -> MLP:
        """Read a model written by ``save``; rejects truncated, corrupt or foreign files."""
        return cls._from_arrays(_read_npz(path, "model"), os.fspath(path))

    @classmethod
    def _from_arrays(cls, data, path):
        missing = {"format_version", "Wh", "bh", "Wy", "by"} - set(data)
        if missing:
            raise ValueError(f"{path!r} is not a fastmlp model file: missing {sorted(missing)}")
        version = int(data["format_version"])
        if version != FORMAT_VERSION:
            raise ValueError(
                f"{path!r} has model format version {version}; this fastmlp reads version {FORMAT_VERSION}"
            )
        Wh, bh, Wy, by = (data[k] for k in ref.PARAM_NAMES)
        if (
            Wh.ndim != 2
            or Wy.ndim != 2
            or bh.shape != Wh.shape[:1]
            or Wy.shape[1:] != Wh.shape[:1]
            or by.shape != Wy.shape[:1]
        ):
            raise ValueError(
                f"{path!r} has inconsistent parameter shapes: Wh {Wh.shape}, bh {bh.shape}, "
                f"Wy {Wy.shape}, by {by.shape}"
            )
        dtypes = {a.dtype for a in (Wh, bh, Wy, by)}
        if len(dtypes) != 1 or dtypes.pop() not in (np.float32, np.float64):
            raise ValueError(f"{path!r} parameters must all be float32 or all float64")
        model = cls(Wh.shape[1], Wh.shape[0], Wy.shape[0], dtype=Wh.dtype)
        for name, value in zip(ref.PARAM_NAMES, (Wh, bh, Wy, by), strict=True):
            model._set(name, value)
        if "loss" in data:
            model.loss = str(data["loss"])
            if model.loss not in ref.LOSSES:
                raise ValueError(f"{path!r} names an unknown loss {model.loss!r}; expected one of {ref.LOSSES}")
        return model


def _atomic_write(path: PathLike, write: Callable[[IO[bytes]], object]) -> None:
    """Call ``write(file)`` on a temporary file in the directory of ``path``, fsync
    it and rename it over ``path``: readers see the old file or the new one, never
    a partial one, and a failed write leaves the old file as it was."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".fastmlp-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _atomic_savez(path: PathLike, **arrays: np.ndarray) -> None:
    """``np.savez`` to ``path`` through :func:`_atomic_write`."""
    _atomic_write(path, lambda fh: np.savez(fh, **arrays))


def _read_npz(path, what):
    """All arrays of an .npz file, no pickle; a clear ValueError for anything unreadable."""
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path!r} is not a readable fastmlp {what} file: {exc}") from exc
