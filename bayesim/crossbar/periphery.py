"""DAC and ADC: input scaling and quantization, output quantization with saturation counting.

DAC: each input vector is divided by its scale (abs-max of the vector, or a fixed range), quantized to
`bits` (signed: levels t/q for |t| <= q = 2^(bits-1)-1; unsigned: t/q for 0 <= t <= q = 2^bits-1;
rounding half to even) and the scale is undone digitally after the ADC.
ADC: the normalised column current u (see `card`) is clipped to +-range (per column) and quantized to
2^(bits-1)-1 levels on each side; values beyond the range are counted as saturated.
"""
from __future__ import annotations

import numba as nb
import numpy as np

from bayesim._blas import sgemm_nt
from bayesim.rng import normal
from bayesim.crossbar.kernels import _rint32


def dac_levels(bits: int, signed: bool) -> tuple[int, int]:
    """(lowest, highest) integer DAC code."""
    if signed:
        q = (1 << (bits - 1)) - 1
        return -q, q
    return 0, (1 << bits) - 1


def dac(x: np.ndarray, bits, signed: bool, scaling: str, full_range: float):
    """Scale and quantize inputs x [N, K] float32.

    Returns (x_norm [N, K] float32 in [-1, 1], x_scale [N] float32, n_clipped). x ~ x_norm * x_scale.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 2 and x.shape[1] and x.shape[0] >= 64:  # fused parallel kernel, identical values
        return im2col_dac(x.reshape(x.shape[0], x.shape[1], 1, 1), 1, 1, 1, 0, bits, signed, scaling, full_range)
    return dac_numpy(x, bits, signed, scaling, full_range)


def dac_numpy(x: np.ndarray, bits, signed: bool, scaling: str, full_range: float):
    """The numpy reference of `dac` (same values, bit for bit)."""
    x = np.asarray(x, dtype=np.float32)
    if scaling == "abs_max":
        scale = np.abs(x).max(axis=1) if x.shape[1] else np.zeros(x.shape[0], np.float32)
        scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
    else:
        scale = np.full(x.shape[0], full_range, dtype=np.float32)
    xn = x / scale[:, None]
    if bits is None:  # infinite resolution, same range (unsigned DACs cannot apply negative inputs)
        lo = -1.0 if signed else 0.0
        clipped = int(np.count_nonzero((xn < lo) | (xn > 1)))
        if clipped:
            xn = np.clip(xn, lo, 1.0).astype(np.float32)
        return xn, scale, clipped
    qlo, qhi = dac_levels(bits, signed)
    codes = np.rint(xn * np.float32(qhi))
    clipped = int(np.count_nonzero((codes < qlo) | (codes > qhi)))
    np.clip(codes, qlo, qhi, out=codes)
    return (codes / np.float32(qhi)).astype(np.float32), scale, clipped


def im2col_dac(x: np.ndarray, kh: int, kw: int, stride: int, padding: int, bits, signed: bool, scaling: str,
               full_range: float, out: np.ndarray | None = None):
    """im2col of x [N, C, H, W] (rows (n, oh, ow), columns (c, i, j): torch weight order) fused with the
    DAC of every patch row, in one parallel pass: the values of `dac(im2col(x))`, bit for bit.

    A dense [N, K] input is the case C = K, H = W = kh = kw = 1. Returns (x_norm [rows, K],
    x_scale [rows], n_clipped); `out` (float32 [rows, K]) is reused when given.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, c, h, w = x.shape
    ho = (h + 2 * padding - kh) // stride + 1
    wo = (w + 2 * padding - kw) // stride + 1
    rows, k = n * ho * wo, c * kh * kw
    if out is None or out.shape != (rows, k):
        out = np.empty((rows, k), np.float32)
    scale = np.empty(rows, np.float32)
    clipped = np.zeros(rows, np.int64)
    if bits is None:
        qlo, qhi = (-1, 1) if signed else (0, 1)
    else:
        qlo, qhi = dac_levels(int(bits), bool(signed))
    if padding:
        x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    _im2col_dac(x, kh, kw, stride, ho, wo, scaling == "abs_max", np.float32(full_range),
                bits is not None, qlo, qhi, out, scale, clipped)
    return out, scale, int(clipped.sum())


