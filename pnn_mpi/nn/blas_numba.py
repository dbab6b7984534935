"""``k_gemm`` for numba-compiled code: a call into the CBLAS gemm that blas.py found.

Imported only where numba is (fused.py's compiled namespace). The library's
addresses arrive at run time in a small integer array, ``[sgemm, dgemm, wide]``,
so the compiled code holds no address and numba can cache it on disk.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .blas import NO_TRANS, ROW_MAJOR, TRANS

_POINTERS = (7, 9, 12)  # A, B and C among cblas_?gemm's arguments


@intrinsic
def _call(typingctx, address, order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """cblas_?gemm at ``address``, arguments passed as typed (the three matrices as integer addresses)."""
    sig = types.void(address, order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)

    def codegen(context, builder, signature, args):
        pointer = ir.IntType(8).as_pointer()
        kinds, values = [], []
        for i, (kind, value) in enumerate(zip(signature.args[1:], args[1:])):
            if i in _POINTERS:
                kinds.append(pointer)
                values.append(builder.inttoptr(value, pointer))
            else:
                kinds.append(context.get_value_type(kind))
                values.append(value)
        function = builder.inttoptr(args[0], ir.FunctionType(ir.VoidType(), kinds).as_pointer())
        builder.call(function, values)
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(cache=True, nogil=True)
def k_gemm(blas, ta, tb, alpha, a, b, beta, c):
    """c = alpha op(a) op(b) + beta c for C-contiguous matrices (op: transposed where ``ta``/``tb``)."""
    m, n = c.shape
    k = a.shape[0] if ta else a.shape[1]
    order, t_a, t_b = np.int32(ROW_MAJOR), np.int32(TRANS if ta else NO_TRANS), np.int32(TRANS if tb else NO_TRANS)
    pa, pb, pc = a.ctypes.data, b.ctypes.data, c.ctypes.data
    single = c.itemsize == 4
    address = blas[0] if single else blas[1]
    if blas[2]:
        i = np.int64
        if single:
            _call(address, order, t_a, t_b, i(m), i(n), i(k), np.float32(alpha), pa, i(a.shape[1]), pb, i(b.shape[1]), np.float32(beta), pc, i(n))
        else:
            _call(address, order, t_a, t_b, i(m), i(n), i(k), np.float64(alpha), pa, i(a.shape[1]), pb, i(b.shape[1]), np.float64(beta), pc, i(n))
    else:
        j = np.int32
        if single:
            _call(address, order, t_a, t_b, j(m), j(n), j(k), np.float32(alpha), pa, j(a.shape[1]), pb, j(b.shape[1]), np.float32(beta), pc, j(n))
        else:
            _call(address, order, t_a, t_b, j(m), j(n), j(k), np.float64(alpha), pa, j(a.shape[1]), pb, j(b.shape[1]), np.float64(beta), pc, j(n))
