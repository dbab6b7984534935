"""Stochastic SGD (batch 1, the paper's mode) over many samples per call.

A generic batch-1 step is some forty numpy calls on vectors of ten or a hundred
numbers, plus a dense update of every first-layer weight, although a digit
lights up only about 19% of its pixels and a dark pixel's weights get a zero
gradient. ``local_steps`` runs the samples ``order[start:stop]`` one after
another, each exactly the generic step (forward, backward with scale 1, then
the SGD update), and returns their summed loss. Backends:

``numba``  one compiled call runs all the samples, with no Python per sample;
           without momentum it touches only the weight rows of non-zero inputs;
``numpy``  a Python loop with reused buffers; without momentum it gathers and
           updates only the first-layer rows of the sample's non-zero pixels,
           found through a per-slice sparse index built once;
``auto``   numba when it can be imported, else numpy.

Momentum decays every velocity at every step, so with momentum every update is
dense (numba still runs it compiled; numpy then runs the generic step).

numba is optional (the ``fast`` extra). It is imported, and the kernel compiled
(cached on disk), on first use of the numba backend, never at import.
"""

from __future__ import annotations

import functools
import importlib.util
import types

import numpy as np

from .activations import LEAKY_RELU, LEAKY_SLOPE, RELU, SIGMOID, TANH
from .losses import SOFTMAX_XENT, TINY
from .network import Network, layout
from .optim import heavy_ball, sgd_step

BACKENDS = ("auto", "numba", "numpy")

# Positions in the constants array the compiled kernel gets (see kernel_constants).
ZERO, ONE, HALF, SLOPE, LOG_FLOOR = range(5)


def kernel_constants(dtype) -> np.ndarray:
    """The kernel's constants in the parameters' dtype, so float32 networks compute in float32 as numpy does."""
    values = {ZERO: 0.0, ONE: 1.0, HALF: 0.5, SLOPE: LEAKY_SLOPE, LOG_FLOOR: TINY}
    return np.array([values[i] for i in range(len(values))], dtype=dtype)


def numba_available() -> bool:
    """Whether numba can be found (it is not imported here: that costs ~0.5 s and ~100 MB)."""
    try:
        return importlib.util.find_spec("numba") is not None
    except (ImportError, ValueError):
        return False


def resolve(backend: str) -> str:
    """The backend that ``backend`` names: "auto" becomes numba or numpy."""
    if backend == "auto":
        return "numba" if numba_available() else "numpy"
    if backend not in BACKENDS and backend != "python":
        raise ValueError(f"unknown kernel backend {backend!r}: choose from {', '.join(BACKENDS)}")
    if backend == "numba" and not numba_available():
        raise ValueError("the numba backend needs numba: pip install 'pnn_mpi[fast]'")
    return backend


def local_steps(
    net: Network, velocity, x, y, order, start: int, stop: int, lr: float, momentum: float, *, backend: str = "auto", stepper: SampleStepper | None = None
) -> float:
    """Per-sample SGD on ``order[start:stop]``, updating ``net.params`` (and ``velocity``) in place.

    Equal to running, for each sample, ``gradients`` with scale 1 and then
    ``SGD.step``. Returns the summed loss. Pass a ``stepper`` built once for
    repeated calls on the same slice: it holds the buffers and the sparse index.
    """
    stepper = stepper or SampleStepper(net, x, backend)
    return stepper.run(velocity, y, order, start, stop, lr, momentum)