@nb.njit(cache=True, inline="always")
def _patch_dac(flat, c, hh, ww, b, oh, ow, kh, kw, stride, abs_max, full_range, quantize, qlo, qhi, dst):
    """Gather the patch of output pixel (oh, ow) of image b of the zero-padded input [N, c, hh, ww] (C
    order, flattened: `flat`) into dst[0:C*kh*kw] and apply the DAC in place (scale, quantize with
    rounding half to even, clip); returns (scale, clipped count). Unsigned flat offsets: no view per patch
    row and no negative-index wraparound checks."""
    fq = np.float32(qhi)
    flo = np.float32(qlo)
    ucol = np.uint64(0)
    ukw = np.uint64(kw)
    src = np.uint64((b * c * hh + oh * stride) * ww + ow * stride)  # patch row (ci, i) = (0, 0)
    uww = np.uint64(ww)
    plane = np.uint64((hh - kh) * ww)  # from row (ci, kh) to row (ci + 1, 0)
    for ci in range(c):
        for i in range(kh):
            for j in range(ukw):
                dst[ucol + j] = flat[src + j]
            ucol += ukw
            src += uww
        src += plane
    k_all = c * kh * kw
    # abs-max in four interleaved partial maxima (a max does not depend on the order it is taken in; four
    # chains instead of one long dependent one), NaN tested apart
    m0 = m1 = m2 = m3 = np.float32(0.0)
    nan = False
    k4 = k_all - k_all % 4
    for col in range(0, k4, 4):
        a0 = abs(dst[col])
        a1 = abs(dst[col + 1])
        a2 = abs(dst[col + 2])
        a3 = abs(dst[col + 3])
        m0 = max(m0, a0)
        m1 = max(m1, a1)
        m2 = max(m2, a2)
        m3 = max(m3, a3)
        nan |= (a0 != a0) | (a1 != a1) | (a2 != a2) | (a3 != a3)
    for col in range(k4, k_all):
        a = abs(dst[col])
        m0 = max(m0, a)
        nan |= a != a
    m = max(max(m0, m1), max(m2, m3))
    if nan:  # NaN propagates to the scale, as numpy's max
        m = np.float32(np.nan)
    if abs_max:
        s = m if m > 0 or m != m else np.float32(1.0)
    else:
        s = full_range
    cl = 0
    hi = fq if quantize else np.float32(1.0)
    for col in range(k_all):  # branch-free so that it vectorises
        v = dst[col] / s
        t = np.rint(v * fq) if quantize else v
        cl += (t < flo) + (t > hi)
        t = min(max(t, flo), hi)
        dst[col] = t / fq if quantize else t
    return s, cl


@nb.njit(parallel=True, cache=True)
def _im2col_dac(xp, kh, kw, stride, ho, wo, abs_max, full_range, quantize, qlo, qhi, out, scale, clipped):
    n, c, hh, ww = xp.shape
    flat = xp.reshape(-1)
    per = ho * wo
    for row in nb.prange(n * per):
        b = row // per
        p = row - b * per
        oh = p // wo
        s, cl = _patch_dac(flat, c, hh, ww, b, oh, p - oh * wo, kh, kw, stride, abs_max, full_range, quantize,
                           qlo, qhi, out[row])
        scale[row] = s
        clipped[row] = cl


@nb.njit(cache=True, inline="always")
def _adc(v, noise_sd, noise_key, counter, table, rg, q):
    """One conversion: add output noise (stream noise_key at `counter`), then, for q > 0, quantize to
    2q+1 levels on [-rg, rg] (round half to even, clipped). Returns (value, 1 if saturated else 0)."""
    if noise_sd > 0:
        v += np.float32(noise_sd) * normal(noise_key, counter, table)
    if q > 0:
        t, sat = _adc_code(v, rg, q)
        return t * (rg / q), sat
    return v, 0


@nb.njit(cache=True, inline="always")
def _adc_code(v, rg, q):
    """The signed ADC code of v on [-rg, rg] with 2q+1 levels (round half to even, clipped; float32) and
    1 if v saturates the range else 0. The value the code stands for is code * (rg / q)."""
    return min(max(_rint32(v / rg * q), -q), q), 1 if abs(v) > rg else 0


@nb.njit(parallel=True, cache=True)
def adc_accumulate(u, y, x_scale, w_scale, col_range, qmax, noise_sd, noise_key, row0, table, sat_rows):
    """y[n, j] += sum_r ADC(u[r, n, j] + noise) * x_scale[n] * w_scale[r, j]: digital accumulation of the
    row tiles' ADC outputs; saturations (|u + noise| > range) counted per input row n.

    u: [row tiles, N, out] normalised column currents; col_range, w_scale: [row tiles, out].
    qmax = 0 means an ideal ADC (no clipping, no quantization). Output noise (std `noise_sd`, normalised
    current units) is drawn from stream `noise_key` at counter ((row0 + n)*tiles + r)*out + j, row0 being
    the index of row 0 among all the rows the caller converts with this key (its batches), so that every
    row draws its own noise and the result does not depend on how the rows are batched.
    """
    n_tiles, n_rows, n_cols = u.shape
    q = np.float32(qmax)
    for n in nb.prange(n_rows):
        acc = np.empty(n_cols, np.float32)
        sat_rows[n] += _convert_row(u, n, 0, n_cols, row0, n_cols, x_scale[n], w_scale, col_range, q,
                                    noise_sd, noise_key, table, acc, y)


