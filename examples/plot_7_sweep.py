"""
A sweep: learning rate against hidden units
===========================================

:func:`fastmlp.sweep` trains one model per point of a grid, on every core
(joblib worker processes here; a Dask cluster with ``client=``). Here: six
learning rates times five hidden-layer sizes, three seeds each — 90 trainings —
and the mean test accuracy of each cell as a heat map.
"""

import os

import matplotlib.pyplot as plt
import numpy as np

import fastmlp

if os.environ.get("FASTMLP_MNIST_DIR"):
    X, y, X_test, y_test = fastmlp.datasets.load_mnist(os.environ["FASTMLP_MNIST_DIR"])
    X, y = X[:10000], y[:10000]
    name = "MNIST (10,000 examples)"
else:
    X, y, X_test, y_test = fastmlp.datasets.load_digits()
    name = "8x8 digits (stand-in for MNIST)"

grid = {"lr": [0.003, 0.01, 0.03, 0.1, 0.3, 1.0], "n_hidden": [4, 8, 16, 32, 64], "batch_size": [16]}
table = fastmlp.sweep(X, y, grid, validation_data=(X_test, y_test), epochs=3, repeats=3, n_jobs=2)
print(
    f"{len(table)} trainings, {table['error'].notna().sum()} failed, "
    f"{table['seconds'].sum():.1f} s of training in total"
)

cells = table.pivot_table(index="n_hidden", columns="lr", values="val_accuracy", aggfunc="mean")
fig, ax = plt.subplots(figsize=(8, 4.8))
image = ax.imshow(cells.to_numpy(), cmap="viridis", origin="lower", aspect="auto")
ax.set_xticks(range(len(cells.columns)), [str(v) for v in cells.columns])
ax.set_yticks(range(len(cells.index)), [str(v) for v in cells.index])
for i in range(cells.shape[0]):
    for j in range(cells.shape[1]):
        value = cells.iat[i, j]
        ax.text(
            j,
            i,
            "-" if np.isnan(value) else f"{value:.0%}",
            ha="center",
            va="center",
            color="black" if value > 0.6 else "white",
            fontsize=9,
        )
ax.set_xlabel("learning rate")
ax.set_ylabel("hidden units")
ax.set_title(f"{name}: test accuracy after 3 epochs, mean of 3 seeds")
fig.colorbar(image, ax=ax, label="test accuracy")
fig.tight_layout()

# %%
# More hidden units help until the data runs out of things to say; the learning
# rate matters more. A good rate is good for every size, and the bad corners —
# tiny networks, or rates too small to get anywhere in three epochs — are plain to
# see. :func:`fastmlp.sweeps.plot_sweep` draws the same table as accuracy against
# the learning rate, one line per size:

fig = fastmlp.sweeps.plot_sweep(table)
