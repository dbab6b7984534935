"""Weight initialisations: a table of named draws, one of the paper's study axes.

Each draw fills a (fan_in, fan_out) weight matrix from a numpy Generator. All
ranks seed the generator alike, so all ranks start from the same network.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

Draw = Callable[[np.random.Generator, int, int], np.ndarray]


def _uniform(rng: np.random.Generator, fan_in: int, fan_out: int) -> np.ndarray:
    limit = 1.0 / math.sqrt(fan_in)
    return rng.uniform(-limit, limit, size=(fan_in, fan_out))


def _normal(rng: np.random.Generator, fan_in: int, fan_out: int) -> np.ndarray:
    return rng.normal(0.0, 1.0 / math.sqrt(fan_in), size=(fan_in, fan_out))


def _xavier_uniform(rng: np.random.Generator, fan_in: int, fan_out: int) -> np.ndarray:
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=(fan_in, fan_out))


def _xavier_normal(rng: np.random.Generator, fan_in: int, fan_out: int) -> np.ndarray:
    return rng.normal(0.0, math.sqrt(2.0 / (fan_in + fan_out)), size=(fan_in, fan_out))


def _he(rng: np.random.Generator, fan_in: int, fan_out: int) -> np.ndarray:
    return rng.normal(0.0, math.sqrt(2.0 / fan_in), size=(fan_in, fan_out))


INITIALIZERS: dict[str, Draw] = {
    "uniform": _uniform,  # U(-1/sqrt(fan_in), +1/sqrt(fan_in))
    "normal": _normal,  # N(0, 1/fan_in)
    "xavier-uniform": _xavier_uniform,  # Glorot & Bengio 2010
    "xavier-normal": _xavier_normal,
    "he": _he,  # He et al. 2015, normal, for ReLU-family layers
}