@nb.njit(inline="always", cache=True)
def _convert_row(u, i, j0, cw, row0, n_out, x_s, w_scale, col_range, q, noise_sd, noise_key, table, acc, y):
    """ADC and digital accumulation of input row i for output columns j0:j0+cw, whose column currents
    are u[r, i, :cw]: y[i, j] += x_s * sum_r ADC(u + noise) * w_scale[r, j], r outer and j inner
    (the same order of the sum, and the noise counter ((row0 + i)*tiles + r)*n_out + j, wherever it runs).
    acc: scratch of >= cw floats. Returns the number of saturated conversions."""
    acc[:cw] = 0.0
    hits = 0
    ju0 = np.uint64(j0)  # unsigned column indices: no negative-index wraparound, so contiguous SIMD loads
    n_tiles = u.shape[0]
    for r in range(n_tiles):
        c0 = ((row0 + i) * n_tiles + r) * n_out + j0
        for jj in range(cw):
            j = ju0 + np.uint64(jj)
            v, hit = _adc(u[r, i, jj], noise_sd, noise_key, c0 + jj, table, col_range[r, j], q)
            hits += hit
            acc[jj] += v * w_scale[r, j]
    for jj in range(cw):
        y[i, ju0 + np.uint64(jj)] += acc[jj] * x_s
    return hits


#: Output columns per task of `gemm_adc`. Fixed, so the BLAS calls (and their rounding) are the same
#: whatever the thread count. 128 columns of a 256-row tile (128 KiB of weights) keep a task's operands in
#: L2 cache; wider calls run BLAS closer to its full speed (784x512, batch 256, on a 2-core Zen 5: GEMMs
#: 0.916 / 0.888 / 0.871 ms per sample at 64 / 128 / 256 columns, BLAS in one call 0.82 ms), and 128 still
#: gives a 512-output layer four tasks to share between threads.
GEMM_COLUMNS = 128


@nb.njit(parallel=True, cache=True)
def gemm_adc(xn, w_blocks, row_starts, x_scale, w_scale, col_range, qmax, noise_sd, noise_key, row0, table, sat,
             raw, u, y):
    """The row tiles' products through BLAS, then ADC and digital accumulation, in one parallel pass.

    Each task takes GEMM_COLUMNS output columns j0:j1: for every row tile r it multiplies the DAC'd
    inputs xn[:, r0:r1] ([N, in], C order) by the block W_r[j0:j1] of w_blocks (block layout, see
    bayesim.crossbar.kernels.build_tiles) with one single-threaded sgemm, then converts and accumulates
    exactly as `adc_accumulate` (same noise stream, same order of the sum over r), adding into y [N, out].
    sat [tasks, N]: saturations per task and input row (the caller sums them). raw: write the
    noise-free products into u [tiles, N, out] instead (ADC calibration sees exactly the values the
    forward pass converts). The caller holds BLAS to one thread (crossbar.kernels.blas_single_thread).
    """
    n, n_in = xn.shape
    n_out = w_scale.shape[1]
    n_tiles = row_starts.shape[0] - 1
    n_tasks = (n_out + GEMM_COLUMNS - 1) // GEMM_COLUMNS
    q = np.float32(qmax)
    if n == 0:
        return
    # BLAS gets raw addresses and leading dimensions: the operands must be C-contiguous
    if xn.strides[1] != 4 or xn.strides[0] != 4 * n_in or w_blocks.strides[0] != 4 or (
            raw and (u.strides[2] != 4 or u.strides[1] != 4 * n_out)):
        raise ValueError("gemm_adc: xn, w_blocks and u must be C-contiguous float32 arrays")
    for t in nb.prange(n_tasks):
        j0 = t * GEMM_COLUMNS
        cw = min(GEMM_COLUMNS, n_out - j0)
        ub = u if raw else np.empty((n_tiles, n, cw), np.float32)
        ld = n_out if raw else cw
        for r in range(n_tiles):
            r0 = row_starts[r]
            rows = row_starts[r + 1] - r0
            dst = ub[r, 0, j0:] if raw else ub[r, 0, :]
            sgemm_nt(n, cw, rows, xn[0, r0:].ctypes.data, n_in, w_blocks[n_out * r0 + j0 * rows:].ctypes.data,
                     rows, dst.ctypes.data, ld)
        if raw:
            continue
        acc = np.empty(cw, np.float32)
        for i in range(n):
            sat[t, i] = _convert_row(ub, i, j0, cw, row0, n_out, x_scale[i], w_scale, col_range, q, noise_sd,
                                     noise_key, table, acc, y)


