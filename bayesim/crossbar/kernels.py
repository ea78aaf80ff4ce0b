"""Fused numba kernel: draw -> quantize -> level -> programming/read noise -> effective tile weights.

One call builds the effective weights of a whole layer for one Monte-Carlo sample into a reusable
float32 buffer laid out by row tile ("block"): block r holds the weights of input rows r0..r1 of all
outputs as a contiguous [out, r1 - r0] matrix at offset out*r0, so each row tile is one GEMM.

Random numbers are pure functions of (stream key, counter):
- eps (the Bayesian draw) uses the software interface stream: key eps_key, counter = flat index
  j*in + k of the full [out, in] weight matrix (16-bit table Gaussian), so hardware and software
  draw the same eps;
- device noise uses one key per (sample, tile) and counter = the cell's index in its tile (C order
  over [rows, cols]); one 64-bit hash gives five 12-bit table Gaussians (DEVICE_TABLE): programming
  noise of the G+ and G- cells and read noise of both. Reference-column cells use counters
  rows*cols + row; reads of the stored VPQ arrays use their own per-(sample, tile) key.
Results are therefore bit-identical for a seed whatever the thread count.
"""
from __future__ import annotations

from contextlib import contextmanager

import numba as nb
import numpy as np

from bayesim.devices.kernels import read_cells32
from bayesim.rng import bits64, normal

DEVICE_NORMAL_BITS = 12


def _device_table() -> np.ndarray:
    """4,096 equiprobable Gaussian quantiles (unit variance over the table): the finite-precision
    generator of device noise. 16 KiB, so it stays in L1 cache; five draws come from one 64-bit hash."""
    from scipy.special import ndtri

    n = 1 << DEVICE_NORMAL_BITS
    q = ndtri((np.arange(n, dtype=np.float64) + 0.5) / n)
    q /= np.sqrt(np.mean(q * q))
    return q.astype(np.float32)


DEVICE_TABLE = _device_table()
_M12 = np.uint64(0xFFF)
_S = [np.uint64(52 - 12 * i) for i in range(5)]
_S0, _S1, _S2, _S3, _S4 = _S

#: Below this much work (elements, or multiply-adds / 64) a kernel runs on the calling thread: waking the
#: numba thread pool costs ~20 us on an idle machine but a scheduler tick (~4-8 ms) on a loaded one.
PARALLEL_MIN_WORK = 1 << 18


@contextmanager
def serial_if_small(work: int):
    """Run the numba kernels of the block on one thread when `work` < PARALLEL_MIN_WORK. Results do not
    depend on it (every random number and every sum is a function of its element only)."""
    if work >= PARALLEL_MIN_WORK:
        yield
        return
    before = nb.get_num_threads()
    nb.set_num_threads(1)
    try:
        yield
    finally:
        nb.set_num_threads(before)


_BLAS_CONTROLLER = None


def blas_single_thread():
    """Context manager: BLAS on the calling thread only, for the GEMMs between numba kernels.

    numba's OpenMP workers spin for a while after each parallel region, and a multi-threaded BLAS's
    workers do the same after each GEMM; on few cores the two pools then starve each other (a 784x512
    JQ forward took 37 ms instead of 15 ms on 2 cores). One BLAS thread per GEMM costs less than the
    contention. The results do not depend on it (BLAS sums are not split across threads either way
    for these shapes, and every random number is a function of its element only)."""
    global _BLAS_CONTROLLER
    if _BLAS_CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _BLAS_CONTROLLER = ThreadpoolController()
    return _BLAS_CONTROLLER.limit(limits=1, user_api="blas")


OUT_NORMALISED = 0   # write (G+ - G-)/span (or (G - Gref)/(span/2)): the normalised effective weight
OUT_CONDUCTANCE = 1  # write G+ and G- (or G and Gref) in uS, for IR drop or a device's own program()


