"""
The gradient's cost against the number of layers
================================================

The practical's Q12: how does the cost of the gradient grow with the number of
layers, computed by backpropagation and computed naively? The naive way nudges
each parameter in turn and runs the forward pass again: one forward pass per
parameter, so its cost grows with the number of parameters times the cost of a
forward pass, both of which grow with the depth. Backpropagation runs one
forward pass that stores every layer's activations and one backward pass that
reuses them, layer by layer: a cost that grows linearly with the depth.

We time, for 1 to 6 hidden layers of 32 tanh units on a batch of 64 examples,
the naive gradient (forward differences on :mod:`fastmlp.reference`), the
reference's backpropagation in NumPy, and one step of the compiled kernels
(forward, backward and update, where fastmlp's sparse path trains networks of
several hidden layers), and check that the naive and the backpropagated
gradients agree.
"""

import functools
import time

import matplotlib.pyplot as plt
import numpy as np

import fastmlp
from fastmlp import backends
from fastmlp import reference as ref
from fastmlp._kernels import epochs

rng = np.random.default_rng(0)
n_in, width, n_out, batch = 32, 32, 10, 64
X = rng.random((batch, n_in))
labels = rng.integers(0, n_out, batch).astype(np.intp)


def batch_loss(params):
    out = ref.forward(params, X)
    return ref.loss_accuracy(out.Y_hat, labels, "ce", logits=out.Z)[0]


def naive_gradient(params, eps=1e-6):
    """Forward differences: one extra forward pass per parameter."""
    base = batch_loss(params)
    grads = {}
    for name, p in params.items():
        g = np.empty_like(p)
        flat, gflat = p.reshape(-1), g.reshape(-1)
        for i in range(flat.size):
            saved = flat[i]
            flat[i] = saved + eps
            gflat[i] = (batch_loss(params) - base) / eps
            flat[i] = saved
        grads[name] = g
    return grads


def backprop_gradient(params):
    return ref.backward(params, ref.forward(params, X), labels, "ce")


def seconds(fn, repeats=3):
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


backend = backends.resolve("auto", deep=True)
kernels = backends.kernels(backend)
depths = [1, 2, 3, 4, 5, 6]
t_naive, t_backprop, t_kernel, errors = [], [], [], []
for depth in depths:
    params = ref.init_params(n_in, (width,) * depth, n_out, dtype=np.float64, seed=0)
    n_params = sum(p.size for p in params.values())
    t_naive.append(seconds(functools.partial(naive_gradient, params), repeats=1))
    t_backprop.append(seconds(functools.partial(backprop_gradient, params), repeats=20))
    # one step of the kernels on the same batch, in float32 as users train (a copy: no change to params)
    step = {k: v.astype(np.float32) for k, v in params.items()}
    runner = epochs.EpochRunner(kernels, step, X.astype(np.float32), labels, batch_size=batch, n_threads=1)
    order = np.arange(batch, dtype=np.intp)
    runner.run(order, 0.01)
    t_kernel.append(seconds(functools.partial(runner.run, order, 0.01), repeats=50))
    naive, exact = naive_gradient(params), backprop_gradient(params)
    errors.append(max(np.abs(naive[k] - exact[k]).max() for k in params))
    print(
        f"{depth} hidden layer(s), {n_params:5d} parameters: naive {t_naive[-1] * 1e3:8.1f} ms, "
        f"backprop {t_backprop[-1] * 1e3:6.3f} ms, kernel step {t_kernel[-1] * 1e6:6.1f} us, "
        f"max difference {errors[-1]:.1e}"
    )

fig, ax = plt.subplots(figsize=(7, 4.5))
ax.semilogy(depths, t_naive, marker="o", label="naive: one forward pass per parameter")
ax.semilogy(depths, t_backprop, marker="o", label="backpropagation, NumPy reference")
ax.semilogy(depths, t_kernel, marker="o", label=f"one SGD step of the {backend} kernels")
ax.set_xlabel("hidden layers (32 units each)")
ax.set_ylabel("seconds per gradient (log scale)")
ax.set_title(f"The gradient of a batch of {batch}: naive against backpropagation")
ax.legend()
fig.tight_layout()
plt.show()

# %%
# The naive gradient's time grows faster than the depth: each layer adds
# parameters *and* makes every forward pass longer. Backpropagation's grows in
# proportion to the depth, and the compiled step keeps the same shape far lower.
# The two gradients agree to the finite difference's error:
assert max(errors) < 1e-4
print(f"naive / backprop at 6 layers: {t_naive[-1] / t_backprop[-1]:.0f}x")
print(f"fastmlp version {fastmlp.__version__}")
