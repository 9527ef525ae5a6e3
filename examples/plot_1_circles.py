"""
Circles: the decision boundary as training goes
===============================================

The practical's first experiment: a 2-10-2 network learns to separate two
concentric circles, which no straight line can. We train it by online gradient
descent (batch size 10 here) and look at the decision boundary after a few epochs
and at the end, then at the learning curves.
"""

import matplotlib.pyplot as plt
import numpy as np

import fastmlp
import fastmlp.plot

X, y = fastmlp.datasets.circles(1000, noise=0.1, seed=0)
X_test, y_test = fastmlp.datasets.circles(1000, noise=0.1, seed=1)

model = fastmlp.MLP(2, 10, 2, seed=0)
checkpoints = [0, 1, 3, 10, 30, 100]
fig, axes = plt.subplots(2, 3, figsize=(12, 8))
history = fastmlp.History()
done = 0
for ax, epoch in zip(axes.ravel(), checkpoints, strict=True):
    if epoch > done:
        run = fastmlp.train(
            model,
            X,
            y,
            epochs=epoch - done,
            batch_size=10,
            lr=0.03,
            seed=done,
            validation_data=(X_test, y_test),
        )
        for name in ("loss", "accuracy", "val_loss", "val_accuracy", "seconds"):
            getattr(history, name).extend(getattr(run, name))
        history.backend = run.backend
        done = epoch
    fastmlp.plot.decision_boundary(model, X_test, y_test, ax=ax, resolution=150)
    accuracy = fastmlp.evaluate(model, X_test, y_test)[1]
    ax.set_title(f"after {epoch} epochs: test accuracy {accuracy:.1%}")
fig.tight_layout()

# %%
# At first the boundary is a gentle curve across the plane: ten tanh units with
# small random weights are nearly linear, and the accuracy is chance. Within tens
# of epochs the hidden units bend it into a closed curve around the inner circle.
#
# The learning curves: the running training loss (measured in each batch's
# forward pass during the epoch) and the test loss after each epoch.

fig = fastmlp.plot.learning_curves(history)
fig.tight_layout()
print(
    f"{history.epochs} epochs in {sum(history.seconds):.2f} s "
    f"({np.mean(history.seconds) * 1e3:.2f} ms per epoch of 1000 examples)"
)
