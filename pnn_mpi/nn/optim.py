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
    """SGD with optional (heavy-ball) momentum: v = mu v + g; p -= lr v.

    ``state`` is what a parameter average averages: the parameters, and the
    velocity right after them when ``beside`` made the optimizer. ``carrier`` is
    ``state`` followed by ``beside``'s ``tail``: a few values that may travel
    in the same Allreduce as an average (the training loop's stop check).
    """

    def __init__(self, params: np.ndarray, momentum: float = 0.0, velocity: np.ndarray | None = None):
        self.momentum = float(momentum)
        if velocity is None and self.momentum:
            velocity = np.zeros_like(params)
        self.velocity = velocity
        self.state = params
        self.carrier = params

    @classmethod
    def beside(cls, net, momentum: float = 0.0, tail: int = 0) -> SGD:
        """SGD whose velocity follows ``net``'s parameters in one contiguous buffer, then ``tail`` spare values.

        Averaging only the parameters and letting each rank keep its own momentum
        costs accuracy under local SGD (the momentum then pushes each rank back
        towards where it was heading before the average); with the two adjacent,
        averaging both is still one in-place Allreduce on ``state``, and with the
        tail after them a few more values ride along in that same call.
        """
        n = len(net.params)
        size = n * (2 if momentum else 1)
        carrier = np.zeros(size + tail, net.dtype)
        net.move_into(carrier[:n])
        opt = cls(net.params, momentum, carrier[n:size] if momentum else None)
        opt.state, opt.carrier = carrier[:size], carrier
        return opt

    def step(self, params: np.ndarray, grads: np.ndarray, lr: float) -> None:
        """Apply one update in place. ``grads`` is overwritten."""
        sgd_step(params, grads, lr, self.velocity, self.momentum)


SCHEDULES = ("constant", "cosine")


def rate_fraction(decay: float, epoch: int, schedule: str = "constant", epochs: int = 1, warmup: int = 0) -> float:
    """The fraction of the peak rate that a 0-based ``epoch`` of ``epochs`` runs at:
    ``decay**epoch``, times the schedule's factor (cosine: from 1 down towards 0 over
    the run), times a linear warm-up over the first ``warmup`` epochs. ``local``'s
    period follows it (sync.py)."""
    factor = decay**epoch
    if schedule == "cosine":
        factor *= 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    if epoch < warmup:
        factor *= (epoch + 1) / (warmup + 1)
    return factor


def learning_rate(base: float, decay: float, epoch: int, schedule: str = "constant", epochs: int = 1, warmup: int = 0) -> float:
    """The rate for a 0-based ``epoch``: ``base`` times ``rate_fraction``."""
    return base * rate_fraction(decay, epoch, schedule, epochs, warmup)