class SampleStepper:
    """Batch-1 SGD for one network on one slice ``x``; keeps what calls share.

    Building one does the one-off work: the sparse index (numpy), or loading the
    compiled kernel (numba: about 2 s per dtype the first time, then from
    numba's cache in about 0.2 s). Build it before the timed loop.
    """

    def __init__(self, net: Network, x: np.ndarray, backend: str = "auto"):
        if x.dtype != net.dtype or x.ndim != 2 or x.shape[1] != net.sizes[0]:
            raise ValueError(f"inputs of shape {x.shape} and dtype {x.dtype} do not fit network {net.sizes} ({net.dtype})")
        self.net = net
        self.x = np.ascontiguousarray(x)
        self.backend = resolve(backend)
        try:
            self._impl = _NumpySteps(net, self.x) if self.backend == "numpy" else _CompiledSteps(net, self.x, self.backend)
        except ImportError:  # numba is there but cannot load (e.g. too old for this numpy)
            if backend != "auto":
                raise
            self.backend, self._impl = "numpy", _NumpySteps(net, self.x)

    def run(self, velocity, y, order, start: int, stop: int, lr: float, momentum: float) -> float:
        stop = min(int(stop), len(order))
        if start >= stop:
            return 0.0
        if momentum and velocity is None:
            raise ValueError("momentum needs a velocity buffer (SGD(params, momentum).velocity)")
        return self._impl.run(velocity if momentum else None, y, order, int(start), stop, lr, momentum)


# --- numpy: a Python loop over samples, sparse first-layer rows ---------------------------------


