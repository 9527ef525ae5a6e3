"""
How many examples? (training-set size)
======================================

How does the number of training examples N change what the network learns?
We train the same 2-10-2 network on the first N points of the circles dataset,
for N from 10 to 5,000, always for the same number of SGD steps (so small sets
are seen many times), and measure the accuracy on the training points and on
2,000 fresh test points. Five seeds per N show the spread.
"""

import matplotlib.pyplot as plt
import numpy as np

import fastmlp
import fastmlp.plot

X_all, y_all = fastmlp.datasets.circles(5000, noise=0.15, seed=0)
X_test, y_test = fastmlp.datasets.circles(2000, noise=0.15, seed=1)
sizes = [10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
steps = 6000  # SGD steps of batch 10, whatever N
seeds = range(5)

train_acc = np.zeros((len(sizes), len(seeds)))
test_acc = np.zeros_like(train_acc)
models = {}
for i, n in enumerate(sizes):
    X, y = X_all[:n], y_all[:n]
    epochs = max(1, steps * 10 // n)
    for j, seed in enumerate(seeds):
        model = fastmlp.MLP(2, 10, 2, seed=seed)
        fastmlp.train(model, X, y, epochs=epochs, batch_size=10, lr=0.1, seed=seed)
        train_acc[i, j] = fastmlp.evaluate(model, X, y)[1]
        test_acc[i, j] = fastmlp.evaluate(model, X_test, y_test)[1]
        models.setdefault(n, model)

fig, ax = plt.subplots(figsize=(7, 4.5))
for acc, label in ((train_acc, "training points"), (test_acc, "2,000 test points")):
    ax.plot(sizes, acc.mean(axis=1), marker="o", label=label)
    ax.fill_between(sizes, acc.min(axis=1), acc.max(axis=1), alpha=0.2)
ax.set_xscale("log")
ax.set_xlabel("number of training examples N")
ax.set_ylabel("accuracy")
ax.set_title("2-10-2 on circles: mean and range over 5 seeds")
ax.grid(alpha=0.3)
ax.legend()
fig.tight_layout()

# %%
# With a handful of points the network fits them all (training accuracy near
# 100%) yet does poorly on new points: it has learnt the sample, not the circles.
# As N grows the two curves meet: the gap between them is the overfitting.
# The boundaries learnt from 20, 100 and 5,000 points show why:

fig, axes = plt.subplots(1, 3, figsize=(13, 4.3))
for ax, n in zip(axes, (20, 100, 5000), strict=True):
    fastmlp.plot.decision_boundary(models[n], X_all[:n], y_all[:n], ax=ax, resolution=150)
    ax.set_title(f"N = {n}: test accuracy {fastmlp.evaluate(models[n], X_test, y_test)[1]:.1%}")
fig.tight_layout()
