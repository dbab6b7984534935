"""The feed-forward network, with all parameters in one flat array.

Weights and biases are views into ``params`` (and their gradients views into
``grads``), layer after layer. Averaging every parameter across ranks is then
one in-place Allreduce on one contiguous buffer, and saving the network is
saving one array.

A training step allocates nothing (a test checks it with tracemalloc): every
product writes into a workspace buffer through ``np.dot`` (whose ``out`` path
calls BLAS directly, with less overhead than ``np.matmul``, also for one
sample's outer product), and no ufunc broadcasts, because numpy's buffered
iterator allocates on every broadcasting call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .activations import ACTIVATIONS
from .initializers import INITIALIZERS
from .losses import OUTPUTS, RowScratch


@dataclass(frozen=True)
class LayerSlot:
    """Where one layer sits in the flat buffer: its (n_in, n_out) weights row-major from ``weights_at``, then its bias."""

    n_in: int
    n_out: int
    weights_at: int
    bias_at: int


def layout(sizes: tuple[int, ...]) -> list[LayerSlot]:
    """The flat buffer's layout for layer widths ``sizes`` (input first): layer after layer, weights then bias.

    The one definition of it: the network's views, the compiled kernel's
    offsets and the parameter count all come from here.
    """
    slots, at = [], 0
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        slots.append(LayerSlot(n_in, n_out, at, at + n_in * n_out))
        at += n_in * n_out + n_out
    return slots


def parameter_count(sizes: tuple[int, ...]) -> int:
    """Weights plus biases of an MLP with layer widths ``sizes`` (input first)."""
    return sum(s.n_in * s.n_out + s.n_out for s in layout(sizes))


def layer_views(flat: np.ndarray, sizes: tuple[int, ...]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Split a flat parameter-shaped array into per-layer (weight, bias) views."""
    slots = layout(sizes)
    weights = [flat[s.weights_at : s.bias_at].reshape(s.n_in, s.n_out) for s in slots]
    biases = [flat[s.bias_at : s.bias_at + s.n_out] for s in slots]
    return weights, biases


@dataclass
class Workspace:
    """Preallocated activations for batches of up to ``capacity`` samples.

    ``z[l]`` holds layer l's pre-activations (and serves as scratch in
    backprop), ``a[l]`` its outputs, ``delta[l]`` the error at its inputs (and
    scratch in the forward pass); ``rows`` is the per-row scratch of the output
    layer and its loss.
    Batches smaller than the capacity use leading-row views, so the training
    loop never allocates. The ``a`` and ``delta`` of all layers are views, layer
    after layer, of one flat buffer each (``a_flat``, ``delta_flat``): the
    compiled step (fused.py) takes the two buffers instead of a list per kind.
    """

    capacity: int
    inputs: np.ndarray
    labels: np.ndarray
    z: list[np.ndarray]
    a: list[np.ndarray]
    delta: list[np.ndarray]
    rows: RowScratch
    ones: np.ndarray  # (capacity,): bias gradients as ones @ delta, cheaper than a column sum
    a_flat: np.ndarray
    delta_flat: np.ndarray


def _layer_blocks(capacity: int, widths: tuple[int, ...], dtype) -> tuple[np.ndarray, list[np.ndarray]]:
    """One zeroed buffer and its (capacity, width) views, one per layer, one after another."""
    flat = np.zeros(capacity * sum(widths), dtype=dtype)
    starts = np.cumsum((0, *widths[:-1])) * capacity
    return flat, [flat[at : at + capacity * n].reshape(capacity, n) for at, n in zip(starts, widths)]