def sparse_rows(x: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, columns): the non-zero entries of each row of ``x``, CSR-style, built chunk by chunk.

    Columns are stored in the smallest unsigned type that holds them: two bytes
    for MNIST's 784 pixels, so with 19% of them lit the index costs about a
    tenth of the float32 slice.
    """
    kind = np.uint16 if x.shape[1] <= np.iinfo(np.uint16).max + 1 else np.uint32
    counts = np.zeros(len(x) + 1, dtype=np.int64)
    pieces = []
    for at in range(0, len(x), chunk):
        mask = x[at : at + chunk] != 0
        counts[at + 1 : at + 1 + len(mask)] = np.count_nonzero(mask, axis=1)
        pieces.append(np.nonzero(mask)[1].astype(kind))
    return np.cumsum(counts), np.concatenate(pieces) if pieces else np.zeros(0, kind)


class _NumpySteps:
    def __init__(self, net: Network, x: np.ndarray):
        self.net, self.x = net, x
        self.indptr, self.columns = sparse_rows(x)
        self.ws = ws = net.workspace(1)
        width, dtype = net.sizes[1], net.dtype
        self.rows = np.zeros((net.sizes[0], width), dtype)  # gathered first-layer rows
        self.step = np.zeros((net.sizes[0], width), dtype)  # their update
        self.index = np.zeros(net.sizes[0], np.intp)
        self.values = np.zeros((net.sizes[0], 1), dtype)
        # One-row views of the workspace, made once: (z, a, delta, lr * delta) per layer.
        self.layers = [(z[:1], a[:1], d[:1], np.zeros(len(b), dtype)) for z, a, d, b in zip(ws.z, ws.a, ws.delta, net.biases)]

    def run(self, velocity, y, order, start, stop, lr, momentum) -> float:
        if velocity is not None:
            return self._dense(velocity, y, order, start, stop, lr, momentum)
        net, x, layers = self.net, self.x, self.layers
        act, output, rows_scratch = net.activation, net.output, self.ws.rows
        top = net.depth - 1
        w0 = net.weights[0]
        total = 0.0
        for k in range(start, stop):
            i = order[k]
            lo, hi = self.indptr[i], self.indptr[i + 1]
            cols = self.index[: hi - lo]
            cols[...] = self.columns[lo:hi]
            vals = self.values[: hi - lo]
            x[i].take(cols, 0, vals[:, 0], "clip")
            rows = w0.take(cols, 0, self.rows[: hi - lo], "clip")  # the only first-layer rows with a gradient
            # Forward; the first layer from the non-zero pixels only.
            below = vals.T
            for layer, (z, a, _, _) in enumerate(layers):
                np.dot(below, rows if layer == 0 else net.weights[layer], out=z)
                z[0] += net.biases[layer]
                if layer == top:
                    output.forward(z, a, rows_scratch)
                else:
                    act.forward(z, a)
                below = a
            total += output.backward(layers[top][1], y[i : i + 1], 1.0, layers[top][2], rows_scratch)
            # Backward and update, top down: a layer's weights change only after
            # they have carried the error to the layer below. The step is
            # below (x) (lr * delta): lr scales the short vector, not the matrix.
            for layer in range(top, -1, -1):
                delta, scaled = layers[layer][2], layers[layer][3]
                if layer:
                    z, below, back, _ = layers[layer - 1]
                    np.dot(delta, net.weights[layer].T, out=back)
                    act.grad_from_output(below, z)  # z is spent: scratch for f'
                    back *= z
                np.multiply(delta[0], lr, out=scaled)
                if layer:
                    net.weights[layer] -= np.dot(below.T, scaled[None], out=net.grad_weights[layer])
                else:
                    rows -= np.dot(vals, scaled[None], out=self.step[: hi - lo])
                    w0[cols] = rows
                net.biases[layer] -= scaled
        return total

    def _dense(self, velocity, y, order, start, stop, lr, momentum) -> float:
        """The generic step, sample by sample: with momentum every parameter moves."""
        net, ws, x = self.net, self.ws, self.x
        grads = net.grads
        total = 0.0
        for k in range(start, stop):
            i = order[k]
            inputs = ws.inputs[:1]
            inputs[0] = x[i]
            net.forward(inputs, ws)
            total += net.backward(inputs, y[i : i + 1], ws, 1.0)
            sgd_step(net.params, grads, lr, velocity, momentum)
        return total


# --- numba: one compiled call for all samples ------------------------------------------------
#
# The functions prefixed _k_ (k_ for those the fused mini-batch step, fused.py,
# shares) are written for numba's nopython mode (scalar loops on flat arrays) and also run, slowly, as plain Python: the "python" backend
# runs them uncompiled so their logic is tested where numba is missing. Each
# mirrors the numpy code's order of operations, so results agree to rounding.
# Constants come in the array ``c`` (see kernel_constants), indexed by ZERO, ONE, ...;
# the activation and output codes are the tables' own (activations.py, losses.py),
# and numba compiles the module-level names in as constants.


class _CompiledSteps:
    def __init__(self, net: Network, x: np.ndarray, backend: str):
        self.net, self.x = net, x
        self.kernel = _compiled() if backend == "numba" else _k_run
        slots = layout(net.sizes)
        self.layout = (
            np.array(net.sizes, dtype=np.int64),
            np.array([s.weights_at for s in slots], np.int64),
            np.array([s.bias_at for s in slots], np.int64),
            np.cumsum([0, *net.sizes[1:]]).astype(np.int64),  # where each layer's activations start in acts/deltas
        )
        self.acts = np.zeros(sum(net.sizes[1:]), net.dtype)
        self.deltas = np.zeros_like(self.acts)
        self.consts = kernel_constants(net.dtype)
        self.codes = (net.activation.code, net.output.code)
        self.no_velocity = np.zeros(0, net.dtype)
        self.run(None, np.zeros(1, np.intp), np.zeros(1, np.intp), 0, 0, 0.0, 0.0)  # compile (or load) now, not mid-epoch

    def run(self, velocity, y, order, start, stop, lr, momentum) -> float:
        sizes, w_at, b_at, a_at = self.layout
        scalar = self.net.dtype.type
        return float(
            self.kernel(
                self.net.params,
                self.no_velocity if velocity is None else velocity,
                sizes,
                w_at,
                b_at,
                a_at,
                self.x,
                np.asarray(y),
                np.asarray(order),
                start,
                stop,
                scalar(lr),
                scalar(momentum),
                self.codes[0],
                self.codes[1],
                self.consts,
                self.acts,
                self.deltas,
            )
        )


def precompile() -> None:
    """Compile the numba kernel for float32 and float64 into numba's on-disk cache,
    so that ranks started later load it (~0.2 s) instead of each compiling it (~2 s)."""
    for dtype in ("float32", "float64"):
        net = Network((2, 2, 2), dtype=dtype)
        SampleStepper(net, np.zeros((1, 2), dtype), "numba")


_KERNEL_FUNCTIONS = ("heavy_ball", "k_act", "k_act_grad", "_k_activate", "_k_scale_by_grad", "k_output", "_k_layer_forward", "_k_update", "_k_run")


@functools.cache
def _compiled():
    """The numba-compiled ``_k_run``, compiled on first call (cached on disk by numba)."""
    return compiled_namespace()["_k_run"]


@functools.cache
def compiled_namespace() -> dict:
    """This module's _k_ functions compiled by numba (lazily, on first call), by name."""
    return compile_functions(globals(), _KERNEL_FUNCTIONS)


