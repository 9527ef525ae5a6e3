"""Learning-rate schedules: an epoch (0-based) -> the learning rate of that epoch.

``fastmlp.train(..., lr_schedule=...)`` takes a name or any callable ``epoch -> lr``;
the names build these with the training's own numbers::

    "constant"    lr
    "invscaling"  lr / (epoch * n_samples + 1) ** power_t   (scikit-learn's: the
                  samples seen so far, the rate fixed within an epoch)
    "step"        lr * 0.1 ** (epoch // max(1, epochs // 3)), a tenth at each third
    "cosine"      lr * (1 + cos(pi * epoch / epochs)) / 2    (torch's CosineAnnealingLR)

For other numbers, pass ``step(lr, step_size, gamma)`` or ``cosine(lr, epochs,
min_lr)`` from here, or a function of your own.
"""

from __future__ import annotations

import math

from ._typing import Schedule

__all__ = [
    "NAMES",
    "constant",
    "invscaling",
    "step",
    "cosine",
    "build",
    "check",
]

NAMES = ("constant", "invscaling", "step", "cosine")


def constant(lr: float) -> Schedule:
    """The same rate every epoch."""
    return lambda epoch: lr


def invscaling(lr: float, n_samples: int, power_t: float = 0.5) -> Schedule:
    """scikit-learn's "invscaling": ``lr / (samples seen + 1) ** power_t``, per epoch."""
    return lambda epoch: lr / (epoch * n_samples + 1) ** power_t


def step(lr: float, step_size: int, gamma: float = 0.1) -> Schedule:
    """``lr * gamma ** (epoch // step_size)`` (torch's StepLR)."""
    return lambda epoch: lr * gamma ** (epoch // step_size)


def cosine(lr: float, epochs: int, min_lr: float = 0.0) -> Schedule:
    """From ``lr`` down to ``min_lr`` along half a cosine over ``epochs`` (torch's
    CosineAnnealingLR with T_max = epochs).

    Examples
    --------
    >>> schedule = fastmlp.schedules.cosine(0.1, epochs=4)
    >>> [round(schedule(epoch), 4) for epoch in range(5)]
    [0.1, 0.0854, 0.05, 0.0146, 0.0]
    """
    return lambda epoch: min_lr + (lr - min_lr) * (1 + math.cos(math.pi * epoch / max(1, epochs))) / 2


def check(schedule: str | Schedule) -> str | Schedule:
    """``schedule`` itself if it is a name of ``NAMES`` or a callable, else a ValueError."""
    if callable(schedule) or (isinstance(schedule, str) and schedule in NAMES):
        return schedule
    raise ValueError(f"lr_schedule must be one of {NAMES} or a callable epoch -> lr, got {schedule!r}")


def build(schedule: str | Schedule, lr: float, *, epochs: int, n_samples: int, power_t: float = 0.5) -> Schedule:
    """The callable for ``schedule`` (a name of ``NAMES`` or a callable)."""
    if callable(check(schedule)):
        return schedule
    if schedule == "constant":
        return constant(lr)
    if schedule == "invscaling":
        return invscaling(lr, n_samples, power_t)
    if schedule == "step":
        return step(lr, max(1, epochs // 3))
    return cosine(lr, epochs)
