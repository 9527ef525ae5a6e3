"""fastmlp: multilayer perceptrons trained on the CPU with compiled kernels,
beginning with the practical's one-hidden-layer tanh/softmax network and SGD.

import fastmlp
X, y = fastmlp.datasets.circles(1000, noise=0.1, seed=0)
model = fastmlp.MLP(2, 10, 2, seed=0)  # activation="tanh": fastmlp.tables.ACTIVATIONS has the others
history = fastmlp.train(model, X, y, epochs=50, batch_size=10, lr=0.03)
fastmlp.evaluate(model, X, y)          # (mean loss, accuracy)
"""

from . import datasets, reference, tables
from ._version import __version__
from .backends import available_backends
from .model import MLP
from .network import Network
from .sweeps import sweep
from .train import DivergenceError, History, evaluate, train

__all__ = [
    "MLP",
    "DivergenceError",
    "History",
    "Network",
    "__version__",
    "available_backends",
    "datasets",
    "evaluate",
    "reference",
    "sweep",
    "tables",
    "train",
]
