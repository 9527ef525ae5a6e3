"""
The learning rate
=================

How does the learning rate change training? Too small and the loss creeps down;
too large and the steps overshoot, the loss jumps around or the network
saturates, or the numbers overflow altogether. We train the same network with
learning rates over five orders of magnitude, with mini-batches of 10.
"""

import os

import matplotlib.pyplot as plt
import numpy as np

import fastmlp

if os.environ.get("FASTMLP_MNIST_DIR"):
    X, y, X_test, y_test = fastmlp.datasets.load_mnist(os.environ["FASTMLP_MNIST_DIR"])
    X, y = X[:20000], y[:20000]
    name = "MNIST (20,000 examples)"
else:
    X, y, X_test, y_test = fastmlp.datasets.load_digits()
    name = "8x8 digits (stand-in for MNIST)"

rates = [0.0003, 0.003, 0.03, 0.3, 3.0, 30.0]
epochs = 15
fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.5))
for lr in rates:
    model = fastmlp.MLP(X.shape[1], 100, 10, seed=0)
    try:
        history = fastmlp.train(model, X, y, epochs=epochs, batch_size=10, lr=lr, validation_data=(X_test, y_test))
        note = ""
    except fastmlp.DivergenceError as error:  # the loss or a parameter became NaN or infinite
        history, note = error.history, f" (diverged in epoch {error.epoch + 1})"
    if history.epochs:
        x = np.arange(1, history.epochs + 1)
        ax_loss.plot(x, history.val_loss, marker=".", label=f"lr {lr}{note}")
        ax_acc.plot(x, history.val_accuracy, marker=".", label=f"lr {lr}{note}")
    else:
        ax_loss.plot([], [], label=f"lr {lr}{note}")
    print(f"lr {lr:>7}: " + (f"test accuracy {history.val_accuracy[-1]:.1%}" if history.epochs else "") + note)
ax_loss.set_yscale("log")
ax_loss.set_ylabel("test loss")
ax_acc.set_ylabel("test accuracy")
for ax in (ax_loss, ax_acc):
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
ax_loss.legend(fontsize="small")
fig.suptitle(f"{name}, batch 10")
fig.tight_layout()

# %%
# The best rates sit in a band about a factor of ten wide. Below it, training is
# slow but steady; above it, the loss stalls high or rises. A rate that makes a
# step produce a non-finite number raises :class:`fastmlp.DivergenceError`, with
# the model left as it was before that step and the epochs completed so far in
# ``error.history``.
#
# :func:`fastmlp.sweep` runs such grids on every core; see the sweep example.
