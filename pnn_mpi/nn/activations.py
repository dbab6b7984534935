"""Hidden-layer activations: a table of (function, derivative, kernel code) entries.

Every function writes into a caller's buffer (never the input itself), so a
training step allocates nothing. Each derivative is written in terms of the activation's *output*
``a = f(z)``: the forward pass keeps only ``a``, and backprop never needs ``z``.

Only ufuncs of same-shaped arrays and scalars are used: a ufunc that casts
(bool to float) or broadcasts runs through numpy's buffered iterator, which
allocates its buffers on every call.

The compiled batch-1 kernel (kernels.py) cannot call these functions: it
branches on each entry's ``code`` (the constants below) and writes the same
arithmetic for one sample, in the same order of operations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

LEAKY_SLOPE = 0.01

# Kernel codes, one per entry of ACTIVATIONS.
SIGMOID, TANH, RELU, LEAKY_RELU = range(4)


def _sigmoid(z: np.ndarray, out: np.ndarray) -> None:
    # 0.5 * (1 + tanh(z / 2)) is the logistic function without exp overflow.
    np.multiply(z, 0.5, out=out)
    np.tanh(out, out=out)
    out *= 0.5
    out += 0.5


def _sigmoid_grad(a: np.ndarray, out: np.ndarray) -> None:
    np.subtract(1.0, a, out=out)
    out *= a


def _tanh(z: np.ndarray, out: np.ndarray) -> None:
    np.tanh(z, out=out)


def _tanh_grad(a: np.ndarray, out: np.ndarray) -> None:
    np.multiply(a, a, out=out)
    np.subtract(1.0, out, out=out)


def _relu(z: np.ndarray, out: np.ndarray) -> None:
    np.maximum(z, 0.0, out=out)


def _relu_grad(a: np.ndarray, out: np.ndarray) -> None:
    np.sign(a, out=out)  # a = max(z, 0) >= 0: sign is 1 where a > 0, else 0


def _leaky_relu(z: np.ndarray, out: np.ndarray) -> None:
    # max(z, slope * z) equals z for z > 0 and slope * z otherwise (0 < slope < 1).
    np.multiply(z, LEAKY_SLOPE, out=out)
    np.maximum(z, out, out=out)


def _leaky_relu_grad(a: np.ndarray, out: np.ndarray) -> None:
    np.sign(a, out=out)  # -1, 0 or 1; a has the sign of z
    np.maximum(out, LEAKY_SLOPE, out=out)  # slope where a <= 0, 1 where a > 0


@dataclass(frozen=True)
class Activation:
    """An activation ``f`` with ``f'`` expressed through ``a = f(z)``, and its code in the compiled kernel."""

    name: str
    forward: Callable[[np.ndarray, np.ndarray], None]
    grad_from_output: Callable[[np.ndarray, np.ndarray], None]
    code: int


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in (
        Activation("sigmoid", _sigmoid, _sigmoid_grad, SIGMOID),
        Activation("tanh", _tanh, _tanh_grad, TANH),
        Activation("relu", _relu, _relu_grad, RELU),
        Activation("leaky-relu", _leaky_relu, _leaky_relu_grad, LEAKY_RELU),
    )
}