@nb.njit(parallel=True, cache=True)
def build_tiles(mu, sigma, eps_key, use_eps, table, dtable, quantized, binary, w_step, kmax_grp, inv_wscale, grp,
                lvl, sd_prog, sd_read, g_lo, g_hi, g_base, g_span, offset, ref_sd_prog, ref_sd_read,
                tile_keys, row_starts, tile_rows, tile_cols, out_kind, out_a, out_b,
                stored, held_p, held_m, held_s, sd_p, sd_m, sd_s, read_keys, inv_mu_unit, mu_mean,
                sigma_log, ladder, sigma_values, sigma_slopes, sigma_max, rungs,
                cell_law, nu_keys, log_ratio, noise_t, drift_kind, nu_mean, nu_std, read_kind, read_coeffs,
                q_coeff, q_exp, q_max, inv_gmax):
    """Effective weights of one layer for one sample (see module docstring).

    mu, sigma: [out, in] float32 (stored or read values). w = mu + sigma*eps (float32, as in software).
    quantized: w -> q = clip(rint(w / w_step), -kmax, kmax) (binary: q = +1 if w >= 0 else -1) (per group g = grp[r, j]); the cell levels
      are lvl[g, m + q] (uS, table of 2m+1 levels per group, m = lvl.shape[1]//2) with programming /
      read std sd_prog / sd_read at the same index; differential: G+ = level(+max(q,0)),
      G- = level(-max(-q,0)) where level(i) = lvl[g, m+i]; offset: G = lvl[g, m+q] against a
      reference cell at lvl[g, m] (no noise tables given: noise-free targets).
    not quantized: normalised weight wn = w * inv_wscale[g] and targets g_base + max(+-wn, 0)*g_span
      (differential) or g_base + g_span/2 * (1 + wn) (offset); no device noise (digital weights).
    Programmed values and read values are both clipped to [g_lo, g_hi] (the device's clip_range), as
    the devices' `gaussian_programming` contract states.
    stored (VPQ/JQ with a Gaussian-read device): mu and sigma are not taken from `mu`, `sigma` but read
      from the stored arrays (block layout, z from one hash per cell of read_keys[r, c]): each cell reads
      clip(held + sd*z) (uS); mu = mu_mean + (dG+ - dG-) * inv_mu_unit[g] (the linear decode of G+ - G-
      around the decoded held value mu_mean, in mu units per uS); sigma is decoded from the log ladder
      (piecewise linear in g between rungs) or linearly (sigma_log False).
    cell_law (a device with Gaussian programming whose read is drift + noise, `read_cell_law`): each
      programmed cell is read with the law of bayesim.devices.kernels.read_cell (drift exponent from the
      cell's fixed normal, stream nu_keys[r, c, side] at the cell's index in its tile, [cols, rows] C order
      as the generic per-tile path; read noise from the cell's hash) instead of the sd_read table; the
      cells of one output's row tile are programmed first and read together (read_cells32, SIMD).
    out_kind OUT_NORMALISED writes wn into out_a; OUT_CONDUCTANCE writes the two cells into out_a, out_b.
    """
    n_out, n_in = mu.shape
    n_blocks = row_starts.shape[0] - 1
    m = lvl.shape[1] // 2
    span = np.float32(g_span)
    half = np.float32(0.5) * span
    inv_norm = np.float32(1.0) / (half if offset else span)
    glo = np.float32(g_lo)
    ghi = np.float32(g_hi)
    zero = np.float32(0.0)
    drift = drift_kind != 0 and log_ratio > 0.0
    nbuf = tile_rows if cell_law else 1
    for j in nb.prange(n_out):
        buf = np.empty((6, nbuf), np.float32)  # cell_law: programmed cells and their normals, one row tile
        ca, cb, za, zb, zna, znb = buf[0], buf[1], buf[2], buf[3], buf[4], buf[5]
        c = j // tile_cols
        jl = j - c * tile_cols
        for r in range(n_blocks):
            r0 = row_starts[r]
            r1 = row_starts[r + 1]
            rows_r = r1 - r0
            base = n_out * r0 + j * rows_r
            g = grp[r, j]
            key = tile_keys[r, c]
            for k in range(r0, r1):
                kl = k - r0
                if stored:
                    rb = bits64(read_keys[r, c], kl * tile_cols + jl)
                    # mu decodes linearly from G+ - G-: the decoded held value (mu_mean, exact on the grid
                    # for a noise-free device) plus the clipped read deviations in mu units
                    hp = held_p[base + kl]
                    hm = held_m[base + kl]
                    rp = min(max(hp + sd_p[base + kl] * dtable[(rb >> _S0) & _M12], glo), ghi)
                    rm = min(max(hm + sd_m[base + kl] * dtable[(rb >> _S1) & _M12], glo), ghi)
                    mu_v = mu_mean[base + kl] + np.float32(((rp - hp) - (rm - hm)) * inv_mu_unit[g])
                    rs = min(max(held_s[base + kl] + sd_s[base + kl] * dtable[(rb >> _S2) & _M12], glo), ghi)
                    sg_v = _decode_sigma(rs, rungs[base + kl], sigma_log, ladder, sigma_values, sigma_slopes, sigma_max, g_base, g_span)
                else:
                    mu_v = mu[j, k]
                    sg_v = sigma[j, k]
                w = mu_v
                if use_eps:
                    w = w + sg_v * normal(eps_key, j * n_in + k, table)
                if quantized:
                    km = kmax_grp[g]
                    if binary:  # 1-bit grid {-step, +step}
                        qf = np.float32(1.0) if w >= 0 else np.float32(-1.0)
                    else:
                        qf = _rint32(w / w_step)
                    if qf > km:
                        qf = np.float32(km)
                    elif qf < -km:
                        qf = np.float32(-km)
                    q = int(qf)
                    if offset:
                        ia = m + q
                        ib = m
                    else:
                        ia = m + max(q, 0)
                        ib = m + max(-q, 0)
                    ga = lvl[g, ia]
                    gb = lvl[g, ib]
                    spa = sd_prog[g, ia]
                    sra = sd_read[g, ia]
                    if offset:
                        spb = np.float32(ref_sd_prog)
                        srb = np.float32(ref_sd_read)
                    else:
                        spb = sd_prog[g, ib]
                        srb = sd_read[g, ib]
                    if cell_law:  # programmed here, read after the row loop (read_cells32, SIMD)
                        bits = bits64(key, kl * tile_cols + jl)
                        ca[kl] = min(max(ga + spa * dtable[(bits >> _S0) & _M12], glo), ghi)
                        za[kl] = dtable[(bits >> _S1) & _M12]
                        zna[kl] = normal(nu_keys[r, c, 0], jl * rows_r + kl, table) if drift else zero
                        if offset:
                            bits = bits64(key, tile_rows * tile_cols + kl)
                            znb[kl] = normal(nu_keys[r, c, 1], kl, table) if drift else zero
                        else:
                            znb[kl] = normal(nu_keys[r, c, 1], jl * rows_r + kl, table) if drift else zero
                        cb[kl] = min(max(gb + spb * dtable[(bits >> _S2) & _M12], glo), ghi)
                        zb[kl] = dtable[(bits >> _S3) & _M12]
                        continue
                    elif spa > 0 or sra > 0 or spb > 0 or srb > 0:
                        bits = bits64(key, kl * tile_cols + jl)
                        ga = ga + spa * dtable[(bits >> _S0) & _M12]
                        ga = min(max(ga, glo), ghi)  # branch-free clip to the physical range
                        ga = min(max(ga + sra * dtable[(bits >> _S1) & _M12], glo), ghi)
                        if offset:
                            bits = bits64(key, tile_rows * tile_cols + kl)
                        gb = gb + spb * dtable[(bits >> _S2) & _M12]
                        gb = min(max(gb, glo), ghi)  # branch-free clip to the physical range
                        gb = min(max(gb + srb * dtable[(bits >> _S3) & _M12], glo), ghi)
                else:
                    wn = w * inv_wscale[g]
                    if out_kind == OUT_NORMALISED:
                        out_a[base + kl] = wn
                        continue
                    if offset:
                        ga = np.float32(g_base) + half * (np.float32(1.0) + wn)
                        gb = np.float32(g_base) + half
                    else:
                        ga = np.float32(g_base) + max(wn, np.float32(0.0)) * span
                        gb = np.float32(g_base) + max(-wn, np.float32(0.0)) * span
                if out_kind == OUT_NORMALISED:
                    out_a[base + kl] = (ga - gb) * inv_norm
                else:
                    out_a[base + kl] = ga
                    out_b[base + kl] = gb
            if quantized and cell_law:
                read_cells32(ca, zna, za, rows_r, log_ratio, noise_t, drift_kind, nu_mean, nu_std, read_kind,
                             read_coeffs, q_coeff, q_exp, q_max, inv_gmax, glo, ghi)
                read_cells32(cb, znb, zb, rows_r, log_ratio, noise_t, drift_kind, nu_mean, nu_std, read_kind,
                             read_coeffs, q_coeff, q_exp, q_max, inv_gmax, glo, ghi)
                for kl in range(rows_r):
                    if out_kind == OUT_NORMALISED:
                        out_a[base + kl] = (ca[kl] - cb[kl]) * inv_norm
                    else:
                        out_a[base + kl] = ca[kl]
                        out_b[base + kl] = cb[kl]


