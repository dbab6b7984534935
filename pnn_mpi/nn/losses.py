"""Output layers and their losses: a table, like the hidden activations.

Each entry pairs the output non-linearity with the loss it is trained under,
because backprop starts from the derivative of the two together. Losses are
summed over the samples of a batch: the caller decides the scale (``1/batch``
for a local step, ``1/global batch`` when gradients are summed across ranks).

Every function takes an optional ``RowScratch``: with one (the network's
workspace holds one) a training step allocates nothing; without, it makes its
own, which is convenient in tests and tools.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .activations import ACTIVATIONS

TINY = 1e-12  # the smallest probability whose log is taken

# Kernel codes, one per entry of OUTPUTS (the compiled batch-1 kernel branches on them).
SOFTMAX_XENT, SIGMOID_MSE = range(2)


@dataclass
class RowScratch:
    """Per-row buffers for a batch of up to ``capacity`` rows of ``classes`` outputs.

    The target of row r sits at flat position ``offsets[r] + label`` of the
    (rows, classes) array, so it is read and written with ``np.take``/``np.put``
    on flat positions: fancy indexing ``p[rows, labels]`` would allocate.
    """

    classes: int
    offsets: np.ndarray  # (capacity,) intp: r * classes
    index: np.ndarray  # (capacity,) intp: each row's target position; any per-row integers
    values: np.ndarray  # (capacity,) dtype: a value per row
    spare: np.ndarray  # (capacity,) dtype: another value per row
    column: np.ndarray  # (capacity, 1) dtype: a per-row reduction with keepdims
    spread: np.ndarray  # (capacity, classes) dtype: ``column`` copied across each row
    ones: np.ndarray  # (classes, 1) dtype: row sums as a matrix product
    row_ones: np.ndarray  # (capacity,) dtype: sums over rows as a dot product

    @classmethod
    def allocate(cls, capacity: int, classes: int, dtype) -> RowScratch:
        return cls(
            classes=int(classes),
            offsets=np.arange(capacity, dtype=np.intp) * int(classes),
            index=np.zeros(capacity, dtype=np.intp),
            values=np.zeros(capacity, dtype=dtype),
            spare=np.zeros(capacity, dtype=dtype),
            column=np.zeros((capacity, 1), dtype=dtype),
            spread=np.zeros((capacity, classes), dtype=dtype),
            ones=np.ones((classes, 1), dtype=dtype),
            row_ones=np.ones(capacity, dtype=dtype),
        )

    def fits(self, a: np.ndarray) -> bool:
        return a.ndim == 2 and a.shape[1] == self.classes and len(a) <= len(self.offsets) and a.dtype == self.values.dtype


def _scratch(a: np.ndarray, rows: Optional[RowScratch]) -> RowScratch:
    return rows if rows is not None and rows.fits(a) else RowScratch.allocate(len(a), a.shape[1], a.dtype)


def _target_index(labels: np.ndarray, rows: RowScratch) -> np.ndarray:
    """The flat position of every row's target, in ``rows.index``. Labels must be
    valid classes (the data loader checks them)."""
    return np.add(rows.offsets[: len(labels)], labels, out=rows.index[: len(labels)])


def _take(a: np.ndarray, index: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out = a at the flat positions ``index``.

    The ndarray method with mode "clip": ``np.take`` with mode "raise" buffers
    its output (an allocation) and its wrapper costs more than the work here.
    """
    return a.reshape(-1).take(index, None, out[: len(index)], "clip")  # reshape copies only a strided ``a``


def _put_targets(a: np.ndarray, index: np.ndarray, values: np.ndarray) -> None:
    """a[r, label_r] = values[r], through the flat positions ``index``."""
    if a.flags.c_contiguous:
        a.reshape(-1).put(index, values, "clip")
    else:  # a strided buffer has no flat view to write through
        a[np.divmod(index, a.shape[1])] = values


def _total(values: np.ndarray, rows: RowScratch) -> float:
    return float(np.dot(values, rows.row_ones[: len(values)]))


def _neg_log_sum(values: np.ndarray, rows: RowScratch) -> float:
    """-sum(log(max(values, tiny))), computed in place in ``values``."""
    np.maximum(values, TINY, out=values)
    np.log(values, out=values)
    return -_total(values, rows)