#: Input rows per task of `mvm_adc` (fixed: the tasks' results do not depend on the thread count).
MVM_ROWS = 128


@nb.njit(parallel=True, cache=True)
def mvm_adc(xn, w_blocks, row_starts, y, per, x_scale, w_scale, col_range, qmax, noise_sd, noise_key, row0, table,
            sat_rows, raw, u):
    """The row tiles' products, ADC and digital accumulation in one pass (no [tiles, N, out] buffer), for
    layers with few outputs where a GEMM call does not pay: y[n // per, j, n % per] = sum_r
    ADC(xn[n, r0:r1] . W_r[j] + noise) * x_scale[n] * w_scale[r, j], with W_r the [out, r1 - r0] block
    of row tile r at w_blocks[out*r0:]; y [images, out, per] is written in NCHW order (per = Ho*Wo; 1 for
    a dense layer). ADC, noise stream and saturation counts as `adc_accumulate`. raw: write the noise-free
    products into u [tiles, N, out] instead (ADC calibration sees exactly the values the forward pass
    converts).

    Each task takes MVM_ROWS input rows: their products with each row tile into a [rows, out] block (one
    single-threaded sgemm; the caller holds BLAS to one thread, crossbar.kernels.blas_single_thread), then
    the noise, ADC and accumulation of the whole block as flat SIMD loops (the per-column range, step and
    scale repeated per row so that the loop needs no index arithmetic). The blocks are fixed, so the values
    are identical for any thread count."""
    n_rows, n_in = xn.shape
    n_cols = w_scale.shape[1]
    n_tiles = row_starts.shape[0] - 1
    q = np.float32(qmax)
    width = MVM_ROWS * n_cols
    if n_rows == 0:
        return
    if xn.strides[1] != 4 or xn.strides[0] != 4 * n_in or w_blocks.strides[0] != 4:  # BLAS gets raw addresses
        raise ValueError("mvm_adc: xn and w_blocks must be C-contiguous float32 arrays")
    # per-conversion constants of a block [row, column], the column's repeated for every row
    rg_t = np.empty((n_tiles, width), np.float32)
    step_t = np.empty((n_tiles, width), np.float32)
    ws_t = np.empty((n_tiles, width), np.float32)
    for r in range(n_tiles):
        for e in range(width):
            j = e % n_cols
            rg = col_range[r, j]
            rg_t[r, e] = rg
            step_t[r, e] = rg / q if q > 0 else np.float32(0.0)
            ws_t[r, e] = w_scale[r, j]
    noisy = noise_sd > 0
    nsd = np.float32(noise_sd)
    n_blocks = (n_rows + MVM_ROWS - 1) // MVM_ROWS
    for blk in nb.prange(n_blocks):
        n0 = blk * MVM_ROWS
        nr = min(MVM_ROWS, n_rows - n0)
        m = nr * n_cols
        v = np.empty(width, np.float32)
        acc = np.zeros(width, np.float32)
        hit = np.zeros(width, np.int32)
        for r in range(n_tiles):
            r0 = row_starts[r]
            k = row_starts[r + 1] - r0
            sgemm_nt(nr, n_cols, k, xn[n0, r0:].ctypes.data, n_in, w_blocks[n_cols * r0:].ctypes.data, k,
                     v.ctypes.data, n_cols)
            if raw:
                for i in range(nr):
                    for j in range(n_cols):
                        u[r, n0 + i, j] = v[i * n_cols + j]
                continue
            if noisy:
                for i in range(nr):
                    c0 = ((row0 + n0 + i) * n_tiles + r) * n_cols
                    for j in range(n_cols):
                        v[i * n_cols + j] += nsd * normal(noise_key, c0 + j, table)
            rg_r = rg_t[r]
            st_r = step_t[r]
            ws_r = ws_t[r]
            if q > 0:
                for e in range(m):  # `_adc` with rg / q taken from step_t
                    t, sat = _adc_code(v[e], rg_r[e], q)
                    hit[e] += sat
                    acc[e] += (t * st_r[e]) * ws_r[e]
            else:
                for e in range(m):
                    acc[e] += v[e] * ws_r[e]
        if raw:
            continue
        for i in range(nr):
            n = n0 + i
            b = n // per
            p = n - b * per
            xs = x_scale[n]
            s = 0
            for j in range(n_cols):
                y[b, j, p] = acc[i * n_cols + j] * xs
                s += hit[i * n_cols + j]
            sat_rows[n] += s