def compile_functions(source: dict, names, compiled: dict | None = None) -> dict:
    """A namespace in which each function ``names`` (callees before callers) of ``source`` is numba-compiled.

    Each is cloned into a namespace where the helpers it calls (those before it,
    and ``compiled``'s) are already compiled, so the modules' own functions stay
    plain Python and run, slowly, where numba is missing.
    """
    import numba

    namespace = {**source, **(compiled or {})}
    for name in names:
        plain = source[name]
        clone = types.FunctionType(plain.__code__, namespace, name, plain.__defaults__, plain.__closure__)
        clone.__qualname__, clone.__module__, clone.__doc__ = plain.__qualname__, plain.__module__, plain.__doc__
        namespace[name] = numba.njit(cache=True, nogil=True)(clone)
    return namespace


def k_act(kind, v, c):
    """f(v) for hidden activation ``kind`` (an Activation's code), one element."""
    zero, half, slope = c[ZERO], c[HALF], c[SLOPE]
    if kind == SIGMOID:  # as 1/2 + tanh(z/2)/2, like activations._sigmoid
        return np.tanh(v * half) * half + half
    if kind == TANH:
        return np.tanh(v)
    if kind == RELU:
        return zero if v < zero else v
    s = v * slope
    return s if s > v else v


def k_act_grad(kind, v, c):
    """f' at an element whose output is v = f(z), written through the output as in activations.py."""
    zero, one, slope = c[ZERO], c[ONE], c[SLOPE]
    if kind == SIGMOID:
        return (one - v) * v
    if kind == TANH:
        return one - v * v
    g = one if v > zero else (-one if v < zero else v)  # np.sign (0 and NaN stay)
    if kind == LEAKY_RELU and not g > slope:
        g = slope if g == g else g
    return g


def _k_activate(kind, z, c):
    """z = f(z) in place for hidden activation ``kind``."""
    for j in range(z.shape[0]):
        z[j] = k_act(kind, z[j], c)


def _k_scale_by_grad(kind, a, back, c):
    """back *= f'(a), with f' written through the output a = f(z)."""
    for p in range(a.shape[0]):
        back[p] = back[p] * k_act_grad(kind, a[p], c)


def k_output(kind, z, label, delta, c):
    """Outputs in place, delta = dLoss/dz (scale 1); returns the loss (as losses.py)."""
    one, half, tiny = c[ONE], c[HALF], c[LOG_FLOOR]
    n = z.shape[0]
    if kind == SOFTMAX_XENT:
        m = z[0]
        for j in range(1, n):
            if z[j] > m:
                m = z[j]
        s = c[ZERO]
        for j in range(n):
            z[j] = np.exp(z[j] - m)
            s += z[j]
        for j in range(n):
            z[j] = z[j] / s
            delta[j] = z[j]
        delta[label] = delta[label] - one
        t = z[label]
        return -float(np.log(t if t > tiny else tiny))
    squares = c[ZERO]
    for j in range(n):  # otherwise sigmoid + 1/2 squared error
        z[j] = np.tanh(z[j] * half) * half + half
        squares += z[j] * z[j]
        delta[j] = ((one - z[j]) * z[j]) * z[j]
    t = z[label]
    delta[label] = ((t - one) * t) * (one - t)
    return 0.5 * (float(squares) - (2.0 * float(t) - 1.0))


