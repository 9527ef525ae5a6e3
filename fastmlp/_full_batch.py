"""Full-batch optimization (L-BFGS) over the compiled loss-and-gradient primitive.

The primitive is an epoch of one batch of every row with the step "gradient"
(``fastmlp.tables.OPTIMIZERS``): the kernels run their forward and backward
passes on every thread (sparse-first on the first layer, as in training), write
the gradient into a state block and leave the parameters alone. ``Objective``
turns it into the function scipy.optimize takes, ``f(x), grad f(x)`` of a flat
float64 vector, with scikit-learn's ``solver="lbfgs"`` objective: the (weighted)
mean loss plus the L2 term of the weights (``fastmlp.reference.objective``).
"""

from __future__ import annotations

import numpy as np
import scipy.optimize

from . import reference as ref
from ._kernels.epochs import Diverged


class Objective:
    """``f(x), grad f(x)`` for the parameters ``params`` (the model's arrays, by name)
    packed in one vector, from a ``runner`` (an ``EpochRunner`` over every row in
    one batch, whose velocity block ``gradient`` takes the gradient) and ``step``
    (a ``Step`` of optimizer "gradient", its decay the L2 coefficient). ``total`` is
    the rows' count or weight sum, by which the loss sum is averaged. Each call
    leaves the model at ``x`` and keeps ``last``: (the mean loss without the L2
    term, the accuracy) measured there, at ``last_x``."""

    def __init__(self, runner, params, gradient, step, total):
        self.runner, self.params, self.gradient, self.step = runner, params, gradient, step
        self.total = float(total)
        self.names = list(params)
        self.bounds = np.cumsum([0] + [params[k].size for k in self.names])
        self.order = np.arange(runner.n_rows, dtype=np.intp)
        decay = step.decay / self.total if step.decay_by_weight_sum and self.total > 0 else step.decay
        self.l2 = 0.5 * float(decay)
        self.evaluations = 0
        self.last, self.last_x = (np.nan, np.nan), None

    def pack(self, arrays=None):
        """The arrays (the parameters by default) as one float64 vector."""
        arrays = self.params if arrays is None else arrays
        return np.concatenate([np.asarray(arrays[k], dtype=np.float64).ravel() for k in self.names])

    def unpack(self, x):
        """The model's parameters set to the vector ``x`` (rounded to their dtype)."""
        for k, a, b in zip(self.names, self.bounds[:-1], self.bounds[1:], strict=True):
            self.params[k][...] = x[a:b].reshape(self.params[k].shape)

    def __call__(self, x):
        self.last_x = np.array(x, dtype=np.float64)
        self.unpack(x)
        loss_sum, correct = self.runner.epoch(self.order, self.step)
        self.evaluations += 1
        total = self.total if self.total > 0 else 1.0
        mean_loss = loss_sum / total
        self.last = (mean_loss, correct / total)
        l2 = sum(float(np.vdot(p, p)) for k, p in self.params.items() if ref.is_weight(k))
        return mean_loss + self.l2 * l2, self.pack(self.gradient)


def minimize(objective, max_iter, max_fun, tol, on_iteration=None):
    """scipy.optimize's L-BFGS-B from the model's parameters, at most ``max_iter``
    iterations and ``max_fun`` evaluations, stopping where the largest component of
    the projected gradient is at most ``tol`` (scikit-learn's settings for its
    solver="lbfgs"). ``on_iteration(fun)`` is called after each iteration with the
    objective there, the model at the new iterate and ``objective.last`` measured
    there. Returns scipy's ``OptimizeResult``; the model ends at its ``x``.

    A non-finite objective or gradient raises ``Diverged`` (its ``batch``: the
    iteration, 0-based) and a KeyboardInterrupt passes on; either way the model is
    left at the last accepted iterate."""
    state = {"x": objective.pack(), "iterations": 0}

    def fun(x):
        try:
            f, g = objective(x)
        except Diverged:  # a non-finite loss or gradient, found by the runner
            f, g = np.nan, None
        if not (np.isfinite(f) and np.isfinite(g).all()):
            raise Diverged(state["iterations"])
        return f, g

    def callback(intermediate_result):
        state["iterations"] += 1
        state["x"] = intermediate_result.x.copy()
        # the model and objective.last are at the last evaluated point: usually this iterate
        if not np.array_equal(state["x"], objective.last_x):
            objective(state["x"])
        if on_iteration is not None:
            on_iteration(float(intermediate_result.fun))

    options = {"maxiter": max_iter, "maxfun": max_fun, "gtol": tol}
    try:
        result = scipy.optimize.minimize(
            fun, state["x"], method="L-BFGS-B", jac=True, callback=callback, options=options
        )
    except BaseException:
        objective.unpack(state["x"])
        raise
    objective.unpack(result.x)
    return result
