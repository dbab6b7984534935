"""The mini-batch step compiled (numba): ``--kernel numba`` for mini-batches.

At batch 32 (784-128-10) the matrix products are about 70% of a numpy step;
the rest is gathering the batch, some thirty numpy calls on small arrays (bias
adds, activation and its derivative, softmax, loss, bias gradients), the passes
of the SGD update over every parameter, and Python between them. Here:

- ``FusedStep.steps`` runs every step between two collectives in one compiled
  call (``_k_train_steps``); each step (``_k_train_step``) gathers its rows,
  runs the products through numpy's own BLAS gemm (blas.py finds it,
  blas_numba.py calls it) and folds the update into the weight-gradient
  products: gemm's C = alpha A B + beta C writes v = mu v + g into the momentum,
  or without momentum p - lr g into the weights, so no gradient buffer is
  written and read back. ``step(update=False)`` leaves the gradient instead
  (the grad schedule, whose gradients are summed across ranks first).
- The elementwise work runs as passes: per hidden layer a = f(z + b); at the
  output, row by row, outputs, loss, delta = scale * dLoss/dz and the output
  bias gradient; per layer below, delta *= f'(a) with that layer's bias
  gradient; then p -= lr v over the buffer.
- Where numpy's BLAS is not one blas.py can call (``whole`` false), the numpy
  products run from Python between the same passes (``gradients``, ``update``).

The results agree with ``Network.forward``/``backward`` and ``sgd_step`` to
rounding, not bit for bit (the same seed and path still give the same bits).
``auto`` keeps the numpy step for mini-batches, since numba costs about 100 MiB
per rank (training/train.py, mini_batch_step). The _k_ functions run
uncompiled as the "python" backend (numpy's ``@`` standing in for gemm), so
their logic is tested where numba is missing.
"""

from __future__ import annotations

import functools

import numpy as np

from . import blas, kernels
from .activations import LEAKY_RELU, RELU, SIGMOID, TANH
from .kernels import LOG_FLOOR, ZERO, compile_functions, compiled_namespace, heavy_ball, k_act, k_act_grad, k_output, kernel_constants
from .losses import SIGMOID_MSE, SOFTMAX_XENT
from .network import Network, Workspace, layout

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
        self._bias_activate, self._output, self._backprop, self._update, self._train_step, self._train_steps = (k[n] for n in _FUNCTIONS)
        found = blas.numpy_gemm()
        # The whole step in one call needs numpy's gemm (uncompiled, numpy's @ stands in for it).
        self.blas = np.array([found.sgemm, found.dgemm, found.wide] if found else [0, 0, 0], np.int64)
        self.whole = backend != "numba" or found is not None
        slots = layout(net.sizes)
        rows_at = np.cumsum([0] + [s.n_out for s in slots])
        self.slots = np.array([(s.n_in, s.n_out, s.weights_at, s.bias_at, at) for s, at in zip(slots, rows_at)], np.int64)
        self.consts = kernel_constants(net.dtype)
        self.codes = (net.activation.code, net.output.code)
        self.scalar = net.dtype.type
        self.no_velocity = np.zeros(0, net.dtype)
        self.box = np.zeros(1, net.dtype)
        if warm_up:  # steps of a twin of the same dtype and depth: the compiles happen now
            twin = Network(tuple(min(n, 2) for n in net.sizes), net.activation_name, net.output_name, net.dtype)
            ws = twin.workspace(1)
            step = FusedStep(twin, backend, warm_up=False)
            step.gradients(ws.inputs, ws.labels, ws, 1.0)
            for velocity in (None, np.zeros_like(twin.params)):
                self.update(twin.params, twin.grads, velocity, 0.0, 0.5)
                if step.whole:
                    x, labels, order = np.zeros_like(ws.inputs), ws.labels.copy(), np.zeros(1, np.intp)
                    step.step(x, labels, order, ws, 1.0, velocity, 0.0, 0.5)
                    step.steps(x, labels, order, 0, 1, 1, ws, velocity, 0.0, 0.5)

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

    def step(self, x_all, y_all, picked, ws: Workspace, scale: float, velocity=None, lr: float = 0.0, momentum: float = 0.0, update: bool = True) -> float:
        """Rows ``picked`` of the slice ``x_all``/``y_all`` through one compiled call (``whole`` must be
        true), in ``ws``'s buffers: with ``update``, gradients scaled by ``scale`` and the SGD update;
        without, the gradient into ``net.grads`` as ``gradients`` leaves it. Returns the summed loss."""
        (act, out_kind), s = self.codes, self.scalar
        buffers = self._buffers(ws, len(picked), velocity, momentum)
        return float(self._train_step(self.blas, act, out_kind, x_all, y_all, picked, *buffers, s(scale), s(lr), s(momentum), update, self.consts))

    def steps(self, x_all, y_all, order, start: int, stop: int, batch: int, ws: Workspace, velocity, lr: float, momentum: float) -> float:
        """Steps ``start`` to ``stop`` of an epoch through ``order`` (``step`` with update, one batch
        after another) in one compiled call: no Python between them. Returns their summed loss."""
        (act, out_kind), s = self.codes, self.scalar
        buffers = self._buffers(ws, batch, velocity, momentum)
        return float(self._train_steps(self.blas, act, out_kind, x_all, y_all, order, start, stop, batch, *buffers, s(lr), s(momentum), self.consts, self.box))

    def _buffers(self, ws: Workspace, batch: int, velocity, momentum: float) -> tuple:
        """The compiled step's arrays after the batch: the workspace's flat buffers, the layer table, the parameters."""
        if not self.whole:  # the compiled call would jump to gemm at address 0
            raise RuntimeError("no gemm of numpy's that compiled code can call here: use gradients() and update()")
        if batch > ws.capacity:
            raise ValueError(f"batches of {batch} do not fit a workspace for {ws.capacity}")
        velocity = self.no_velocity if velocity is None or not momentum else velocity
        return ws.inputs.reshape(-1), ws.labels, ws.a_flat, ws.delta_flat, ws.capacity, self.slots, self.net.params, self.net.grads, velocity

    def update(self, params: np.ndarray, grads: np.ndarray, velocity: np.ndarray | None, lr: float, momentum: float) -> None:
        """``sgd_step`` in one pass: v = momentum v + g, p -= lr v (without a velocity: p -= lr g)."""
        self._update(params, grads, self.no_velocity if velocity is None else velocity, self.scalar(lr), self.scalar(momentum))