def _softmax(z: np.ndarray, out: np.ndarray, rows: Optional[RowScratch] = None) -> None:
    # Reductions and broadcasting ufuncs run through numpy's iterator, which
    # allocates on every call and costs more than the work on 10 outputs. So the
    # row max is read at each row's argmax, the row sum is a product with ones,
    # and both are spread across their rows by copying (np.copyto needs no buffers).
    rows = _scratch(z, rows)
    b = len(z)
    column, spread = rows.column[:b], rows.spread[:b]
    top = z.argmax(1, rows.index[:b])
    np.add(rows.offsets[:b], top, out=top)
    _take(z, top, column.reshape(-1))
    np.copyto(spread, column)
    np.subtract(z, spread, out=out)
    np.exp(out, out=out)
    np.dot(out, rows.ones, out=column)
    np.copyto(spread, column)
    np.divide(out, spread, out=out)


def _xent_sum(p: np.ndarray, labels: np.ndarray, rows: Optional[RowScratch] = None) -> float:
    rows = _scratch(p, rows)
    return _neg_log_sum(_take(p, _target_index(labels, rows), rows.values), rows)


def _softmax_xent_backward(p, labels, scale, delta, rows: Optional[RowScratch] = None) -> float:
    """delta = scale * (p - onehot); returns the summed cross-entropy."""
    rows = _scratch(p, rows)
    index = _target_index(labels, rows)
    loss = _neg_log_sum(_take(p, index, rows.values), rows)
    np.multiply(p, scale, out=delta)
    fix = _take(delta, index, rows.values)  # scale * p on the targets, minus scale
    fix -= scale
    _put_targets(delta, index, fix)
    return loss


def _sigmoid(z: np.ndarray, out: np.ndarray, rows: Optional[RowScratch] = None) -> None:
    ACTIVATIONS["sigmoid"].forward(z, out)


def _mse_sum(s: np.ndarray, labels: np.ndarray, rows: Optional[RowScratch] = None) -> float:
    # Subtracts the targets before squaring (a copy), which keeps the precision of
    # small errors; scoring may allocate, the training step (backward) does not.
    err = s.copy()
    err[np.arange(len(labels)), labels] -= 1.0
    return 0.5 * float(np.vdot(err, err))


def _sigmoid_mse_backward(s, labels, scale, delta, rows: Optional[RowScratch] = None) -> float:
    """delta = scale * (s - onehot) * s * (1 - s); returns the summed 1/2 squared error."""
    rows = _scratch(s, rows)
    index = _target_index(labels, rows)
    on_target = _take(s, index, rows.values)
    # Squared error of all outputs as if every target were 0, corrected on the targets.
    loss = 0.5 * (float(np.vdot(s, s)) - (2.0 * _total(on_target, rows) - len(labels)))
    np.subtract(1.0, s, out=delta)  # 1 - s
    delta *= s  # s (1 - s)
    delta *= s  # (s - 0) s (1 - s) for non-targets
    fix = np.subtract(on_target, 1.0, out=rows.spare[: len(labels)])
    fix *= on_target
    np.subtract(1.0, on_target, out=on_target)
    fix *= on_target  # (t - 1) t (1 - t) on the targets
    _put_targets(delta, index, fix)
    delta *= scale
    return loss


@dataclass(frozen=True)
class OutputLoss:
    """An output non-linearity with its loss.

    ``forward(z, out, rows=None)`` writes the network's outputs;
    ``loss_sum(out, labels, rows=None)`` is the loss summed over samples;
    ``backward(out, labels, scale, delta, rows=None)`` writes ``scale * dLoss/dz``
    into ``delta`` and returns the summed loss; ``code`` names it in the compiled kernel.
    """

    name: str
    forward: Callable[..., None]
    loss_sum: Callable[..., float]
    backward: Callable[..., float]
    code: int


OUTPUTS: dict[str, OutputLoss] = {
    o.name: o
    for o in (
        OutputLoss("softmax-xent", _softmax, _xent_sum, _softmax_xent_backward, SOFTMAX_XENT),
        OutputLoss("sigmoid-mse", _sigmoid, _mse_sum, _sigmoid_mse_backward, SIGMOID_MSE),
    )
}
