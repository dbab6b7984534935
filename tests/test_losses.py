"""Output layers and losses: softmax, summed losses against textbook sums, deltas against finite differences."""

from __future__ import annotations

import numpy as np
import pytest

from pnn_mpi.nn.losses import OUTPUTS, RowScratch

NAMES = sorted(OUTPUTS)


def run(fn, z: np.ndarray) -> np.ndarray:
    out = np.full_like(z, np.nan)
    fn(z, out)
    return out


def batch(seed: int, rows: int = 6, classes: int = 10):
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 2.0, size=(rows, classes)), rng.integers(0, classes, size=rows)


def logsumexp(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=1)
    return m + np.log(np.exp(z - m[:, None]).sum(axis=1))


def test_table_names_match_entries():
    """Every table key is the name its entry carries, and both documented outputs exist."""
    assert NAMES == ["sigmoid-mse", "softmax-xent"]
    for key, out in OUTPUTS.items():
        assert out.name == key


def test_softmax_matches_definition_and_rows_sum_to_one():
    """softmax(z) = exp(z) / sum(exp(z)) row by row, and each row sums to 1."""
    z, _ = batch(1)
    p = run(OUTPUTS["softmax-xent"].forward, z)
    np.testing.assert_allclose(p, np.exp(z) / np.exp(z).sum(axis=1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=0, atol=1e-14)


def test_softmax_survives_large_logits():
    """Logits of +-1e4 (where exp overflows) give finite probabilities summing to 1,
    equal to the softmax of the logits shifted by a constant; input untouched."""
    z = np.array([[1000.0, 999.0, -1000.0], [1e4, 1e4, 1e4], [-1e4, -1e4 + 2.0, -1e4 + 1.0], [710.0, 0.0, -710.0]])
    before = z.copy()
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        p = run(OUTPUTS["softmax-xent"].forward, z)
    np.testing.assert_array_equal(z, before)
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-14)
    shifted = z - z.mean(axis=1, keepdims=True)  # invariance: only differences of logits matter
    with np.errstate(under="ignore"):
        expected = np.exp(shifted - logsumexp(shifted)[:, None])
    np.testing.assert_allclose(p, expected, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(p[1], [1 / 3, 1 / 3, 1 / 3], rtol=1e-15)


def test_xent_loss_sum_is_summed_cross_entropy():
    """loss_sum(softmax(z)) = sum over rows of logsumexp(z) - z[label]."""
    out = OUTPUTS["softmax-xent"]
    z, labels = batch(2, rows=9)
    expected = float(np.sum(logsumexp(z) - z[np.arange(len(labels)), labels]))
    assert out.loss_sum(run(out.forward, z), labels) == pytest.approx(expected, rel=1e-12)


def test_xent_loss_is_finite_for_zero_probability():
    """A zero probability on the true class gives a large finite loss, not inf or a warning."""
    p = np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])
    with np.errstate(all="raise"):
        loss = OUTPUTS["softmax-xent"].loss_sum(p, np.array([1, 1]))
    assert np.isfinite(loss) and loss > 20.0


def test_mse_loss_sum_is_half_summed_squared_error():
    """loss_sum(s) = 1/2 * sum ||s - onehot(label)||^2 for sigmoid outputs s."""
    out = OUTPUTS["sigmoid-mse"]
    z, labels = batch(3, rows=8, classes=5)
    s = 1.0 / (1.0 + np.exp(-z))
    np.testing.assert_allclose(run(out.forward, z), s, rtol=1e-12)
    onehot = np.eye(5)[labels]
    expected = 0.5 * float(np.sum((s - onehot) ** 2))
    assert out.loss_sum(s, labels) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_loss_sum_does_not_modify_outputs(name):
    """loss_sum reads the outputs only."""
    out = OUTPUTS[name]
    z, labels = batch(4)
    a = run(out.forward, z)
    before = a.copy()
    out.loss_sum(a, labels)
    np.testing.assert_array_equal(a, before)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale", [1.0, 1.0 / 7.0, 0.3])
