"""The mini-batch step with its small elementwise work fused into a few compiled passes (numba).

At batch 32 (784-128-10) the matrix products are about three quarters of a
numpy step; most of the rest is some thirty numpy calls on small arrays (bias
adds, activation and its derivative, softmax, loss, bias gradients) and the
passes of the SGD update over every parameter. Here the products stay numpy's
(BLAS) and the rest runs as a few numba calls:

- per hidden layer, one pass: a = f(z + b);
- at the output, one pass over the rows: outputs, loss, delta = scale * dLoss/dz,
  and the output bias gradient (delta's column sums);
- per layer below, one pass: delta *= f'(a), and that layer's bias gradient;
- the update, one pass over the parameter buffer: v = mu v + g; p -= lr v.

The results agree with ``Network.forward``/``backward`` and ``sgd_step`` to
rounding, not bit for bit (the same seed and path still give the same bits).
``--kernel numba`` chooses it; ``auto`` keeps the numpy step for mini-batches,
since numba costs about 100 MiB per rank (training/train.py, mini_batch_step).
The _k_ functions run uncompiled as the "python" backend, so their logic is
tested where numba is missing.
"""

from __future__ import annotations

import functools

import numpy as np

from . import kernels
from .activations import LEAKY_RELU, RELU, SIGMOID, TANH
from .kernels import LOG_FLOOR, ZERO, compile_functions, compiled_namespace, heavy_ball, k_act, k_act_grad, k_output, kernel_constants
from .losses import SIGMOID_MSE, SOFTMAX_XENT
from .network import Network, Workspace

FUSED_ACTIVATIONS = frozenset({SIGMOID, TANH, RELU, LEAKY_RELU})
FUSED_OUTPUTS = frozenset({SOFTMAX_XENT, SIGMOID_MSE})


def supports(net: Network) -> bool:
    """Whether the fused step has kernels for ``net``'s activation and output (else the numpy step runs)."""
    return net.activation.code in FUSED_ACTIVATIONS and net.output.code in FUSED_OUTPUTS


class FusedStep:
    """Gradients and the SGD update of mini-batches for one network, through compiled passes.

    Building one compiles the kernels (or loads them from numba's cache) with a
    one-sample step on scratch buffers, so no compile falls inside a timed loop.
    """

    def __init__(self, net: Network, backend: str = "numba", warm_up: bool = True):
        if not supports(net):
            raise ValueError(f"no fused kernels for activation {net.activation_name!r} with output {net.output_name!r}")
        self.net = net
        self.backend = backend
        k = _compiled() if backend == "numba" else globals()
        self._bias_activate, self._output, self._backprop, self._update = (k[n] for n in _FUNCTIONS)
        self.consts = kernel_constants(net.dtype)
        self.codes = (net.activation.code, net.output.code)
        self.scalar = net.dtype.type
        self.no_velocity = np.zeros(0, net.dtype)
        if warm_up:  # a step of a twin of the same dtype and depth: the compile happens now
            twin = Network(tuple(min(n, 2) for n in net.sizes), net.activation_name, net.output_name, net.dtype)
            ws = twin.workspace(1)
            FusedStep(twin, backend, warm_up=False).gradients(ws.inputs, ws.labels, ws, 1.0)
            for velocity in (None, np.zeros_like(twin.params)):
                self.update(twin.params, twin.grads, velocity, 0.0, 0.5)

    def gradients(self, x: np.ndarray, labels: np.ndarray, ws: Workspace, scale: float) -> float:
        """``Network.forward`` then ``backward``: ``scale`` times the batch's summed gradient into
        ``net.grads``; returns the summed loss. ``x`` has the network's dtype."""
        net, b, c = self.net, len(x), self.consts
        act, out_kind = self.codes
        top = net.depth - 1
        below = x
        for layer in range(top):
            a = ws.a[layer][:b]
            np.dot(below, net.weights[layer], out=a)
            self._bias_activate(act, a, net.biases[layer], c)
            below = a
        outputs, delta = ws.a[top][:b], ws.delta[top][:b]
        np.dot(below, net.weights[top], out=outputs)
        loss = self._output(out_kind, outputs, net.biases[top], labels, self.scalar(scale), delta, net.grad_biases[top], c)
        for layer in range(top, -1, -1):
            below = x if layer == 0 else ws.a[layer - 1][:b]
            np.dot(below.T, delta, out=net.grad_weights[layer])
            if layer == 0:
                break
            back = ws.delta[layer - 1][:b]
            np.dot(delta, net.weights[layer].T, out=back)
            self._backprop(act, back, below, net.grad_biases[layer - 1], c)
            delta = back
        return float(loss)

    def update(self, params: np.ndarray, grads: np.ndarray, velocity: np.ndarray | None, lr: float, momentum: float) -> None:
        """``sgd_step`` in one pass: v = momentum v + g, p -= lr v (without a velocity: p -= lr g)."""
        self._update(params, grads, self.no_velocity if velocity is None else velocity, self.scalar(lr), self.scalar(momentum))


