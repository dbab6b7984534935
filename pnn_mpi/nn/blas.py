"""numpy's own BLAS matrix product (gemm), callable from numba-compiled code.

The fused step (fused.py) runs a whole mini-batch step in one compiled call.
Its products must be the ones numpy's ``np.dot`` runs: numba's own ``np.dot``
goes through SciPy's BLAS, another OpenBLAS build, which on this project's
machine took 52 µs for the batch-32 first-layer product where numpy's took 42.
And gemm's C = alpha A B + beta C puts the SGD update into the product: the
weight gradient lands straight in the momentum (beta = momentum) or, without
momentum, in the weights (alpha = -lr, beta = 1), with no gradient buffer in
between.

Found here: the CBLAS ``sgemm``/``dgemm`` of the OpenBLAS that numpy's wheels
bundle (``numpy.libs``), else of an OpenBLAS loaded into this process (the one a
system numpy links). The integer width comes from the symbols' names and the
library's own configuration string.
Any other BLAS (MKL, Accelerate, a reference BLAS) gives None, and the fused
step then calls ``np.dot`` from Python between its compiled passes.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os
from typing import NamedTuple

import numpy as np

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112  # CBLAS's enum values

# (prefix, suffix) of the symbols: numpy's wheels rename OpenBLAS's (scipy-openblas), a plain OpenBLAS does not.
_SPELLINGS = (("scipy_", "64_"), ("scipy_", ""), ("", "64_"), ("", ""))


class Gemm(NamedTuple):
    """Where one library's CBLAS gemm for float32 and float64 sits in memory, and its integer width.

    Each is ``cblas_?gemm(order, transa, transb, M, N, K, alpha, A, lda, B, ldb,
    beta, C, ldc)``; the compiled step gets the addresses as plain integers at
    run time, so numba can cache the code that calls them.
    """

    library: str
    sgemm: int
    dgemm: int
    wide: bool  # 64-bit integers (ILP64), else 32-bit


def _candidates() -> list[str]:
    """OpenBLAS libraries numpy may use: its wheel's bundled one first, then those mapped into this process."""
    found = sorted(glob.glob(os.path.join(os.path.dirname(np.__file__) + ".libs", "*openblas*.so*")))
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            mapped = {line.split()[-1] for line in maps if "openblas" in line.lower() and ".so" in line}
    except OSError:
        mapped = set()
    return found + sorted(p for p in mapped if p.startswith("/") and p not in found)


def _open(path: str) -> Gemm | None:
    try:
        lib = ctypes.CDLL(path)
    except OSError:
        return None
    for prefix, suffix in _SPELLINGS:
        names = [f"{prefix}cblas_{t}gemm{suffix}" for t in "sd"]
        config = getattr(lib, f"{prefix}openblas_get_config{suffix}", None)
        if config is None or not all(hasattr(lib, n) for n in names):
            continue
        config.restype = ctypes.c_char_p
        s, d = (ctypes.cast(getattr(lib, n), ctypes.c_void_p).value or 0 for n in names)
        wide = suffix == "64_" or b"USE64BITINT" in (config() or b"")  # the 64_ symbols are the ILP64 ones
        return Gemm(path, s, d, wide) if s and d else None
    return None


@functools.cache
def numpy_gemm() -> Gemm | None:
    """numpy's OpenBLAS gemm, or None where numpy uses another BLAS."""
    for path in _candidates():
        gemm = _open(path)
        if gemm is not None:
            return gemm
    return None