def precompile() -> None:
    """The batch-1 kernels' ``precompile``, then the fused kernels for float32 and float64 into numba's
    on-disk cache: ranks started later load them (~0.2 s) instead of each compiling them (~1 s)."""
    kernels.precompile()
    for dtype in ("float32", "float64"):
        FusedStep(Network((2, 2, 2), dtype=dtype))


_FUNCTIONS = ("_k_bias_activate", "_k_output_rows", "_k_backprop_rows", "_k_update_all", "_k_train_step", "_k_train_steps")


@functools.cache
def _compiled() -> dict:
    """This module's kernels compiled by numba, calling the batch-1 kernels' compiled helpers and BLAS's gemm."""
    from . import blas_numba

    helpers = compiled_namespace()
    helpers = {n: helpers[n] for n in ("heavy_ball", "k_act", "k_act_grad", "k_output")}
    return compile_functions(globals(), _FUNCTIONS, {**helpers, "k_gemm": blas_numba.k_gemm})


def k_gemm(blas, ta, tb, alpha, a, b, beta, c):
    """c = alpha op(a) op(b) + beta c: numpy's product, for the uncompiled ("python") backend
    (compiled, it is blas_numba.k_gemm, a call into numpy's own BLAS)."""
    product = (a.T if ta else a) @ (b.T if tb else b)
    c[...] = alpha * product if beta == 0 else alpha * product + beta * c


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


# Columns of the layer table the whole step gets (FusedStep.slots): one row per layer.
N_IN, N_OUT, WEIGHTS_AT, BIAS_AT, ROWS_AT = range(5)


