"""Output layers and their losses: a table, like the hidden activations.

Each entry pairs the output non-linearity with the loss it is trained under,
because backprop starts from the derivative of the two together. Losses are
summed over the samples of a batch: the caller decides the scale (``1/batch``
for a local step, ``1/global batch`` when gradients are summed across ranks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .activations import ACTIVATIONS

_TINY = 1e-12


def _softmax(z: np.ndarray, out: np.ndarray) -> None:
    np.subtract(z, z.max(axis=1, keepdims=True), out=out)
    np.exp(out, out=out)
    out /= out.sum(axis=1, keepdims=True)


def _xent_sum(p: np.ndarray, labels: np.ndarray) -> float:
    picked = p[np.arange(len(labels)), labels]
    return float(-np.log(np.maximum(picked, _TINY)).sum())


def _softmax_xent_backward(p, labels, scale, delta) -> float:
    """delta = scale * (p - onehot); returns the summed cross-entropy."""
    rows = np.arange(len(labels))
    loss = float(-np.log(np.maximum(p[rows, labels], _TINY)).sum())
    np.multiply(p, scale, out=delta)
    delta[rows, labels] -= scale
    return loss


def _mse_sum(s: np.ndarray, labels: np.ndarray) -> float:
    err = s.copy()
    err[np.arange(len(labels)), labels] -= 1.0
    return 0.5 * float(np.vdot(err, err))


def _sigmoid_mse_backward(s, labels, scale, delta) -> float:
    """delta = scale * (s - onehot) * s * (1 - s); returns the summed 1/2 squared error."""
    rows = np.arange(len(labels))
    on_target = s[rows, labels]
    # Squared error of all outputs as if every target were 0, corrected on the targets.
    loss = 0.5 * (float(np.vdot(s, s)) - float(np.sum(2.0 * on_target - 1.0)))
    np.subtract(1.0, s, out=delta)  # 1 - s
    delta *= s  # s (1 - s)
    delta *= s  # (s - 0) s (1 - s) for non-targets
    delta[rows, labels] = (on_target - 1.0) * on_target * (1.0 - on_target)
    delta *= scale
    return loss


@dataclass(frozen=True)
class OutputLoss:
    """An output non-linearity with its loss.

    ``forward(z, out)`` writes the network's outputs; ``loss_sum(out, labels)``
    is the loss summed over samples; ``backward(out, labels, scale, delta)``
    writes ``scale * dLoss/dz`` into ``delta`` and returns the summed loss.
    """

    name: str
    forward: Callable[[np.ndarray, np.ndarray], None]
    loss_sum: Callable[[np.ndarray, np.ndarray], float]
    backward: Callable[[np.ndarray, np.ndarray, float, np.ndarray], float]


OUTPUTS: dict[str, OutputLoss] = {
    o.name: o
    for o in (
        OutputLoss("softmax-xent", _softmax, _xent_sum, _softmax_xent_backward),
        OutputLoss("sigmoid-mse", ACTIVATIONS["sigmoid"].forward, _mse_sum, _sigmoid_mse_backward),
    )
}
