"""Stochastic gradient descent on the flat parameter array.

One update touches the whole network in two or three vectorised operations and
allocates nothing: the gradient buffer is consumed as scratch.
"""

from __future__ import annotations

import numpy as np


class SGD:
    """SGD with optional (heavy-ball) momentum: v = mu v + g; p -= lr v."""

    def __init__(self, params: np.ndarray, momentum: float = 0.0):
        self.momentum = float(momentum)
        self.velocity = np.zeros_like(params) if self.momentum else None

    def step(self, params: np.ndarray, grads: np.ndarray, lr: float) -> None:
        """Apply one update in place. ``grads`` is overwritten."""
        if self.velocity is not None:
            self.velocity *= self.momentum
            self.velocity += grads
            np.multiply(self.velocity, lr, out=grads)
        else:
            grads *= lr
        params -= grads


def learning_rate(base: float, decay: float, epoch: int) -> float:
    """The rate for a 0-based ``epoch``: multiplied by ``decay`` after each epoch."""
    return base * decay**epoch
