"""Hidden activations: forward against textbook formulas, derivatives against finite differences."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pnn_mpi.nn.activations import ACTIVATIONS, LEAKY_SLOPE

NAMES = sorted(ACTIVATIONS)
KINKED = {"relu", "leaky-relu"}


def textbook(name: str, z: np.ndarray) -> np.ndarray:
    """An independent, element-by-element reference for every activation."""

    def sigmoid(v: float) -> float:
        # Two branches so that neither exp() can overflow.
        if v >= 0:
            return 1.0 / (1.0 + math.exp(-v))
        e = math.exp(v)
        return e / (1.0 + e)

    scalar = {
        "sigmoid": sigmoid,
        "tanh": math.tanh,
        "relu": lambda v: v if v > 0 else 0.0,
        "leaky-relu": lambda v: v if v > 0 else LEAKY_SLOPE * v,
    }[name]
    return np.array([scalar(float(v)) for v in z.ravel()]).reshape(z.shape)


def away_from_kink(rng: np.random.Generator, shape, name: str) -> np.ndarray:
    """Random float64 inputs; for relu-like functions none closer than 0.05 to the kink at 0."""
    z = rng.uniform(-3.0, 3.0, size=shape)
    if name in KINKED:
        z = np.where(np.abs(z) < 0.05, np.copysign(0.05, z) + z, z)
    return z


def apply(fn, x: np.ndarray) -> np.ndarray:
    out = np.full_like(x, np.nan)
    fn(x, out)
    return out


def test_table_names_match_entries():
    """Every table key is the name its entry carries."""
    assert NAMES == sorted(["sigmoid", "tanh", "relu", "leaky-relu"])
    for key, act in ACTIVATIONS.items():
        assert act.name == key


@pytest.mark.parametrize("name", NAMES)
def test_grad_from_output_matches_central_difference(name):
    """f'(z), computed from a = f(z), equals (f(z+h) - f(z-h)) / 2h in float64."""
    act = ACTIVATIONS[name]
    z = away_from_kink(np.random.default_rng(3), (6, 9), name)
    h = 1e-6
    numeric = (apply(act.forward, z + h) - apply(act.forward, z - h)) / (2 * h)
    analytic = apply(act.grad_from_output, apply(act.forward, z))
    np.testing.assert_allclose(analytic, numeric, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_forward_matches_textbook_formula(name):
    """forward agrees with the scalar textbook definition, including far out in both tails."""
    z = np.concatenate([np.linspace(-8, 8, 41), [-50.0, -20.0, 20.0, 50.0, 1e-3, -1e-3]]).reshape(-1, 1)
    with np.errstate(all="raise"):
        got = apply(ACTIVATIONS[name].forward, z)
    np.testing.assert_allclose(got, textbook(name, z), rtol=1e-12, atol=1e-15)


def test_sigmoid_extreme_inputs_no_floating_point_warnings():
    """sigmoid of |z| up to 1e300 raises no overflow/underflow/invalid and saturates to exactly 0 and 1."""
    z = np.array([[-1e300, -1e4, -800.0, -710.0, 0.0, 710.0, 800.0, 1e4, 1e300]])
    with np.errstate(all="raise"):
        s = apply(ACTIVATIONS["sigmoid"].forward, z)
    assert np.all(np.isfinite(s))
    assert np.all((s >= 0) & (s <= 1))
    assert s[0, 0] == 0.0 and s[0, -1] == 1.0 and s[0, 4] == 0.5
    assert np.all(np.diff(s[0]) >= 0)


def test_sigmoid_is_symmetric():
    """sigmoid(-z) = 1 - sigmoid(z)."""
    z = np.linspace(-10, 10, 33).reshape(3, 11)
    act = ACTIVATIONS["sigmoid"]
    np.testing.assert_allclose(apply(act.forward, -z), 1.0 - apply(act.forward, z), atol=1e-15)


def test_leaky_relu_slope_on_negative_side():
    """leaky-relu is z for z > 0 and LEAKY_SLOPE * z for z < 0, with derivative 1 and LEAKY_SLOPE."""
    act = ACTIVATIONS["leaky-relu"]
    z = np.array([[-4.0, -0.5, 0.25, 3.0]])
    np.testing.assert_array_equal(apply(act.forward, z), [[-4.0 * LEAKY_SLOPE, -0.5 * LEAKY_SLOPE, 0.25, 3.0]])
    np.testing.assert_allclose(apply(act.grad_from_output, apply(act.forward, z)), [[LEAKY_SLOPE, LEAKY_SLOPE, 1.0, 1.0]])


def test_relu_gradient_is_zero_or_one():
    """relu's derivative is exactly 0 where the output is 0 and exactly 1 where it is positive."""
    act = ACTIVATIONS["relu"]
    z = np.array([[-2.0, -1e-9, 1e-9, 5.0]])
    np.testing.assert_array_equal(apply(act.grad_from_output, apply(act.forward, z)), [[0.0, 0.0, 1.0, 1.0]])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("which", ["forward", "grad_from_output"])
def test_writes_into_out_and_keeps_input(name, which):
    """Each function fills every element of ``out`` (no NaN left), returns its result only there,
    and leaves its input untouched."""
    fn = getattr(ACTIVATIONS[name], which)
    x = np.random.default_rng(7).uniform(-2, 2, size=(4, 5))
    if which == "grad_from_output":
        x = apply(ACTIVATIONS[name].forward, x)
    before = x.copy()
    out = np.full_like(x, np.nan)
    fn(x, out)
    np.testing.assert_array_equal(x, before)
    assert np.all(np.isfinite(out))
    # The same result when ``out`` starts from different garbage: nothing is accumulated.
    again = np.full_like(x, 123.0)
    fn(x, again)
    np.testing.assert_array_equal(out, again)


@pytest.mark.parametrize("name", NAMES)
def test_float32_matches_float64(name):
    """In float32 buffers both functions agree with float64 to single precision."""
    act = ACTIVATIONS[name]
    z64 = away_from_kink(np.random.default_rng(11), (5, 7), name)
    z32 = z64.astype(np.float32)
    a32 = apply(act.forward, z32)
    g32 = apply(act.grad_from_output, a32)
    assert a32.dtype == np.float32 and g32.dtype == np.float32
    np.testing.assert_allclose(a32, apply(act.forward, z32.astype(np.float64)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g32, apply(act.grad_from_output, apply(act.forward, z32.astype(np.float64))), rtol=1e-5, atol=1e-6)


def test_derivatives_at_exactly_zero():
    """Where the output is exactly 0 (z = 0), relu's derivative is 0 and leaky-relu's is the slope,
    as for negative z; float32 buffers keep float32."""
    for dtype in (np.float64, np.float32):
        z = np.array([[0.0, -0.0, -3.0, 2.0]], dtype=dtype)
        for name, expected in (("relu", [0.0, 0.0, 0.0, 1.0]), ("leaky-relu", [LEAKY_SLOPE, LEAKY_SLOPE, LEAKY_SLOPE, 1.0])):
            act = ACTIVATIONS[name]
            g = apply(act.grad_from_output, apply(act.forward, z))
            assert g.dtype == dtype
            np.testing.assert_array_equal(np.abs(g), np.array([expected], dtype=dtype))
