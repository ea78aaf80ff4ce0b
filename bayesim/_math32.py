"""Inline float32 natural log and exp for the per-cell device laws of the numba kernels.

libm's logf/expf are function calls the compiler cannot inline or interleave; the fused crossbar kernel
evaluates three of them per cell (PCM drift exponent, drift factor, 1/f noise factor), and they were
half of its time. These are the Cephes single-precision algorithms (range reduction by powers of two,
minimax polynomials), inlined: relative error below 2e-7 (about 2 float32 ulp) over the whole range
used (tests/test_math32.py checks it against float64 numpy).
"""
from __future__ import annotations

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic


@intrinsic
def _f32_bits(typingctx, x):
    """The IEEE-754 bits of a float32 as int32 (a register bitcast)."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


@intrinsic
def _bits_f32(typingctx, i):
    """The float32 whose IEEE-754 bits are the int32 i."""
    if i != types.int32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@intrinsic
def fma32(typingctx, a, b, c):
    """a*b + c in float32 with one rounding (llvm.fma: the hardware FMA instruction, also in SIMD loops).
    Fused explicitly, not left to the compiler's contraction, so the result does not depend on it."""
    if not (a == types.float32 and b == types.float32 and c == types.float32):
        return None

    def codegen(context, builder, sig, args):
        return builder.fma(*args)

    return types.float32(types.float32, types.float32, types.float32), codegen


_SQRTH = np.float32(0.70710678118654752)
_LN2_HI = np.float32(0.693359375)
_LN2_LO = np.float32(-2.12194440e-4)
_LOG2E = np.float32(1.44269504088896341)
_F1 = np.float32(1.0)
_FH = np.float32(0.5)
_EXP_LO = np.float32(-87.0)
_EXP_HI = np.float32(88.0)
_LOG_POLY = (np.float32(-1.1514610310e-1), np.float32(1.1676998740e-1), np.float32(-1.2420140846e-1),
             np.float32(1.4249322787e-1), np.float32(-1.6668057665e-1), np.float32(2.0000714765e-1),
             np.float32(-2.4999993993e-1), np.float32(3.3333331174e-1))
_EXP_POLY = (np.float32(1.3981999507e-3), np.float32(8.3334519073e-3), np.float32(4.1665795894e-2),
             np.float32(1.6666665459e-1), np.float32(5.0000001201e-1))


@nb.njit(inline="always", cache=True)
def log32(x):
    """ln(x) in float32 for a positive, finite, normal float32 x (callers clamp x away from 0)."""
    x = np.float32(x)
    b = _f32_bits(x)
    e = np.float32(((b >> 23) & 0xFF) - 126)
    m = _bits_f32(np.int32((b & 0x7FFFFF) | 0x3F000000))  # mantissa in [0.5, 1)
    if m < _SQRTH:
        e -= _F1
        f = m + m - _F1
    else:
        f = m - _F1
    z = f * f
    y = np.float32(7.0376836292e-2)
    for c in _LOG_POLY:
        y = fma32(y, f, c)
    y = y * f * z
    y = fma32(_LN2_LO, e, y)
    y = fma32(-_FH, z, y)
    return fma32(_LN2_HI, e, f + y)


@nb.njit(inline="always", cache=True)
def exp32(x):
    """e**x in float32; x is clamped to [-87, 88] (the normal float32 range)."""
    x = min(max(np.float32(x), _EXP_LO), _EXP_HI)
    n = np.float32(np.floor(fma32(_LOG2E, x, _FH)))
    r = fma32(-n, _LN2_HI, x)
    r = fma32(-n, _LN2_LO, r)
    z = r * r
    p = np.float32(1.9875691500e-4)
    for c in _EXP_POLY:
        p = fma32(p, r, c)
    p = fma32(p, z, r + _F1)
    # 2**n: n in [-126, 127] here, so the biased exponent is a normal one
    return p * _bits_f32(np.int32((np.int32(n) + 127) << 23))