class Network:
    """A multi-layer perceptron: hidden activation, output layer with its loss."""

    def __init__(self, sizes, activation: str = "relu", output: str = "softmax-xent", dtype="float32"):
        self.sizes = tuple(int(n) for n in sizes)
        self.activation_name = activation
        self.output_name = output
        self.activation = ACTIVATIONS[activation]
        self.output = OUTPUTS[output]
        self.dtype = np.dtype(dtype)
        self.params = np.zeros(parameter_count(self.sizes), dtype=self.dtype)
        self.grads = np.zeros_like(self.params)
        self.weights, self.biases = layer_views(self.params, self.sizes)
        self.grad_weights, self.grad_biases = layer_views(self.grads, self.sizes)

    @property
    def depth(self) -> int:
        return len(self.sizes) - 1

    def initialize(self, init: str, bias: float, seed: int) -> None:
        """Draw the weights from ``init`` and set every bias to ``bias``.

        Drawn in float64 from ``seed`` and only then cast, so float32 and float64
        networks with the same seed start from the same values, and every rank
        that passes the same seed holds the same network.
        """
        rng = np.random.default_rng(seed)
        draw = INITIALIZERS[init]
        for w, b in zip(self.weights, self.biases):
            w[...] = draw(rng, *w.shape)
            b[...] = bias

    def workspace(self, capacity: int) -> Workspace:
        capacity = max(int(capacity), 1)
        widths = self.sizes[1:]
        rows = RowScratch.allocate(capacity, widths[-1], self.dtype)
        a_flat, a = _layer_blocks(capacity, widths, self.dtype)
        delta_flat, delta = _layer_blocks(capacity, widths, self.dtype)
        return Workspace(
            capacity=capacity,
            inputs=np.zeros((capacity, self.sizes[0]), dtype=self.dtype),
            labels=np.zeros(capacity, dtype=np.intp),
            z=[np.zeros((capacity, n), dtype=self.dtype) for n in widths],
            a=a,
            delta=delta,
            rows=rows,
            ones=rows.row_ones,
            a_flat=a_flat,
            delta_flat=delta_flat,
        )

    def forward(self, x: np.ndarray, ws: Workspace) -> np.ndarray:
        """Outputs for the batch ``x`` (at most ``ws.capacity`` rows), kept in ``ws``.

        ``x`` in another dtype is first copied into ``ws.inputs``.
        """
        b = len(x)
        a = self._in_dtype(x, ws)
        last = self.depth - 1
        for layer, (w, bias) in enumerate(zip(self.weights, self.biases)):
            z = ws.z[layer][:b]
            out = ws.a[layer][:b]
            np.dot(a, w, out=z)
            _add_to_rows(z, bias, ws.delta[layer][:b])  # delta is free until backward
            if layer == last:
                self.output.forward(z, out, ws.rows)
            else:
                self.activation.forward(z, out)
            a = out
        return a

    def backward(self, x: np.ndarray, labels: np.ndarray, ws: Workspace, scale: float) -> float:
        """Fill ``grads`` with ``scale`` times the summed loss gradient of the batch.

        Must follow ``forward(x, ws)``. Returns the batch's summed loss.
        """
        b = len(x)
        x = self._in_dtype(x, ws, copied=True)
        top = self.depth - 1
        delta = ws.delta[top][:b]
        loss = self.output.backward(ws.a[top][:b], labels, scale, delta, ws.rows)
        for layer in range(top, -1, -1):
            below = x if layer == 0 else ws.a[layer - 1][:b]
            np.dot(below.T, delta, out=self.grad_weights[layer])
            np.dot(ws.ones[:b], delta, out=self.grad_biases[layer])
            if layer == 0:
                break
            back = ws.delta[layer - 1][:b]
            np.dot(delta, self.weights[layer].T, out=back)
            deriv = ws.z[layer - 1][:b]  # pre-activations are spent: reuse as scratch
            self.activation.grad_from_output(below, deriv)
            back *= deriv
            delta = back
        return loss

    def _in_dtype(self, x: np.ndarray, ws: Workspace, copied: bool = False) -> np.ndarray:
        """``x`` itself when it has the network's dtype; else its copy in ``ws.inputs``
        (made by ``forward``; ``backward`` finds it there)."""
        if x.dtype == self.dtype:
            return x
        inputs = ws.inputs[: len(x)]
        if not copied:
            inputs[...] = x
        return inputs

    def move_into(self, storage: np.ndarray) -> None:
        """Keep the parameters in ``storage`` from now on (its values become theirs).

        The optimizer puts its momentum right after them in one buffer, so one
        Allreduce averages both (optim.SGD.beside).
        """
        if storage.shape != self.params.shape or storage.dtype != self.dtype:
            raise ValueError(f"storage of shape {storage.shape} and {storage.dtype} cannot hold {self.params.shape} {self.dtype} parameters")
        storage[...] = self.params
        self.params = storage
        self.weights, self.biases = layer_views(storage, self.sizes)

    def copy(self) -> Network:
        twin = Network(self.sizes, self.activation_name, self.output_name, self.dtype)
        twin.params[...] = self.params
        return twin


def _add_to_rows(z: np.ndarray, bias: np.ndarray, scratch: np.ndarray) -> None:
    """z += bias on every row, through a copy of the rows in ``scratch``.

    ``z += bias`` broadcasts, and numpy's buffered iterator then allocates on every
    call; copying the bias into each row (no buffers) and adding same-shaped
    arrays allocates nothing and costs no more.
    """
    np.copyto(scratch, bias)
    z += scratch