def precompile() -> None:
    """The batch-1 kernels' ``precompile``, then the fused kernels for float32 and float64 into numba's
    on-disk cache: ranks started later load them (~0.2 s) instead of each compiling them (~1 s)."""
    kernels.precompile()
    for dtype in ("float32", "float64"):
        FusedStep(Network((2, 2, 2), dtype=dtype))


_FUNCTIONS = ("_k_bias_activate", "_k_output_rows", "_k_backprop_rows", "_k_update_all")


@functools.cache
def _compiled() -> dict:
    """This module's kernels compiled by numba, calling the batch-1 kernels' compiled helpers."""
    helpers = compiled_namespace()
    return compile_functions(globals(), _FUNCTIONS, {n: helpers[n] for n in ("heavy_ball", "k_act", "k_act_grad", "k_output")})


def _k_bias_activate(kind, a, bias, c):
    """a = f(a + b) in place on every row: a hidden layer's bias add and activation in one pass."""
    for r in range(a.shape[0]):
        row = a[r]
        for j in range(row.shape[0]):
            row[j] = k_act(kind, row[j] + bias[j], c)


def _k_output_rows(kind, z, bias, labels, scale, delta, grad_bias, c):
    """Row by row: outputs g(z + b) in z, delta = scale * dLoss/dz; grad_bias = delta's column sums.
    Returns the summed loss.

    Softmax with cross-entropy is written out here in three passes per row, with
    delta rounded as losses.py rounds it: through a call per row (numba does not
    inline it) this pass took 4.2 µs at batch 32 instead of 2.4. Sigmoid with
    squared error takes the batch-1 kernel's ``k_output``.
    """
    n = z.shape[1]
    for j in range(n):
        grad_bias[j] = c[ZERO]
    total = 0.0
    for r in range(z.shape[0]):
        row, d, label = z[r], delta[r], labels[r]
        m = row[0] + bias[0]
        for j in range(n):
            row[j] = row[j] + bias[j]
            if row[j] > m:
                m = row[j]
        if kind == SOFTMAX_XENT:
            s = c[ZERO]
            for j in range(n):
                row[j] = np.exp(row[j] - m)
                s += row[j]
            for j in range(n):
                row[j] = row[j] / s
                d[j] = row[j] * scale
            d[label] = d[label] - scale
            t = row[label]
            total -= float(np.log(t if t > c[LOG_FLOOR] else c[LOG_FLOOR]))
        else:
            total += k_output(kind, row, label, d, c)
            for j in range(n):
                d[j] = d[j] * scale
        for j in range(n):
            grad_bias[j] += d[j]
    return total


def _k_backprop_rows(kind, back, a, grad_bias, c):
    """back *= f'(a) (a = f(z) of the layer below), and grad_bias = back's column sums, in one pass."""
    n = back.shape[1]
    for j in range(n):
        grad_bias[j] = c[ZERO]
    for r in range(back.shape[0]):
        row, out = back[r], a[r]
        for j in range(n):
            row[j] = row[j] * k_act_grad(kind, out[j], c)
            grad_bias[j] += row[j]


def _k_update_all(params, grads, velocity, lr, mu):
    """p -= lr v after v = mu v + g, element by element (``heavy_ball``); with no velocity, p -= lr g."""
    if velocity.shape[0] > 0:
        for i in range(params.shape[0]):
            v = heavy_ball(velocity[i], grads[i], mu)
            velocity[i] = v
            params[i] -= v * lr
    else:
        for i in range(params.shape[0]):
            params[i] -= grads[i] * lr
