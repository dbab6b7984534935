"""SGD against hand-written update rules, and the learning-rate schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pnn_mpi.nn.optim import SGD, learning_rate


def gradients(steps: int, n: int, dtype=np.float64):
    rng = np.random.default_rng(17)
    return [rng.normal(size=n).astype(dtype) for _ in range(steps)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_plain_sgd_is_p_minus_lr_g(dtype):
    """Without momentum each step is p <- p - lr * g, updating the array in place."""
    p0 = np.random.default_rng(0).normal(size=11).astype(dtype)
    params = p0.copy()
    opt = SGD(params, momentum=0.0)
    expected = p0.astype(np.float64)
    for lr, g in zip([0.1, 0.05, 0.5], gradients(3, 11, dtype)):
        expected = expected - lr * g.astype(np.float64)
        opt.step(params, g.copy(), lr)
    assert params.dtype == dtype
    np.testing.assert_allclose(params, expected, rtol=1e-5 if dtype == np.float32 else 1e-13, atol=1e-6 if dtype == np.float32 else 0)


def test_momentum_matches_heavy_ball_loop():
    """With momentum mu: v = mu v + g; p -= lr v, over several steps with varying lr."""
    mu, n = 0.9, 13
    params = np.random.default_rng(1).normal(size=n)
    p, v = params.copy(), np.zeros(n)
    opt = SGD(params, momentum=mu)
    lrs = [0.1, 0.1, 0.05, 0.2, 0.01, 0.3]
    for lr, g in zip(lrs, gradients(len(lrs), n)):
        for i in range(n):  # written out element by element, independently of the vectorised code
            v[i] = mu * v[i] + g[i]
            p[i] = p[i] - lr * v[i]
        opt.step(params, g.copy(), lr)
        np.testing.assert_allclose(params, p, rtol=1e-13, atol=1e-15)


def test_momentum_differs_from_plain_sgd():
    """After two steps with the same gradient, momentum has moved further than plain SGD (by lr*mu*g)."""
    g = np.array([1.0, -2.0])
    plain, heavy = np.zeros(2), np.zeros(2)
    sgd, mom = SGD(plain), SGD(heavy, momentum=0.5)
    for _ in range(2):
        sgd.step(plain, g.copy(), 0.1)
        mom.step(heavy, g.copy(), 0.1)
    np.testing.assert_allclose(plain, -0.2 * g)
    np.testing.assert_allclose(heavy, -0.1 * g - 0.1 * 1.5 * g)


def test_velocity_matches_params():
    """The velocity has the parameters' shape and dtype in its own memory; plain SGD keeps none."""
    params = np.zeros(5, dtype=np.float32)
    assert SGD(params).velocity is None
    v = SGD(params, momentum=0.9).velocity
    assert v.shape == (5,) and v.dtype == np.float32 and not np.shares_memory(v, params)


@pytest.mark.parametrize("base, decay", [(0.05, 1.0), (0.1, 0.5), (0.3, 0.95)])
def test_learning_rate_decays_geometrically(base, decay):
    """learning_rate(base, decay, epoch) = base * decay**epoch: epoch 0 gives base, each epoch multiplies by decay."""
    assert learning_rate(base, decay, 0) == base
    rate = base
    for epoch in range(8):
        assert learning_rate(base, decay, epoch) == pytest.approx(rate, rel=1e-12)
        rate *= decay


@pytest.mark.parametrize("epochs, warmup", [(10, 0), (10, 1), (5, 2), (1, 0)])
def test_cosine_schedule_and_warmup(epochs, warmup):
    """Cosine: the base rate in epoch 0, half of it at mid-run, falling every epoch; a warm-up of W epochs
    runs epoch e < W at (e+1)/(W+1) of the scheduled rate; constant with no warm-up is the base rate."""
    rates = [learning_rate(0.2, 1.0, e, "cosine", epochs, warmup) for e in range(epochs)]
    for e, rate in enumerate(rates):
        factor = (e + 1) / (warmup + 1) if e < warmup else 1.0
        assert rate == pytest.approx(0.2 * factor * (1 + math.cos(math.pi * e / epochs)) / 2, rel=1e-12)
    after = rates[warmup:]
    assert all(a > b for a, b in zip(after, after[1:])) and after[-1] > 0
    if epochs % 2 == 0 and warmup <= epochs // 2:
        assert rates[epochs // 2] == pytest.approx(0.1)
    assert all(learning_rate(0.2, 1.0, e, "constant", epochs, 0) == 0.2 for e in range(epochs))
