"""The description of a network that the model, its files, the kernel driver and
every backend share, and its parameters as one aligned block.

A ``Network`` is the layer sizes ``(n_in, n_1, ..., n_L, n_out)``: the inputs,
one width per hidden layer (one or more) and the classes; the hidden activation
(the same for every hidden layer, as scikit-learn's), the loss with its output,
and the dtype. Its parameters live in one cache-line-aligned array; each layer's weights
``W_k`` (n_k, n_{k-1}) (out by in, as ``torch.nn.Linear``) and biases ``b_k``
(n_k,) are views into it, each starting on a cache line. Optimizer state (the
velocities of momentum) is a block of the same layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from . import tables
from ._validation import check_dtype, check_positive_int
from .reference import param_names

__all__ = [
    "CACHE_LINE",
    "Network",
    "Block",
    "aligned_zeros",
]

CACHE_LINE = 64  # bytes


def aligned_zeros(shape, dtype):
    """A zero-filled C-contiguous array whose data starts on a cache-line boundary.

    With the hidden dimension padded to whole cache lines and the rows aligned as
    well, every vector load and store of a row stays inside one cache line.
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.zeros(nbytes + CACHE_LINE, np.uint8)
    skip = -raw.ctypes.data % CACHE_LINE
    return raw[skip : skip + nbytes].view(dtype).reshape(shape)


class Block(NamedTuple):
    """Parameters (or optimizer state) in a network's layout: ``data``, the one
    aligned array, and per layer the views ``coefs[k]`` (n_k, n_{k-1}) and
    ``intercepts[k]`` (n_k,)."""

    data: np.ndarray
    coefs: list[np.ndarray]
    intercepts: list[np.ndarray]


@dataclass(frozen=True)
class Network:
    """Layer sizes, hidden activation, loss and dtype of a multilayer perceptron.

    ``sizes`` is ``(n_in, n_hidden, n_out)`` for one hidden layer and
    ``(n_in, n_1, ..., n_L, n_out)`` for L; ``activation`` a name of
    ``fastmlp.tables.ACTIVATIONS``, ``loss`` one of ``fastmlp.tables.LOSSES``.
    Construction checks every field and names the one that is wrong.

    Examples
    --------
    >>> net = Network((784, 100, 10), activation="relu")
    >>> net.n_layers, net.layer_shapes()
    (2, [(100, 784), (10, 100)])
    >>> net.param_names()
    ('Wh', 'bh', 'Wy', 'by')
    >>> deep = Network((784, 256, 128, 10), activation="relu")
    >>> deep.hidden, deep.param_names()
    ((256, 128), ('W1', 'b1', 'W2', 'b2', 'W3', 'b3'))
    """

    sizes: tuple[int, ...]
    activation: str = "tanh"
    loss: str = "ce"
    dtype: np.dtype = np.dtype(np.float32)

    def __post_init__(self):
        sizes = tuple(self.sizes)
        if len(sizes) < 3:
            raise ValueError(f"sizes must be (n_in, n_1, ..., n_out) with one hidden layer or more, got {self.sizes!r}")
        names = ("n_in",) + tuple(f"hidden[{k}]" for k in range(len(sizes) - 2)) + ("n_out",)
        sizes = tuple(check_positive_int(n, name) for n, name in zip(sizes, names, strict=True))
        tables.activation(self.activation)
        if tables.loss(self.loss).targets == "labels" and sizes[-1] < 2:
            raise ValueError(f"n_out must be at least 2 (classes) for loss {self.loss!r}, got {sizes[-1]!r}")
        object.__setattr__(self, "sizes", sizes)
        object.__setattr__(self, "dtype", check_dtype(self.dtype))

    @property
    def n_in(self) -> int:
        return self.sizes[0]

    @property
    def n_out(self) -> int:
        return self.sizes[-1]

    @property
    def hidden(self) -> tuple[int, ...]:
        """The widths of the hidden layers."""
        return self.sizes[1:-1]

    @property
    def n_layers(self) -> int:
        """Layers of weights: one more than the hidden layers."""
        return len(self.sizes) - 1

    def layer_shapes(self) -> list[tuple[int, int]]:
        """The shape of each layer's weights, (n_k, n_{k-1})."""
        return [(n, m) for m, n in zip(self.sizes[:-1], self.sizes[1:], strict=True)]

    @property
    def deep(self) -> bool:
        """Whether the network has more than one hidden layer."""
        return len(self.sizes) > 3

    def param_names(self) -> tuple[str, ...]:
        """The parameters' names, weights then biases per layer: the practical's
        ``("Wh", "bh", "Wy", "by")`` for one hidden layer, ``numbered_names`` for more."""
        return param_names(self.n_layers)

    def numbered_names(self) -> tuple[str, ...]:
        """The same parameters by layer number, ``("W1", "b1", "W2", "b2", ...)``, as
        model files and checkpoints store them."""
        return tuple(f"{p}{k}" for k in range(1, self.n_layers + 1) for p in "Wb")

    def _offsets(self):
        """(start, shape) of each parameter in the block, in ``param_names`` order,
        each start on a cache line; and the block's length, in elements."""
        per_line = CACHE_LINE // self.dtype.itemsize
        out, at = [], 0
        for shape in self.layer_shapes():
            for s in (shape, shape[:1]):
                out.append((at, s))
                at += -(-int(np.prod(s)) // per_line) * per_line
        return out, at

    def block(self) -> Block:
        """A zeroed block of this network's parameters (or optimizer state)."""
        offsets, size = self._offsets()
        data = aligned_zeros((size,), self.dtype)
        views = [data[at : at + int(np.prod(shape))].reshape(shape) for at, shape in offsets]
        return Block(data, views[0::2], views[1::2])

    def named(self, block: Block) -> dict[str, np.ndarray]:
        """The views of ``block`` by name (``param_names``)."""
        views = [a for pair in zip(block.coefs, block.intercepts, strict=True) for a in pair]
        return dict(zip(self.param_names(), views, strict=True))

    def replace(self, **changes) -> Network:
        """A copy with some fields changed (checked as at construction)."""
        fields = dict(sizes=self.sizes, activation=self.activation, loss=self.loss, dtype=self.dtype)
        fields.update(changes)
        return Network(**fields)
