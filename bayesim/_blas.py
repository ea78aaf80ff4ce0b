"""BLAS sgemm callable from inside numba kernels (and their parallel loops).

numba's helper `numba_xxgemm` calls scipy.linalg.cython_blas' sgemm; `sgemm_nt` exposes it for row-major
float32 operands given by address and leading dimension, so a kernel can multiply sub-blocks of its
arrays in place: no copies, no temporaries, results written straight into a strided output. Called
from a numba thread, BLAS must run on one thread itself (`bayesim.crossbar.kernels.blas_single_thread`).
"""
from __future__ import annotations

import scipy.linalg.cython_blas  # noqa: F401  (loaded now, so threadpoolctl sees its BLAS)
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def sgemm_nt(typingctx, m, n, k, a, lda, b, ldb, c, ldc):
    """C = A @ B.T in float32, row-major: A [m, k] at address a (row stride lda elements), B [n, k] at b
    (stride ldb), C [m, n] at c (stride ldc), C overwritten. Returns BLAS's status (0)."""
    sig = types.int32(types.intp, types.intp, types.intp, types.uintp, types.intp, types.uintp, types.intp,
                      types.uintp, types.intp)

    def codegen(context, builder, signature, args):
        m_, n_, k_, a_, lda_, b_, ldb_, c_, ldc_ = args
        ch = ir.IntType(8)
        vp = ir.IntType(8).as_pointer()
        ip = context.get_value_type(types.intp)
        fnty = ir.FunctionType(ir.IntType(32), [ch, ch, ch, ip, ip, ip, vp, vp, ip, vp, ip, vp, vp, ip])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "numba_xxgemm")
        one = cgutils.alloca_once_value(builder, ir.Constant(ir.FloatType(), 1.0))
        zero = cgutils.alloca_once_value(builder, ir.Constant(ir.FloatType(), 0.0))

        def ptr(v):
            return builder.inttoptr(v, vp)

        # row-major C [m, n] is column-major C^T [n, m] = B (col-major [k, n], transposed) ^T . A^T
        return builder.call(fn, (ir.Constant(ch, ord("s")), ir.Constant(ch, ord("t")), ir.Constant(ch, ord("n")),
                                 n_, m_, k_, builder.bitcast(one, vp), ptr(b_), ldb_, ptr(a_), lda_,
                                 builder.bitcast(zero, vp), ptr(c_), ldc_))

    return sig, codegen
