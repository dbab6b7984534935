"""Stochastic gradient descent on the flat parameter array.

One update touches the whole network in two or three vectorised operations and
allocates nothing: the gradient buffer is consumed as scratch. ``sgd_step`` is
the one SGD rule every numpy path takes (the generic step and the batch-1
numpy kernel); the compiled kernel applies the same rule element by element
through ``heavy_ball``, in the same order of operations (tests/test_kernels.py
checks that the paths agree).
"""

from __future__ import annotations

import math

import numpy as np


def sgd_step(params: np.ndarray, grads: np.ndarray, lr: float, velocity: np.ndarray | None = None, momentum: float = 0.0) -> None:
    """One update in place: v = momentum v + g, p -= lr v (without a velocity: p -= lr g). ``grads`` is overwritten."""
    if velocity is not None:
        velocity *= momentum
        velocity += grads
        np.multiply(velocity, lr, out=grads)
    else:
        grads *= lr
    params -= grads


def heavy_ball(velocity, gradient, momentum):
    """``sgd_step``'s velocity rule for one element (the compiled kernel's form): momentum v + g."""
    return velocity * momentum + gradient


class SGD:
    """SGD with optional (heavy-ball) momentum: v = mu v + g; p -= lr v."""

    def __init__(self, params: np.ndarray, momentum: float = 0.0):
        self.momentum = float(momentum)
        self.velocity = np.zeros_like(params) if self.momentum else None

    def step(self, params: np.ndarray, grads: np.ndarray, lr: float) -> None:
        """Apply one update in place. ``grads`` is overwritten."""
        sgd_step(params, grads, lr, self.velocity, self.momentum)


SCHEDULES = ("constant", "cosine")


def learning_rate(base: float, decay: float, epoch: int, schedule: str = "constant", epochs: int = 1, warmup: int = 0) -> float:
    """The rate for a 0-based ``epoch`` of ``epochs``: ``base`` times ``decay**epoch``,
    times the schedule's factor (cosine: from 1 down towards 0 over the run), times a
    linear warm-up over the first ``warmup`` epochs."""
    factor = decay**epoch
    if schedule == "cosine":
        factor *= 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    if epoch < warmup:
        factor *= (epoch + 1) / (warmup + 1)
    return base * factor
