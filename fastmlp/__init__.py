"""fastmlp: a one-hidden-layer tanh/softmax network trained by SGD with compiled kernels.

import fastmlp
X, y = fastmlp.datasets.circles(1000, noise=0.1, seed=0)
model = fastmlp.MLP(2, 10, 2, seed=0)
history = fastmlp.train(model, X, y, epochs=50, batch_size=10, lr=0.03)
fastmlp.evaluate(model, X, y)          # (mean loss, accuracy)
"""

from . import datasets, reference
from ._version import __version__
from .backends import available_backends
from .model import MLP
from .sweeps import sweep
from .train import DivergenceError, History, evaluate, train

__all__ = [
    "MLP",
    "DivergenceError",
    "History",
    "__version__",
    "available_backends",
    "datasets",
    "evaluate",
    "reference",
    "sweep",
    "train",
]