_MAGIC32 = np.float32(12582912.0)  # 1.5 * 2^23
_BIG32 = np.float32(4194304.0)  # 2^22


@nb.njit(cache=True, inline="always")
def _rint32(x):
    """Round half to even in float32 (== np.rint) without a libm call: adding and subtracting 1.5*2^23
    rounds |x| < 2^22 to an integer in IEEE float32 arithmetic; larger values are clamped first (they clip
    to the grid's end anyway)."""
    x = min(max(x, -_BIG32), _BIG32)
    return (x + _MAGIC32) - _MAGIC32


@nb.njit(cache=True, inline="always")
def _decode_sigma(g, rung, sigma_log, ladder, values, slopes, sigma_max, g_base, g_span):
    """Conductance read from a sigma cell -> sigma (float32), as AnalogLayer._g_to_sigma: piecewise
    linear between the rungs of the log ladder (exact on the rungs), clamped at both ends."""
    if not sigma_log:
        v = (g - g_base) / g_span
        if v < 0:
            v = 0.0
        return np.float32(v * sigma_max)
    x = np.float64(g)
    n = ladder.shape[0]
    if x <= ladder[0]:
        return np.float32(values[0])
    if x >= ladder[n - 1]:
        return np.float32(values[n - 1])
    lo = min(max(rung, 0), n - 2)  # start at the programmed rung: read noise rarely crosses one
    while ladder[lo] > x:
        lo -= 1
    while ladder[lo + 1] <= x:
        lo += 1
    return np.float32(slopes[lo] * (x - ladder[lo]) + values[lo])


@nb.njit(cache=True)
def normals_serial(key, n, table):
    """The same values as bayesim.rng.normals(key, n) without a parallel region (for small vectors)."""
    out = np.empty(n, np.float32)
    for i in range(n):
        out[i] = normal(key, i, table)
    return out