def _k_train_step(blas, act, out_kind, x_all, y_all, picked, inputs, labels, acts, deltas, capacity, slots, params, grads, velocity, scale, lr, mu, update, c):
    """A whole mini-batch step in one call: gather rows ``picked`` of the slice, forward, backward and,
    with ``update``, the SGD update; else ``scale`` times the summed gradient into ``grads``.
    Returns the summed loss.

    ``inputs``, ``acts`` and ``deltas`` are a workspace's flat buffers (network.py):
    layer l's outputs and errors are the leading (b, width) rows of the blocks from
    ``capacity`` * its ROWS_AT. The weight gradient goes where the update
    needs it: into the momentum (v = mu v + g, gemm's beta = mu) or, without
    momentum, straight into the weights (gemm's alpha = -lr); a layer's weights
    change only after they have carried the error down. The biases take their
    step at the end, then every parameter p -= lr v.
    """
    b, n_in = picked.shape[0], x_all.shape[1]
    for r in range(b):
        labels[r] = y_all[picked[r]]
        row = x_all[picked[r]]
        for j in range(n_in):
            inputs[r * n_in + j] = row[j]
    x = inputs[: b * n_in].reshape((b, n_in))
    top = slots.shape[0] - 1
    below = x
    for layer in range(top + 1):
        n_i, n_o, w_at, b_at, at = slots[layer, N_IN], slots[layer, N_OUT], slots[layer, WEIGHTS_AT], slots[layer, BIAS_AT], slots[layer, ROWS_AT] * capacity
        a = acts[at : at + b * n_o].reshape((b, n_o))
        k_gemm(blas, False, False, 1.0, below, params[w_at:b_at].reshape((n_i, n_o)), 0.0, a)
        if layer < top:
            _k_bias_activate(act, a, params[b_at : b_at + n_o], c)
        below = a
    n_o, b_at, at = slots[top, N_OUT], slots[top, BIAS_AT], slots[top, ROWS_AT] * capacity
    delta = deltas[at : at + b * n_o].reshape((b, n_o))
    loss = _k_output_rows(out_kind, below, params[b_at : b_at + n_o], labels, scale, delta, grads[b_at : b_at + n_o], c)
    momentum = velocity.shape[0] > 0
    for layer in range(top, -1, -1):
        n_i, n_o, w_at, b_at = slots[layer, N_IN], slots[layer, N_OUT], slots[layer, WEIGHTS_AT], slots[layer, BIAS_AT]
        weights = params[w_at:b_at].reshape((n_i, n_o))
        below = x
        if layer > 0:
            under, at = slots[layer - 1, BIAS_AT], slots[layer - 1, ROWS_AT] * capacity
            below = acts[at : at + b * n_i].reshape((b, n_i))
            back = deltas[at : at + b * n_i].reshape((b, n_i))
            k_gemm(blas, False, True, 1.0, delta, weights, 0.0, back)
            _k_backprop_rows(act, back, below, grads[under : under + n_i], c)
        if not update:
            k_gemm(blas, True, False, 1.0, below, delta, 0.0, grads[w_at:b_at].reshape((n_i, n_o)))
        elif momentum:
            k_gemm(blas, True, False, 1.0, below, delta, mu, velocity[w_at:b_at].reshape((n_i, n_o)))
        else:
            k_gemm(blas, True, False, -lr, below, delta, 1.0, weights)
        if layer > 0:
            delta = back
    if update:
        for layer in range(top + 1):
            b_at, n_o = slots[layer, BIAS_AT], slots[layer, N_OUT]
            for j in range(b_at, b_at + n_o):
                if momentum:
                    velocity[j] = heavy_ball(velocity[j], grads[j], mu)
                else:
                    params[j] -= grads[j] * lr
        if momentum:
            for i in range(params.shape[0]):
                params[i] -= velocity[i] * lr
    return loss


def _k_train_steps(
    blas, act, out_kind, x_all, y_all, order, start, stop, batch, inputs, labels, acts, deltas, capacity, slots, params, grads, velocity, lr, mu, c, box
):
    """Steps ``start`` to ``stop`` of an epoch (batch ``batch`` of ``order`` each, its gradient the
    batch's mean) with their updates, in one call; returns their summed loss. A batch past the
    slice's end (one sample short of the others) takes no step. ``box``, one value of the
    parameters' dtype, rounds 1 / batch as the Python caller of ``_k_train_step`` does."""
    total = 0.0
    for s in range(start, stop):
        picked = order[s * batch : min((s + 1) * batch, order.shape[0])]
        if picked.shape[0] > 0:
            box[0] = 1.0 / picked.shape[0]
            total += _k_train_step(
                blas, act, out_kind, x_all, y_all, picked, inputs, labels, acts, deltas, capacity, slots, params, grads, velocity, box[0], lr, mu, True, c
            )
    return total
