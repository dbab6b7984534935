"""nn/blas.py and nn/blas_numba.py: numpy's own gemm, found and called from compiled code.

The compiled call must be numpy's product bit for bit (the same library, the
same arguments as ``np.dot`` gives it), and gemm's alpha and beta must do what
the update folded into it needs.
"""

from __future__ import annotations

import ctypes.util

import numpy as np
import pytest

from pnn_mpi.nn import blas


def found_or_skip() -> blas.Gemm:
    gemm = blas.numpy_gemm()
    if gemm is None:
        pytest.skip("numpy here does not use an OpenBLAS the step can call")
    return gemm


def test_numpy_wheels_openblas_is_found():
    """numpy's wheels bundle OpenBLAS (CI installs them): its gemm is found, with its integer width."""
    gemm = found_or_skip()
    assert gemm.sgemm and gemm.dgemm and gemm.sgemm != gemm.dgemm
    assert "openblas" in gemm.library.lower()


def test_a_library_without_cblas_gemm_is_passed_over(tmp_path):
    """A file that is no library, and a library without OpenBLAS's gemm (libc): None, no error."""
    (tmp_path / "libopenblas.so").write_bytes(b"not a library")
    assert blas._open(str(tmp_path / "libopenblas.so")) is None
    libc = ctypes.util.find_library("c")
    if libc:
        assert blas._open(libc) is None


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("ta, tb", [(False, False), (True, False), (False, True), (True, True)])
def test_compiled_gemm_is_numpys_product(dtype, ta, tb):
    """c = alpha op(a) op(b) + beta c: with alpha 1 and beta 0 numpy's ``np.dot`` bit for bit; with
    other alpha and beta the same to rounding; the uncompiled stand-in (fused.k_gemm) agrees."""
    pytest.importorskip("numba")
    from pnn_mpi.nn import blas_numba, fused

    gemm = found_or_skip()
    addresses = np.array([gemm.sgemm, gemm.dgemm, gemm.wide], np.int64)
    rng = np.random.default_rng(4)
    m, n, k = 7, 5, 11
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    product = np.dot(a.T if ta else a, b.T if tb else b)
    c = np.full((m, n), np.nan, dtype)  # beta 0 ignores what c held
    blas_numba.k_gemm(addresses, ta, tb, 1.0, a, b, 0.0, c)
    assert c.tobytes() == product.tobytes()
    start = rng.standard_normal((m, n)).astype(dtype)
    compiled, plain = start.copy(), start.copy()
    blas_numba.k_gemm(addresses, ta, tb, -0.5, a, b, 0.9, compiled)
    fused.k_gemm(addresses, ta, tb, -0.5, a, b, 0.9, plain)
    rtol = 1e-5 if dtype == "float32" else 1e-13
    np.testing.assert_allclose(compiled, -0.5 * product + 0.9 * start, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(plain, compiled, rtol=rtol, atol=rtol)
