"""
MNIST: learning curves, mistakes and what the hidden units see
==============================================================

A 784-100-10 network on MNIST (or, without ``$FASTMLP_MNIST_DIR``, 64-100-10 on
scikit-learn's 8x8 digits), trained with mini-batches of 64 and Nesterov
momentum — the settings that reach 98% test accuracy on MNIST in nine epochs.
"""

import os

import matplotlib.pyplot as plt
import numpy as np

import fastmlp
import fastmlp.plot

if os.environ.get("FASTMLP_MNIST_DIR"):
    X, y, X_test, y_test = fastmlp.datasets.load_mnist(os.environ["FASTMLP_MNIST_DIR"])
    name, side = "MNIST", 28
else:
    X, y, X_test, y_test = fastmlp.datasets.load_digits()
    name, side = "8x8 digits (stand-in for MNIST)", 8

model = fastmlp.MLP(X.shape[1], 100, 10, seed=0)
history = fastmlp.train(
    model,
    X,
    y,
    epochs=12,
    batch_size=64,
    lr=0.05,
    momentum=0.9,
    nesterov=True,
    validation_data=(X_test, y_test),
)
print(
    f"{name}: test accuracy {history.val_accuracy[-1]:.2%} after {history.epochs} epochs, "
    f"{sum(history.seconds):.2f} s of training ({history.backend} backend, {history.path} path, "
    f"{history.threads} threads)"
)
fig = fastmlp.plot.learning_curves(history)
fig.tight_layout()

# %%
# Confusion matrix
# ----------------
# Row: the true digit; column: the predicted one. The diagonal holds the correct
# predictions; the largest off-diagonal cells are the digits the network confuses.

predicted = model.predict(X_test)
confusion = np.zeros((10, 10), dtype=int)
np.add.at(confusion, (y_test, predicted), 1)
fig, ax = plt.subplots(figsize=(6, 5.5))
image = ax.imshow(np.log1p(confusion), cmap="Blues")
for i in range(10):
    for j in range(10):
        if confusion[i, j]:
            ax.text(j, i, confusion[i, j], ha="center", va="center", fontsize=7, color="white" if i == j else "black")
ax.set_xticks(range(10))
ax.set_yticks(range(10))
ax.set_xlabel("predicted")
ax.set_ylabel("true")
ax.set_title(f"{name}: {np.trace(confusion)} of {len(y_test)} test digits right")
fig.tight_layout()

# %%
# Misclassified digits
# --------------------
# The test digits the network gets wrong with the highest confidence.

proba = model.predict_proba(X_test)
wrong = np.flatnonzero(predicted != y_test)
wrong = wrong[np.argsort(-proba[wrong, predicted[wrong]])][:24]
fig, axes = plt.subplots(3, 8, figsize=(12, 5))
for ax, i in zip(axes.ravel(), wrong, strict=False):
    ax.imshow(X_test[i].reshape(side, side), cmap="gray_r")
    ax.set_title(f"{y_test[i]} as {predicted[i]} ({proba[i, predicted[i]]:.0%})", fontsize=9)
for ax in axes.ravel():
    ax.axis("off")
fig.tight_layout()

# %%
# What the hidden units look at
# -----------------------------
# Each hidden unit computes ``tanh(w . x + b)``: its weight row ``w``, shown as an
# image, is the pattern of pixels that excites it (red) or inhibits it (blue).
# Most are strokes and blobs in the centre; the border pixels, always zero, keep
# the weights they started with.

fig, axes = plt.subplots(4, 8, figsize=(12, 6.5))
for ax, w in zip(axes.ravel(), model.Wh, strict=False):
    limit = np.abs(w).max()
    ax.imshow(w.reshape(side, side), cmap="RdBu_r", vmin=-limit, vmax=limit)
    ax.axis("off")
fig.suptitle("first 32 rows of Wh, one per hidden unit")
fig.tight_layout()
