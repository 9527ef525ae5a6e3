"""Figures of a training run (needs the optional extra: ``pip install fastmlp[plot]``).

fig = fastmlp.plot.learning_curves(history)
fig = fastmlp.plot.decision_boundary(model, X, y)      # 2-D inputs, as circles
fig = fastmlp.plot.training_figure(model, history, X, y)  # both side by side
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from ._validation import check_X, check_y

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .model import MLP
    from .train import History

__all__ = [
    "learning_curves",
    "decision_boundary",
    "training_figure",
]


def _figure(ncols, width=5.0):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, 4.0), squeeze=False)
    return fig, list(axes[0])


def learning_curves(history: History, axes: Sequence[Axes] | None = None) -> Figure:
    """Loss and accuracy per epoch, training (running) and validation, on two axes."""
    if not history.loss:
        raise ValueError("history has no epochs to plot")
    fig, axes = _figure(2) if axes is None else (axes[0].figure, list(axes))
    epochs = np.arange(1, history.epochs + 1)
    for ax, (name, train, val) in zip(
        axes,
        [("loss", history.loss, history.val_loss), ("accuracy", history.accuracy, history.val_accuracy)],
        strict=False,
    ):
        ax.plot(epochs, train, label=f"training {name}")
        if val:
            ax.plot(epochs, val, label=f"validation {name}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_title(f"loss ({history.backend} backend)")
    axes[1].set_title("accuracy")
    return fig


def decision_boundary(
    model: MLP, X: npt.ArrayLike, y: npt.ArrayLike, ax: Axes | None = None, resolution: int = 300
) -> Figure:
    """The model's predicted class over the plane, with the points (X, y) on top."""
    X = check_X(X, "X", 2, np.float64)
    y = check_y(y, len(X), model.n_out, "y")
    fig, (ax,) = _figure(1) if ax is None else (ax.figure, [ax])
    pad = 0.1 * (X.max(axis=0) - X.min(axis=0)) + 1e-9
    lo, hi = X.min(axis=0) - pad, X.max(axis=0) + pad
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], resolution), np.linspace(lo[1], hi[1], resolution))
    grid = np.column_stack([gx.ravel(), gy.ravel()])
    classes = model.predict(grid).reshape(gx.shape)
    ax.contourf(gx, gy, classes, levels=np.arange(model.n_out + 1) - 0.5, cmap="coolwarm", alpha=0.3)
    ax.scatter(X[:, 0], X[:, 1], c=y, cmap="coolwarm", s=8, edgecolors="none", vmin=0, vmax=model.n_out - 1)
    ax.set_aspect("equal")
    ax.set_title(f"decision boundary, {model.n_in}-{model.n_hidden}-{model.n_out}")
    return fig


def training_figure(
    model: MLP, history: History, X: npt.ArrayLike | None = None, y: npt.ArrayLike | None = None
) -> Figure:
    """Learning curves, with the decision boundary beside them for 2-D data."""
    with_boundary = X is not None and np.asarray(X).ndim == 2 and np.asarray(X).shape[1] == 2
    fig, axes = _figure(3 if with_boundary else 2)
    if with_boundary:
        decision_boundary(model, X, y, ax=axes[0])
        axes = axes[1:]
    learning_curves(history, axes=axes)
    fig.tight_layout()
    return fig