def _k_layer_forward(params, w_at, b_at, below, z, c):
    """z = below @ W + b, skipping zero inputs (their terms are exactly zero)."""
    n_out = z.shape[0]
    for j in range(n_out):
        z[j] = c[ZERO]
    for p in range(below.shape[0]):
        v = below[p]
        if v != 0:
            w = params[w_at + p * n_out : w_at + (p + 1) * n_out]  # row views index from 0: vectorisable loops
            for j in range(n_out):
                z[j] += v * w[j]
    bias = params[b_at : b_at + n_out]
    for j in range(n_out):
        z[j] += bias[j]


def _k_update(params, velocity, w_at, b_at, below, delta, lr, mu):
    """The SGD step of one layer: W -= lr * below (x) delta, b -= lr * delta, as optim.SGD does.

    Without momentum, rows of zero inputs have a zero gradient and are skipped;
    with it, every velocity decays, so every row is updated.
    """
    n_out = delta.shape[0]
    if velocity.shape[0] > 0:
        for p in range(below.shape[0]):
            v = below[p]
            w = params[w_at + p * n_out : w_at + (p + 1) * n_out]
            m = velocity[w_at + p * n_out : w_at + (p + 1) * n_out]
            for j in range(n_out):
                m[j] = heavy_ball(m[j], v * delta[j], mu)
                w[j] -= m[j] * lr
        bias, m = params[b_at : b_at + n_out], velocity[b_at : b_at + n_out]
        for j in range(n_out):
            m[j] = heavy_ball(m[j], delta[j], mu)
            bias[j] -= m[j] * lr
    else:
        for p in range(below.shape[0]):
            v = below[p]
            if v != 0:
                w = params[w_at + p * n_out : w_at + (p + 1) * n_out]
                for j in range(n_out):
                    w[j] -= (v * delta[j]) * lr
        bias = params[b_at : b_at + n_out]
        for j in range(n_out):
            bias[j] -= delta[j] * lr


def _k_run(params, velocity, sizes, w_at, b_at, a_at, x, y, order, start, stop, lr, mu, act, out_kind, c, acts, deltas):
    """Per-sample SGD on x[order[start:stop]]; returns the summed loss."""
    depth = sizes.shape[0] - 1
    total = 0.0
    for k in range(start, stop):
        i = order[k]
        sample = x[i]
        for layer in range(depth):
            below = sample if layer == 0 else acts[a_at[layer - 1] : a_at[layer]]
            z = acts[a_at[layer] : a_at[layer + 1]]
            _k_layer_forward(params, w_at[layer], b_at[layer], below, z, c)
            if layer == depth - 1:
                total += k_output(out_kind, z, y[i], deltas[a_at[layer] : a_at[layer + 1]], c)
            else:
                _k_activate(act, z, c)
        for layer in range(depth - 1, -1, -1):
            delta = deltas[a_at[layer] : a_at[layer + 1]]
            below = sample if layer == 0 else acts[a_at[layer - 1] : a_at[layer]]
            if layer > 0:  # carry the error down through the weights before they change
                back = deltas[a_at[layer - 1] : a_at[layer]]
                n_out = delta.shape[0]
                for p in range(back.shape[0]):
                    base = w_at[layer] + p * n_out
                    s = c[ZERO]
                    for j in range(n_out):
                        s += delta[j] * params[base + j]
                    back[p] = s
                _k_scale_by_grad(act, below, back, c)
            _k_update(params, velocity, w_at[layer], b_at[layer], below, delta, lr, mu)
    return total
