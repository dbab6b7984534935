"""Weight initialisations: each draw's spread, centre, shape and reproducibility against its formula."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pnn_mpi.nn.initializers import INITIALIZERS

FAN_IN, FAN_OUT = 400, 300

# name -> (family, standard deviation by the formula) for a FAN_IN x FAN_OUT matrix.
EXPECTED = {
    "uniform": ("uniform", (1.0 / math.sqrt(FAN_IN)) / math.sqrt(3.0)),
    "normal": ("normal", 1.0 / math.sqrt(FAN_IN)),
    "xavier-uniform": ("uniform", math.sqrt(6.0 / (FAN_IN + FAN_OUT)) / math.sqrt(3.0)),
    "xavier-normal": ("normal", math.sqrt(2.0 / (FAN_IN + FAN_OUT))),
    "he": ("normal", math.sqrt(2.0 / FAN_IN)),
}


def draw(name: str, seed: int = 0) -> np.ndarray:
    return INITIALIZERS[name](np.random.default_rng(seed), FAN_IN, FAN_OUT)


def test_table_is_the_documented_set():
    """Exactly the five documented initialisations, each with an expected formula here."""
    assert sorted(INITIALIZERS) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_std_mean_and_shape(name):
    """A 400x300 draw is (fan_in, fan_out) float64 with mean ~0 and std within 2% of the formula
    (fan_in and fan_out swapped would be off by 15%)."""
    w = draw(name)
    _, std = EXPECTED[name]
    assert w.shape == (FAN_IN, FAN_OUT) and w.dtype == np.float64
    assert abs(w.std() / std - 1.0) < 0.02
    assert abs(w.mean()) < 0.02 * std  # about 7 standard errors of the mean


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_distribution_family(name):
    """Uniform draws stay inside +-limit and reach near it (kurtosis 1.8); normal draws have kurtosis 3."""
    w = draw(name, seed=1)
    family, std = EXPECTED[name]
    kurtosis = float(np.mean((w - w.mean()) ** 4) / w.var() ** 2)
    if family == "uniform":
        limit = std * math.sqrt(3.0)
        assert np.abs(w).max() <= limit
        assert np.abs(w).max() > 0.999 * limit
        assert abs(kurtosis - 1.8) < 0.05
    else:
        assert abs(kurtosis - 3.0) < 0.15
        assert np.abs(w).max() > 4.0 * std


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_same_seed_same_matrix(name):
    """The same Generator seed gives the same matrix; a different seed a different one."""
    np.testing.assert_array_equal(draw(name, seed=5), draw(name, seed=5))
    assert not np.array_equal(draw(name, seed=5), draw(name, seed=6))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_draws_advance_the_generator(name):
    """Two draws from one Generator differ, so successive layers get fresh values."""
    rng = np.random.default_rng(3)
    first = INITIALIZERS[name](rng, 20, 10)
    second = INITIALIZERS[name](rng, 20, 10)
    assert not np.array_equal(first, second)
