"""
Activations: why a nonlinearity between the layers
==================================================

The practical's third question: what does the activation between the two layers
do? Without one (``activation="identity"``) the network computes
``Wy (Wh x + bh) + by``, a linear function of x however many hidden units it has:
its decision boundary is a straight line, and no straight line separates two
concentric circles. With tanh or ReLU the same 2-10-2 network bends the boundary
around the inner circle. The three networks below start from the same weights and
train with the same settings; only the activation differs.
"""

import matplotlib.pyplot as plt

import fastmlp
import fastmlp.plot

X, y = fastmlp.datasets.circles(1000, noise=0.1, seed=0)
X_test, y_test = fastmlp.datasets.circles(1000, noise=0.1, seed=1)

fig, axes = plt.subplots(1, 3, figsize=(13, 4.5))
histories = {}
for ax, activation in zip(axes, ["identity", "tanh", "relu"], strict=True):
    model = fastmlp.MLP(2, 10, 2, activation=activation, seed=0)
    histories[activation] = fastmlp.train(
        model, X, y, epochs=100, batch_size=10, lr=0.03, validation_data=(X_test, y_test)
    )
    fastmlp.plot.decision_boundary(model, X_test, y_test, ax=ax, resolution=150)
    ax.set_title(f"{activation}: test accuracy {histories[activation].val_accuracy[-1]:.1%}")
fig.tight_layout()

# %%
# The linear network settles near chance: the best line through two concentric
# circles still leaves half of one class on the wrong side. tanh gives a smooth
# closed curve; ReLU's boundary is made of straight pieces, one kink per unit that
# changes sign along it.
#
# The test loss per epoch shows the same: the linear network stops improving at
# once, the two others keep learning.

fig, ax = plt.subplots(figsize=(6.5, 4))
for activation, history in histories.items():
    ax.plot(range(1, history.epochs + 1), history.val_loss, label=activation)
ax.set_xlabel("epoch")
ax.set_ylabel("test loss (cross-entropy)")
ax.set_yscale("log")
ax.grid(alpha=0.3)
ax.legend()
fig.tight_layout()
for activation, history in histories.items():
    print(f"{activation:>8}: test accuracy {history.val_accuracy[-1]:.3f}, test loss {history.val_loss[-1]:.3f}")