def test_backward_loss_equals_loss_sum(name, scale):
    """backward returns the same summed loss as loss_sum, whatever the scale."""
    out = OUTPUTS[name]
    z, labels = batch(5, rows=7)
    a = run(out.forward, z)
    delta = np.empty_like(a)
    assert out.backward(a, labels, scale, delta) == pytest.approx(out.loss_sum(a, labels), rel=1e-12)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale", [1.0, 1.0 / 7.0, 0.3])
@pytest.mark.parametrize("rows", [1, 7])
def test_backward_delta_matches_finite_difference(name, scale, rows):
    """delta = d(scale * loss_sum(forward(z)))/dz, checked by central differences in float64."""
    out = OUTPUTS[name]
    z, labels = batch(6 + rows, rows=rows)
    a = run(out.forward, z)
    a_before = a.copy()
    delta = np.full_like(a, np.nan)
    out.backward(a, labels, scale, delta)
    np.testing.assert_array_equal(a, a_before)

    def loss(zz):
        return scale * out.loss_sum(run(out.forward, zz), labels)

    h = 1e-5
    numeric = np.zeros_like(z)
    for idx in np.ndindex(z.shape):
        up, down = z.copy(), z.copy()
        up[idx] += h
        down[idx] -= h
        numeric[idx] = (loss(up) - loss(down)) / (2 * h)
    np.testing.assert_allclose(delta, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", NAMES)
def test_backward_float32(name):
    """In float32 buffers the delta keeps float32 and agrees with the float64 delta."""
    out = OUTPUTS[name]
    z, labels = batch(9, rows=5)
    a32 = run(out.forward, z.astype(np.float32))
    d32 = np.empty_like(a32)
    out.backward(a32, labels, 0.2, d32)
    a64 = a32.astype(np.float64)
    d64 = np.empty_like(a64)
    out.backward(a64, labels, 0.2, d64)
    assert d32.dtype == np.float32
    np.testing.assert_allclose(d32, d64, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_row_scratch_gives_the_same_results(name, dtype):
    """forward, loss_sum and backward with a RowScratch of larger capacity (as a workspace holds) equal
    those that make their own scratch, bit for bit, and reusing the scratch leaves no trace."""
    out = OUTPUTS[name]
    rows = RowScratch.allocate(11, 10, dtype)
    for seed in (12, 13):  # the second pass reuses scratch the first one filled
        z, labels = batch(seed, rows=7)
        z = z.astype(dtype)
        a_own, a_rows = run(out.forward, z), np.full_like(z, np.nan)
        out.forward(z, a_rows, rows)
        np.testing.assert_array_equal(a_rows, a_own)
        assert out.loss_sum(a_rows, labels, rows) == out.loss_sum(a_own, labels)
        d_own, d_rows = np.full_like(z, np.nan), np.full_like(z, np.nan)
        assert out.backward(a_rows, labels, 0.3, d_rows, rows) == out.backward(a_own, labels, 0.3, d_own)
        np.testing.assert_array_equal(d_rows, d_own)


@pytest.mark.parametrize("name", NAMES)
def test_strided_buffers_give_the_same_results(name):
    """Outputs and deltas held in strided views (every other column of a wider array) give the
    values of contiguous buffers: the flat-position shortcut is used only where it is valid."""
    out = OUTPUTS[name]
    z, labels = batch(14, rows=5)
    wide_a, wide_d = np.zeros((5, 20)), np.zeros((5, 20))
    a, d = wide_a[:, ::2], wide_d[:, ::2]
    out.forward(z, a)
    expected_a = run(out.forward, z)
    np.testing.assert_array_equal(a, expected_a)
    expected_d = np.empty_like(expected_a)
    assert out.backward(a, labels, 0.5, d) == out.backward(expected_a, labels, 0.5, expected_d)
    np.testing.assert_array_equal(d, expected_d)
    np.testing.assert_array_equal(wide_d[:, 1::2], 0.0)  # nothing written between the columns


def test_softmax_with_tied_maxima():
    """Rows whose largest logit appears twice (or everywhere) still give the softmax."""
    z = np.array([[2.0, 5.0, 5.0, 1.0], [3.0, 3.0, 3.0, 3.0]])
    p = run(OUTPUTS["softmax-xent"].forward, z)
    np.testing.assert_allclose(p, np.exp(z) / np.exp(z).sum(axis=1, keepdims=True), rtol=1e-15)
