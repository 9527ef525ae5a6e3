"""``MLP``: the parameters of the network, their initialisation, prediction and model files.

Model file format (``.npz``, written by ``MLP.save``, read by ``MLP.load``, no pickle):

    W1, b1, W2, b2, ... each layer's weights (n_k, n_{k-1}) and biases, in the model's dtype
    sizes               int64 (n_in, n_1, ..., n_L, n_out): one width per hidden layer
    activation          str, the hidden activation
    loss                str, the loss the model was last trained with ("ce" or "mse")
    format_version      int, currently 2
    fastmlp_version     str, the version that wrote the file

Version 1 (fastmlp 0.2) held Wh, bh, Wy, by and a tanh hidden layer; it still loads.
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
from . import tables
from ._typing import Inputs, PathLike
from ._validation import check_choice, check_nonnegative_int, check_positive_int, check_X
from ._version import __version__
from .network import Network

if TYPE_CHECKING:
    import torch

__all__ = [
    "MLP",
    "FORMAT_VERSION",
]

FORMAT_VERSION = 2

# Rows per forward chunk in predict: bounds memory for large inputs.
_PREDICT_CHUNK = 8192


class MLP:
    """Multilayer perceptron: ``H = f(X Wh^T + bh)``, ``y^ = g(H Wy^T + by)``
    with one hidden layer, g the output of the loss (softmax by default);
    ``H_k = f(H_{k-1} W_k^T + b_k)`` for each of several.

    Parameters
    ----------
    n_in, n_out : int
        Input features; outputs: classes (n_out >= 2) for the losses over class
        labels ("ce", "mse"), else one per label or target value (n_out >= 1).
    n_hidden : int or tuple of int
        Hidden units: an int for one hidden layer, a tuple of widths for one or
        more (``(256, 128)``: two hidden layers, scikit-learn's ``hidden_layer_sizes``).
    activation : str
        The hidden activation f (``fastmlp.tables.ACTIVATIONS``); "tanh", the
        practical's, by default.
    dtype : float32 or float64
        The dtype of the parameters and of the arithmetic of every backend.
    init : {"xavier", "normal"}
        "xavier": Glorot uniform weights, zero biases (the default).
        "normal": every parameter ~ N(0, 0.3^2), the practical's scheme.
    seed : int
        Seed of the initialisation.
    loss : str
        The output and its loss (``fastmlp.tables.LOSSES``), which ``predict``
        follows; ``fastmlp.train`` sets the one it trains with.

    The parameters live in one cache-line-aligned block (``fastmlp.network``);
    ``coefs`` and ``intercepts`` are its per-layer views, in scikit-learn's order
    (but out by in, as ``torch.nn.Linear``). With one hidden layer ``Wh``
    (n_hidden, n_in), ``bh`` (n_hidden,), ``Wy`` (n_out, n_hidden) and ``by``
    (n_out,) name the same views; assigning one copies the value into the block
    after checking its shape.

    Examples
    --------
    >>> model = fastmlp.MLP(2, 10, 2, seed=0)
    >>> model
    MLP(n_in=2, n_hidden=10, n_out=2, dtype=float32)
    >>> model.Wh.shape, model.Wy.shape
    ((10, 2), (2, 10))
    >>> model.coefs[0] is model.Wh
    True
    >>> model.predict_proba([[0.0, 0.5]]).sum()
    np.float32(1.0)
    >>> fastmlp.MLP(2, 10, 2, activation="relu")
    MLP(n_in=2, n_hidden=10, n_out=2, activation='relu', dtype=float32)
    >>> model.Wh = np.zeros((3, 2))
    Traceback (most recent call last):
    ...
    ValueError: Wh must have shape (10, 2), got (3, 2)
    >>> deep = fastmlp.MLP(784, (256, 128), 10, activation="relu")
    >>> deep
    MLP(n_in=784, n_hidden=(256, 128), n_out=10, activation='relu', dtype=float32)
    >>> [W.shape for W in deep.coefs]
    [(256, 784), (128, 256), (10, 128)]
    """

    def __init__(
        self,
        n_in: int,
        n_hidden: int | tuple[int, ...],
        n_out: int,
        dtype: npt.DTypeLike = np.float32,
        init: str = "xavier",
        seed: int = 0,
        activation: str = "tanh",
        loss: str = "ce",
    ) -> None:
        network = Network((n_in, *_widths(n_hidden), n_out), activation=activation, loss=loss, dtype=dtype)
        check_choice(init, "init", ref.INITS)
        seed = check_nonnegative_int(seed, "seed")
        self._use(network)
        for name, value in ref.init_params(n_in, network.hidden, n_out, init, network.dtype, seed).items():
            self._params[name][...] = value

    def _use(self, network, block=None):
        """Take ``network`` and its parameter block (a new zeroed one by default)."""
        self._network = network
        self._block = network.block() if block is None else block
        self._params = network.named(self._block)
        self._training = threading.Lock()

    # ---- shape and parameters ----

    network = property(lambda self: self._network, doc="The network's description (``fastmlp.network.Network``).")
    n_in = property(lambda self: self._network.n_in, doc="Number of input features.")
    hidden = property(lambda self: self._network.hidden, doc="The widths of the hidden layers, a tuple.")
    n_hidden = property(
        lambda self: self.hidden[0] if len(self.hidden) == 1 else self.hidden,
        doc="Hidden units: an int for one hidden layer, the tuple of widths for several.",
    )
    n_out = property(lambda self: self._network.n_out, doc="Number of classes.")
    dtype = property(lambda self: self._network.dtype, doc="The parameters' dtype.")
    activation = property(lambda self: self._network.activation, doc="The hidden activation.")

    @property
    def loss(self) -> str:
        """The loss the model was last trained with ("ce" unless trained otherwise)."""
        return self._network.loss

    @loss.setter
    def loss(self, name):
        self._network = self._network.replace(loss=name)

    @property
    def coefs(self) -> list[np.ndarray]:
        """Each layer's weights (n_k, n_{k-1}): views into the parameter block."""
        return list(self._block.coefs)

    @property
    def intercepts(self) -> list[np.ndarray]:
        """Each layer's biases (n_k,): views into the parameter block."""
        return list(self._block.intercepts)

    def _set(self, name, value):
        arr = np.asarray(value)
        target = self._param(name)
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
        if arr.shape != target.shape:
            raise ValueError(f"{name} must have shape {target.shape}, got {arr.shape}")
        target[...] = arr

    def _param(self, name):
        """The view ``name`` of the parameter block (Wh, bh, Wy and by exist with one
        hidden layer only)."""
        if name not in self._params:
            raise AttributeError(
                f"{name} names a parameter of a network with one hidden layer; this one has {len(self.hidden)}: "
                f"use coefs and intercepts, or params[{self._network.param_names()[0]!r}], ..."
            )
        return self._params[name]

    Wh = property(
        lambda self: self._param("Wh"), lambda self, v: self._set("Wh", v), doc="Hidden weights, (n_hidden, n_in)."
    )
    bh = property(lambda self: self._param("bh"), lambda self, v: self._set("bh", v), doc="Hidden biases, (n_hidden,).")
    Wy = property(
        lambda self: self._param("Wy"),
        lambda self, v: self._set("Wy", v),
        doc="Output weights, (n_out, n_hidden).",
    )
    by = property(lambda self: self._param("by"), lambda self, v: self._set("by", v), doc="Output biases, (n_out,).")

    @property
    def params(self) -> dict[str, np.ndarray]:
        """The live parameter arrays by name: ``{"Wh", "bh", "Wy", "by"}`` with one
        hidden layer, ``{"W1", "b1", ..., "W_{L+1}", "b_{L+1}"}`` with L."""
        return dict(self._params)

    def copy(self) -> MLP:
        """An independent copy of the model."""
        other = object.__new__(MLP)
        other.__setstate__(self.__getstate__())
        return other

    def __getstate__(self):
        return {"network": self._network, "params": {k: v.copy() for k, v in self._params.items()}}

    def __setstate__(self, state):
        if "network" not in state:  # pickled by fastmlp 0.2: a tanh network
            wh, wy = state["_params"]["Wh"], state["_params"]["Wy"]
            net = Network((wh.shape[1], wh.shape[0], wy.shape[0]), "tanh", state.get("loss", "ce"), wh.dtype)
            state = {"network": net, "params": state["_params"]}
        self._use(state["network"])
        for name, value in state["params"].items():
            self._params[name][...] = value

    def __repr__(self):
        act = "" if self.activation == "tanh" else f", activation={self.activation!r}"
        loss = "" if self.loss == "ce" else f", loss={self.loss!r}"
        return (
            f"MLP(n_in={self.n_in}, n_hidden={self.n_hidden!r}, n_out={self.n_out}{act}{loss}, dtype={self.dtype.name})"
        )

    # ---- prediction ----

    def logits(self, X: Inputs) -> np.ndarray:
        """The logits ``Z = f(X Wh^T + bh) Wy^T + by``, (n_samples, n_out)."""
        return self._logits(check_X(X, "X", self.n_in, self.dtype))

    def _logits(self, X):
        # X already checked: C-contiguous, the model's dtype, n_in columns
        out = np.empty((X.shape[0], self.n_out), dtype=self.dtype)
        for start in range(0, X.shape[0], _PREDICT_CHUNK):
            rows = slice(start, start + _PREDICT_CHUNK)
            out[rows] = ref.forward(self._params, X[rows], self.activation).Z
        return out

    def predict_proba(self, X: Inputs) -> np.ndarray:
        """Probabilities, (n_samples, n_out): of each class, ``softmax(Z)``, for the
        losses "ce" and "mse"; of each output being 1, ``logistic(Z)``, for "bce".
        A model of a regression loss has none (``predict`` gives its values)."""
        row = tables.loss(self.loss)
        if not row.classifies:
            raise ValueError(f"a model of loss {self.loss!r} predicts values, not probabilities: use predict")
        return row.output(self.logits(X))

    def predict(self, X: Inputs) -> np.ndarray:
        """What the model's loss predicts: for "ce" and "mse" the most probable class
        of each row (the first on ties), (n_samples,); for "bce" 1 where an output's
        probability exceeds 1/2, else 0, (n_samples, n_out) integers; for
        "squared_error" the outputs Z and for "poisson" the means exp(Z),
        (n_samples, n_out)."""
        Z = self.logits(X)
        row = tables.loss(self.loss)
        if row.targets == "labels":
            return Z.argmax(axis=1)
        if row.classifies:
            return (Z > 0).astype(np.intp)
        return row.output(Z)

    # ---- PyTorch (optional: pip install fastmlp[bench] or any torch) ----

    def to_torch(self) -> torch.nn.Sequential:
        """``torch.nn.Sequential(Linear(n_in, n_hidden), f, Linear(n_hidden, n_out))``
        (a Linear and an f per hidden layer, then the output Linear) holding copies
        of these weights, in the model's dtype; f is the activation's module
        (``Tanh``, ``ReLU``, ``Sigmoid`` or ``Identity``)."""
        import torch

        dtype = torch.float32 if self.dtype == np.float32 else torch.float64
        act = getattr(torch.nn, tables.activation(self.activation).torch)
        modules = []
        for n_in, n_out in zip(self._network.sizes[:-1], self._network.sizes[1:], strict=True):
            modules += [torch.nn.Linear(n_in, n_out, dtype=dtype), act()]
        seq = torch.nn.Sequential(*modules[:-1])
        with torch.no_grad():
            for param, name in zip(seq.parameters(), self._network.param_names(), strict=True):
                param.copy_(torch.from_numpy(self._params[name]))
        return seq

    @classmethod
    def from_torch(cls, seq: torch.nn.Sequential) -> MLP:
        """A model with the weights of ``Sequential(Linear, f, Linear)`` or of any
        ``Sequential(Linear, f, Linear, f, ..., Linear)`` (copied): Linear layers with
        biases whose sizes chain, between each two the same activation module f
        (``Tanh``, ``ReLU``, ``Sigmoid`` or ``Identity``)."""
        import torch

        by_module = {getattr(torch.nn, a.torch): a.name for a in tables.ACTIVATIONS.values()}
        layers = list(seq) if isinstance(seq, torch.nn.Sequential) else []
        linears, acts = layers[0::2], layers[1::2]
        if (
            len(layers) < 3
            or len(layers) % 2 == 0
            or not all(isinstance(m, torch.nn.Linear) and m.bias is not None for m in linears)
            or len({type(m) for m in acts}) != 1
            or type(acts[0]) not in by_module
            or any(a.out_features != b.in_features for a, b in zip(linears[:-1], linears[1:], strict=True))
        ):
            modules = ", ".join(f"{m.__name__}()" for m in by_module)
            raise ValueError(
                "seq must be torch.nn.Sequential(Linear(n_in, n_1), f, ..., Linear(n_L, n_out)): Linear layers with "
                f"biases whose sizes chain, between each two the same f, one of {modules}; got {seq!r}"
            )
        weights = [p.detach().cpu().numpy() for p in seq.parameters()]
        dtype = weights[0].dtype if weights[0].dtype in (np.float32, np.float64) else np.float32
        model = cls(
            linears[0].in_features,
            tuple(m.out_features for m in linears[:-1]),
            linears[-1].out_features,
            dtype=dtype,
            activation=by_module[type(acts[0])],
        )
        for name, value in zip(model._network.param_names(), weights, strict=True):
            model._set(name, value)
        return model

    # ---- model files ----

    def save(self, path: PathLike) -> None:
        """Write the model to ``path`` (.npz, see the module docstring), atomically."""
        _atomic_savez(path, **self._file_arrays())

    def _file_arrays(self):
        net = self._network
        layers = dict(zip(net.numbered_names(), self._params.values(), strict=True))
        return dict(
            format_version=np.int64(FORMAT_VERSION),
            fastmlp_version=np.str_(__version__),
            sizes=np.asarray(net.sizes, dtype=np.int64),
            activation=np.str_(net.activation),
            loss=np.str_(net.loss),
            **layers,
        )

    @classmethod
    def load(cls, path: PathLike) -> MLP:
        """Read a model written by ``save`` (by this fastmlp or by 0.2); rejects
        truncated, corrupt or foreign files."""
        return cls._from_arrays(_read_npz(path, "model"), os.fspath(path))

    @classmethod
    def _from_arrays(cls, data, path):
        if "format_version" not in data:
            raise ValueError(f"{path!r} is not a fastmlp model file: missing ['format_version']")
        version = int(data["format_version"])
        if version == 1:
            names, sizes_of = ("Wh", "bh", "Wy", "by"), None
            activation = "tanh"
        elif version == FORMAT_VERSION:
            if "sizes" not in data:
                raise ValueError(f"{path!r} is not a fastmlp model file: missing ['sizes']")
            n_layers = max(2, np.asarray(data["sizes"]).size - 1)
            names, sizes_of = Network((1,) * n_layers + (2,)).numbered_names(), "sizes"
            activation = str(data["activation"]) if "activation" in data else None
        else:
            raise ValueError(
                f"{path!r} has model format version {version}; this fastmlp reads versions 1 and {FORMAT_VERSION}"
            )
        missing = set(names + (("activation",) if sizes_of else ())) - set(data)
        if missing:
            raise ValueError(f"{path!r} is not a fastmlp model file: missing {sorted(missing)}")
        values = [data[k] for k in names]
        Ws, bs = values[0::2], values[1::2]
        if not all(
            W.ndim == 2 and b.shape == W.shape[:1] and (k == 0 or W.shape[1] == Ws[k - 1].shape[0])
            for k, (W, b) in enumerate(zip(Ws, bs, strict=True))
        ):
            shapes = ", ".join(f"{name} {a.shape}" for name, a in zip(names, values, strict=True))
            raise ValueError(f"{path!r} has inconsistent parameter shapes: {shapes}")
        sizes = (Ws[0].shape[1], *(W.shape[0] for W in Ws))
        if sizes_of and tuple(np.asarray(data[sizes_of]).tolist()) != sizes:
            raise ValueError(f"{path!r} records sizes {data[sizes_of].tolist()} but holds weights of sizes {sizes}")
        dtypes = {a.dtype for a in values}
        if len(dtypes) != 1 or dtypes.pop() not in (np.float32, np.float64):
            raise ValueError(f"{path!r} parameters must all be float32 or all float64")
        if activation not in tables.ACTIVATIONS:
            raise ValueError(
                f"{path!r} names an unknown activation {activation!r}; expected one of {tuple(tables.ACTIVATIONS)}"
            )
        loss = str(data["loss"]) if "loss" in data else "ce"
        if loss not in tables.LOSSES:
            raise ValueError(f"{path!r} names an unknown loss {loss!r}; expected one of {tuple(tables.LOSSES)}")
        model = cls(sizes[0], sizes[1:-1], sizes[-1], dtype=Ws[0].dtype, activation=activation, loss=loss)
        for name, value in zip(model._network.param_names(), values, strict=True):
            model._set(name, value)
        return model


def _widths(n_hidden):
    """The hidden layers' widths from ``n_hidden``: an int (one layer) or a sequence."""
    if isinstance(n_hidden, (str, bytes)) or np.ndim(n_hidden) > 1:
        raise TypeError(f"n_hidden must be an int or a tuple of ints, got {n_hidden!r}")
    if np.ndim(n_hidden) == 0:
        return (check_positive_int(n_hidden, "n_hidden"),)
    widths = tuple(check_positive_int(n, f"n_hidden[{k}]") for k, n in enumerate(n_hidden))
    if not widths:
        raise ValueError("n_hidden must name at least one hidden layer, got ()")
    return widths


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
