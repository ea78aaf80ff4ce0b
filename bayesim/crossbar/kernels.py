"""Fused numba kernel: draw -> quantize -> level -> programming/read noise -> effective tile weights.

One call builds the effective weights of a whole layer for one Monte-Carlo sample into a reusable
float32 buffer laid out by row tile ("block"): block r holds the weights of input rows r0..r1 of all
outputs as a contiguous [out, r1 - r0] matrix at offset out*r0, so each row tile is one GEMM.

Random numbers are pure functions of (stream key, counter):
- eps (the Bayesian draw) uses the software interface stream: key eps_key, counter = flat index
  j*in + k of the full [out, in] weight matrix (16-bit table Gaussian), so hardware and software
  draw the same eps;
- device noise uses one key per (sample, tile) and counter = the cell's index in its tile (C order
  over [rows, cols]); one 64-bit hash gives four 12-bit table Gaussians (DEVICE_TABLE): programming
  noise of the G+ and G- cells and read noise of both. Reference-column cells use counters
  rows*cols + row; reads of the stored VPQ arrays use their own per-(sample, tile) key; the drift-exponent
  normal of each programmed cell (`cell_normals`) is drawn at each programming, from the keys of the cells
  as programmed for that sample (the streams of the generic path's device.read).
Results are therefore bit-identical for a seed whatever the thread count.
"""
from __future__ import annotations

from contextlib import contextmanager

import numba as nb
import numpy as np

from bayesim._math32 import _bits_f32, _f32_bits
from bayesim.devices.kernels import read_cells32
from bayesim.rng import NORMAL_BITS, bits64, normal

DEVICE_NORMAL_BITS = 12


def _device_table() -> np.ndarray:
    """4,096 equiprobable Gaussian quantiles (unit variance over the table): the finite-precision
    generator of device noise. 16 KiB, so it stays in L1 cache; four draws come from one 64-bit hash."""
    from scipy.special import ndtri

    n = 1 << DEVICE_NORMAL_BITS
    q = ndtri((np.arange(n, dtype=np.float64) + 0.5) / n)
    q /= np.sqrt(np.mean(q * q))
    return q.astype(np.float32)


DEVICE_TABLE = _device_table()
_M12 = np.uint64(0xFFF)
_S0, _S1, _S2, _S3 = (np.uint64(52 - 12 * i) for i in range(4))  # four 12-bit fields of a 64-bit hash

@nb.njit(inline="always", cache=True)
def _field(bits, shift):
    """12-bit field of a 64-bit hash as an int32 table index (stored by the SIMD hash loops into int32
    index buffers, looked up by the scalar-load loops of build_tiles)."""
    return np.int32((bits >> shift) & _M12)


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

        _BLAS_CONTROLLER = [c for c in ThreadpoolController().lib_controllers if c.user_api == "blas"]
    return _one_blas_thread(_BLAS_CONTROLLER)


@contextmanager
def _one_blas_thread(libs):
    """threadpoolctl's limit(1) for the BLAS libraries `libs`, without its per-call bookkeeping (the weight
    kernels enter this once per Monte-Carlo sample)."""
    before = [lib.num_threads for lib in libs]
    for lib in libs:
        lib.set_num_threads(1)
    try:
        yield
    finally:
        for lib, n in zip(libs, before):
            lib.set_num_threads(n)


OUT_NORMALISED = 0   # write (G+ - G-)/span (or (G - Gref)/(span/2)): the normalised effective weight
OUT_CONDUCTANCE = 1  # write G+ and G- (or G and Gref) in uS, for IR drop or a device's own program()


@nb.njit(parallel=True, cache=True)
def build_tiles(mu, sigma, eps_key, use_eps, table, dtable, quantized, binary, w_step, kmax_grp, inv_wscale, grp,
                lvl, sd_prog, sd_read, g_lo, g_hi, g_base, g_span, offset, ref_sd_prog, ref_sd_read,
                tile_keys, row_starts, tile_rows, tile_cols, out_kind, out_a, out_b,
                stored, held_p, held_m, held_s, sd_p, sd_m, sd_s, read_keys, inv_mu_unit, mu_mean,
                sigma_log, sigma_rungs, sigma_kinks, sigma_ends, sigma_max, sigma_gain,
                cell_law, nu_a, nu_b, log_ratio, noise_t, drift_kind, nu_mean, nu_std, read_kind, read_coeffs,
                q_coeff, q_exp, q_max, inv_gmax):
    """Effective weights of one layer for one sample (see module docstring).

    mu, sigma: [out, in] float32 (stored or read values). w = mu + sigma*eps (float32, as in software).
    quantized: w -> q = clip(rint(w / w_step), -kmax, kmax) (binary: q = +1 if w >= 0 else -1) (per group
      g = grp[r, j]); the cell levels are lvl[g, m + q] (uS, table of 2m+1 levels per group,
      m = lvl.shape[1]//2) with programming / read std sd_prog / sd_read at the same index; differential:
      G+ = level(+max(q,0)), G- = level(-max(-q,0)) where level(i) = lvl[g, m+i]; offset: G = lvl[g, m+q]
      against a reference cell at lvl[g, m]. A cell whose four stds are all zero keeps its level exactly.
    not quantized: normalised weight wn = w * inv_wscale[g] and targets g_base + max(+-wn, 0)*g_span
      (differential) or g_base + g_span/2 * (1 + wn) (offset); no device noise (digital weights).
    Programmed values and read values are both clipped to [g_lo, g_hi] (the device's clip_range), as
    the devices' `gaussian_programming` contract states.
    stored (VPQ/JQ with a Gaussian-read device): mu and sigma are not taken from `mu`, `sigma` but read
      from the stored arrays (block layout, z from one hash per cell of read_keys[r, c]): each cell reads
      clip(held + sd*z) (uS); mu = mu_mean + (dG+ - dG-) * inv_mu_unit[g] (the linear decode of G+ - G-
      around the decoded held value mu_mean, in mu units per uS); the sigma cell's read, times the digital
      drift-compensation gain of its tile sigma_gain[r, c] (float32 [row tiles, column tiles]; 1 without),
      is decoded from the log ladder (piecewise linear in g between rungs, constant beyond the ends) or
      linearly (sigma_log False). (The mu gain is folded into inv_mu_unit and mu_mean by the caller.)
    cell_law (a device with Gaussian programming whose read is drift + noise, `read_cell_law`): each
      programmed cell is read with the law of bayesim.devices.kernels.read_cell (drift exponent from the
      cell's fixed normal: nu_a / nu_b in block layout, from `cell_normals`; read noise from the cell's
      hash) instead of the sd_read table.
    out_kind OUT_NORMALISED writes wn into out_a; OUT_CONDUCTANCE writes the two cells into out_a, out_b.

    Each output's row tile (<= tile_rows contiguous cells) goes through the stages below one at a time,
    each a straight loop over the cells with no branches the compiler cannot turn into selects. Two rules
    keep the loops SIMD (16 cells an instruction): per-cell arrays are indexed by the unsigned ub + kl
    (numba's negative-index wraparound on a signed `base + kl` turns contiguous loads into gathers: 8x
    slower), and every table or level lookup sits in a loop of its own
    (a load at a data-dependent index keeps the compiler from vectorising the loop it is in; scalar loads
    beat SIMD gathers on the CPUs measured). So: hash -> table indices (SIMD), lookups (scalar loads),
    arithmetic (SIMD). Table lookups take their index as unsigned too: a signed index costs the
    wraparound test on every load (a 256-entry lookup loop ran at 1.13 ns a load against 0.52 unsigned).
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
    one = np.float32(1.0)
    drift = drift_kind != 0 and log_ratio > 0.0
    ref_base = tile_rows * tile_cols  # counters of the offset mapping's reference cells
    for j in nb.prange(n_out):
        buf = np.empty((12, tile_rows), np.float32)  # this output's cells, stage by stage
        wb, sb, ca, cb, za, zb, zna, znb = buf[0], buf[1], buf[2], buf[3], buf[4], buf[5], buf[6], buf[7]
        y0, y1, y2, y3 = buf[8], buf[9], buf[10], buf[11]  # table draws and level lookups
        if cell_law and not drift:
            buf[6:8] = zero  # no drift: the drift normals are not used, zeros keep the read law's inputs finite
        ib = np.empty((5, tile_rows), np.int32)
        q_b, i0, i1, i2, i3 = ib[0], ib[1], ib[2], ib[3], ib[4]
        c = j // tile_cols
        jl = j - c * tile_cols
        for r in range(n_blocks):
            r0, rows_r, base = _block_cells(row_starts, r, n_out, j)
            ub = np.uint64(base)  # this output's cells of row tile r: ub + kl (unsigned: see below)
            g = grp[r, j]
            key = tile_keys[r, c]
            # 1. mu and sigma of every cell: read from the stored arrays, or given
            if stored:
                rk = read_keys[r, c]
                inv_unit = inv_mu_unit[g]
                _table_fields3(rk, jl, tile_cols, rows_r, i0, i1, i2)
                _gather3(dtable, i0, i1, i2, rows_r, y0, y1, y2)
                _read_stored(held_p, held_m, held_s, sd_p, sd_m, sd_s, mu_mean, ub, y0, y1, y2, rows_r, inv_unit,
                             sigma_gain[r, c], glo, ghi, wb, sb)
                _decode_sigma(sb, rows_r, sigma_log, sigma_rungs, sigma_kinks, sigma_ends, g_base, g_span, sigma_max,
                              y2)
            else:
                wb[:rows_r] = mu[j, r0: r0 + rows_r]
                sb[:rows_r] = sigma[j, r0: r0 + rows_r]
            # 2. the Bayesian draw, on the software model's eps stream
            if use_eps:
                _eps_indices(eps_key, j * n_in + r0, rows_r, i0)
                for kl in range(rows_r):  # table lookups: scalar loads (faster here than SIMD gathers)
                    y0[kl] = table[np.uint32(i0[kl])]
                for kl in range(rows_r):
                    wb[kl] = wb[kl] + sb[kl] * y0[kl]
            if not quantized:
                inv_ws = inv_wscale[g]
                if out_kind == OUT_NORMALISED:
                    for kl in range(rows_r):
                        out_a[ub + np.uint64(kl)] = wb[kl] * inv_ws
                else:
                    gbase = np.float32(g_base)
                    for kl in range(rows_r):
                        wn = wb[kl] * inv_ws
                        if offset:
                            out_a[ub + np.uint64(kl)] = gbase + half * (one + wn)
                            out_b[ub + np.uint64(kl)] = gbase + half
                        else:
                            out_a[ub + np.uint64(kl)] = gbase + max(wn, zero) * span
                            out_b[ub + np.uint64(kl)] = gbase + max(-wn, zero) * span
                continue
            # 3. quantize to the signed level index q
            kmf = np.float32(kmax_grp[g])
            for kl in range(rows_r):
                if binary:  # 1-bit grid {-step, +step}
                    qf = one if wb[kl] >= zero else -one
                else:
                    qf = _rint32(wb[kl] / w_step)
                q_b[kl] = np.int32(min(max(qf, -kmf), kmf))
            # 4. program the two cells (levels, programming noise) and draw their read normals: the four
            # table fields of each cell's hash (SIMD), then the table and level lookups (scalar loads), then
            # the arithmetic (SIMD)
            lvl_g = lvl[g]
            sdp_g = sd_prog[g]
            _table_fields4(key, jl, tile_cols, rows_r, i0, i1, i2, i3)
            if offset:  # the reference cells of the row tile's inputs, at counters ref_base + row
                _table_fields_ref(key, ref_base, rows_r, i2, i3)
            for kl in range(rows_r):
                y0[kl] = dtable[np.uint32(i0[kl])]
                za[kl] = dtable[np.uint32(i1[kl])]
                y1[kl] = dtable[np.uint32(i2[kl])]
                zb[kl] = dtable[np.uint32(i3[kl])]
            if cell_law:
                # the cells' levels and programming stds: one lookup per weight, at level m + q (offset)
                # or m + |q| (differential: the other cell of the pair is at level m)
                for kl in range(rows_r):
                    q = q_b[kl]
                    i = m + q if offset else m + abs(q)
                    y2[kl] = lvl_g[i]
                    y3[kl] = sdp_g[i]
                g_m = lvl_g[m]
                s_m = np.float32(ref_sd_prog) if offset else sdp_g[m]
                for kl in range(rows_r):
                    q = q_b[kl]
                    on_a = offset or q > 0
                    on_b = not offset and q < 0
                    ga = y2[kl] if on_a else g_m
                    sa = y3[kl] if on_a else s_m
                    gb = y2[kl] if on_b else g_m
                    sb_ = y3[kl] if on_b else s_m
                    ca[kl] = min(max(ga + sa * y0[kl], glo), ghi)
                    cb[kl] = min(max(gb + sb_ * y1[kl], glo), ghi)
                if drift:  # the cells' drift-exponent normals, drawn at this programming
                    zna = nu_a[base: base + rows_r]
                    znb = nu_b[base: base + rows_r]
                # 5. read them with the device's law (drift, 1/f noise): SIMD over the row tile
                read_cells32(ca, zna, za, rows_r, log_ratio, noise_t, drift_kind, nu_mean, nu_std, read_kind,
                             read_coeffs, q_coeff, q_exp, q_max, inv_gmax, glo, ghi)
                read_cells32(cb, znb, zb, rows_r, log_ratio, noise_t, drift_kind, nu_mean, nu_std, read_kind,
                             read_coeffs, q_coeff, q_exp, q_max, inv_gmax, glo, ghi)
            else:  # per-level programming and read stds (Gaussian devices)
                sdr_g = sd_read[g]
                for kl in range(rows_r):
                    q = q_b[kl]
                    if offset:
                        ia = m + q
                        i_b = m
                        spb = np.float32(ref_sd_prog)
                        srb = np.float32(ref_sd_read)
                    else:
                        ia = m + max(q, 0)
                        i_b = m + max(-q, 0)
                        spb = sdp_g[i_b]
                        srb = sdr_g[i_b]
                    ga = lvl_g[ia]
                    gb = lvl_g[i_b]
                    spa = sdp_g[ia]
                    sra = sdr_g[ia]
                    na = min(max(min(max(ga + spa * y0[kl], glo), ghi) + sra * za[kl], glo), ghi)
                    nb_ = min(max(min(max(gb + spb * y1[kl], glo), ghi) + srb * zb[kl], glo), ghi)
                    noisy = spa > 0 or sra > 0 or spb > 0 or srb > 0
                    ca[kl] = na if noisy else ga
                    cb[kl] = nb_ if noisy else gb
            # 6. the block's output
            if out_kind == OUT_NORMALISED:
                for kl in range(rows_r):
                    out_a[ub + np.uint64(kl)] = (ca[kl] - cb[kl]) * inv_norm
            else:
                for kl in range(rows_r):
                    out_a[ub + np.uint64(kl)] = ca[kl]
                    out_b[ub + np.uint64(kl)] = cb[kl]


@nb.njit(inline="always", cache=True)
def _block_cells(row_starts, r, n_out, j):
    """(r0, rows, base) of output j in row tile r: the tile's first input row, its number of rows, and the
    flat offset of the output's cells in the block layout (cells base .. base + rows - 1; see build_tiles)."""
    r0 = row_starts[r]
    rows_r = row_starts[r + 1] - r0
    return r0, rows_r, n_out * r0 + j * rows_r


@nb.njit(inline="always", cache=True)
def _table_fields3(key, jl, tile_cols, n, i0, i1, i2):
    """Table indices of the first three 12-bit fields of the hash of cells (kl, jl), kl < n (SIMD)."""
    for kl in range(n):
        bits = bits64(key, kl * tile_cols + jl)
        i0[kl] = _field(bits, _S0)
        i1[kl] = _field(bits, _S1)
        i2[kl] = _field(bits, _S2)


@nb.njit(inline="always", cache=True)
def _table_fields4(key, jl, tile_cols, n, i0, i1, i2, i3):
    """As _table_fields3, the first four fields."""
    for kl in range(n):
        bits = bits64(key, kl * tile_cols + jl)
        i0[kl] = _field(bits, _S0)
        i1[kl] = _field(bits, _S1)
        i2[kl] = _field(bits, _S2)
        i3[kl] = _field(bits, _S3)


@nb.njit(inline="always", cache=True)
def _table_fields_ref(key, ref_base, n, i2, i3):
    """Fields 2 and 3 of the hashes of the offset mapping's reference cells (counter ref_base + row)."""
    for kl in range(n):
        bits = bits64(key, ref_base + kl)
        i2[kl] = _field(bits, _S2)
        i3[kl] = _field(bits, _S3)


@nb.njit(inline="always", cache=True)
def _gather3(t, i0, i1, i2, n, y0, y1, y2):
    """Three table lookups per cell (scalar loads: on this loop they beat SIMD gathers)."""
    for kl in range(n):
        y0[kl] = t[np.uint32(i0[kl])]
        y1[kl] = t[np.uint32(i1[kl])]
        y2[kl] = t[np.uint32(i2[kl])]


@nb.njit(inline="always", cache=True)
def _eps_indices(key, c0, n, idx):
    """16-bit table indices of the eps stream at counters c0..c0+n-1 (rng.normal's, SIMD)."""
    for kl in range(n):
        idx[kl] = np.int32(bits64(key, c0 + kl) >> np.uint64(64 - NORMAL_BITS))


@nb.njit(inline="always", cache=True)
def _read_stored(hp, hm, hs, sp, sm, ss, mu_mean, ub, z0, z1, z2, n, inv_unit, sigma_gain, glo, ghi, wb, sb):
    """Read the stored mu pair and sigma cell of each weight (cells ub .. ub + n - 1 of the stored arrays,
    SIMD): each cell reads clip(held + sd*z); mu decodes linearly around mu_mean, the sigma cell's read times
    the tile's drift-compensation gain (exactly itself at gain 1) into sb (uS)."""
    for kl in range(n):
        i = ub + np.uint64(kl)
        rp = min(max(hp[i] + sp[i] * z0[kl], glo), ghi)
        rm = min(max(hm[i] + sm[i] * z1[kl], glo), ghi)
        wb[kl] = mu_mean[i] + ((rp - hp[i]) - (rm - hm[i])) * inv_unit
        sb[kl] = min(max(hs[i] + ss[i] * z2[kl], glo), ghi) * sigma_gain


@nb.njit(parallel=True, cache=True)
def cell_normals(nu_keys, row_starts, n_out, tile_cols, offset, table, nu_a, nu_b):
    """The drift-exponent normal of every programmed cell, in block layout (see build_tiles): cell (row kl,
    column jl) of tile (r, c) draws from stream nu_keys[r, c, side] at counter jl*rows + kl, the [cols, rows]
    C order of the generic per-tile path (offset mapping: the reference cell of row kl at kl). The keys are
    those of the cells as programmed for one sample: the exponents are drawn at each programming."""
    for j in nb.prange(n_out):
        c = j // tile_cols
        jl = j - c * tile_cols
        for r in range(row_starts.shape[0] - 1):
            _, rows_r, base = _block_cells(row_starts, r, n_out, j)
            k0 = nu_keys[r, c, 0]
            k1 = nu_keys[r, c, 1]
            for kl in range(rows_r):
                nu_a[base + kl] = normal(k0, jl * rows_r + kl, table)
                nu_b[base + kl] = normal(k1, kl if offset else jl * rows_r + kl, table)


@nb.njit(cache=True)
def _decode_sigma(sb, n, sigma_log, rungs, kinks, ends, g_base, g_span, sigma_max, acc):
    """Conductances read from sigma cells (sb[:n], uS) -> sigma in place: the log ladder's decode
    (_decode_sigma_log), or linear in g - g_base (a uniform sigma grid)."""
    if sigma_log:
        _decode_sigma_log(sb, n, rungs, kinks, ends, acc)
        return
    for kl in range(n):
        v = np.float64((sb[kl] - g_base) / g_span)
        sb[kl] = np.float32(max(v, 0.0) * sigma_max)


@nb.njit(cache=True)
def _decode_sigma_log(sb, n, rungs, kinks, ends, acc):
    """Conductances read from sigma cells (sb[:n]) -> sigma in place, as AnalogLayer._g_to_sigma: piecewise
    linear between the rungs of the log ladder, constant beyond both ends (ends = [first rung, last rung,
    sigma there]). Written as a sum of ramps, sigma = sum_t kinks[t] * max(g - rungs[t], 0) (kinks: the slope
    changes at the rungs), so every rung is one SIMD pass with no table lookups; float32, within 1e-6 of
    the float64 interpolation (all ramps are >= 0: no cancellation). acc: float32 [>= n] work space. Not
    inlined into the parallel kernels, to keep their compile time down (see read_cells32)."""
    zero = np.float32(0.0)
    for kl in range(n):
        acc[kl] = zero
    n_rungs = rungs.shape[0]
    t = 0
    while t + 4 <= n_rungs:  # four rungs a pass (the same additions in the same order: fewer loads and stores)
        r0, r1, r2, r3 = rungs[t], rungs[t + 1], rungs[t + 2], rungs[t + 3]
        k0, k1, k2, k3 = kinks[t], kinks[t + 1], kinks[t + 2], kinks[t + 3]
        for kl in range(n):
            x = sb[kl]
            acc[kl] = (((acc[kl] + k0 * max(x - r0, zero)) + k1 * max(x - r1, zero)) + k2 * max(x - r2, zero)) \
                + k3 * max(x - r3, zero)
        t += 4
    for t in range(t, n_rungs):
        rt = rungs[t]
        kt = kinks[t]
        for kl in range(n):
            acc[kl] += kt * max(sb[kl] - rt, zero)
    l0, ln, v0, vn = ends[0], ends[1], ends[2], ends[3]
    for kl in range(n):
        x = sb[kl]
        s = v0 if x <= l0 else acc[kl] + v0
        sb[kl] = vn if x >= ln else s


def sigma_decode_coefficients(ladder: np.ndarray, values: np.ndarray):
    """(rungs, kinks, ends) float32 of _decode_sigma_log for the piecewise-linear map ladder (uS, ascending)
    -> values: ramps start at every rung but the last; kinks[0] is the first segment's slope."""
    ladder = np.asarray(ladder, np.float64)
    values = np.asarray(values, np.float64)
    d = np.diff(ladder)
    slopes = np.diff(values) / np.where(d != 0, d, 1.0)
    kinks = np.diff(slopes, prepend=0.0)
    ends = np.array([ladder[0], ladder[-1], values[0], values[-1]], np.float32)
    return ladder[:-1].astype(np.float32), kinks.astype(np.float32), ends


_MAGIC32 = np.float32(12582912.0)  # 1.5 * 2^23
_BIG32 = np.float32(4194304.0)  # 2^22


@nb.njit(cache=True, inline="always")
def _rint32(x):
    """Round half to even in float32 (== np.rint) without a libm call: adding and subtracting 1.5*2^23
    rounds |x| < 2^22 to an integer in IEEE float32 arithmetic; larger values are clamped first (they clip
    to the grid's end anyway)."""
    x = min(max(x, -_BIG32), _BIG32)
    return (x + _MAGIC32) - _MAGIC32


@nb.njit(cache=True)
def bias_sample(mu_b, sigma_b, key, table, quantize, binary, step, kmax, out):
    """One Monte-Carlo sample's bias, as bayesim.bnn.predict.draw_weights draws it, in one call: mu_b + sigma_b *
    eps (eps: rng.normal of stream `key` at counters 0, 1, ...; float32 product, then sum), quantized when
    `quantize` as bnn.quant.quantize_uniform does: binary: +-step; else clip(rint(b / step), -kmax, kmax) * step
    (0 when step <= 0). All float32 arithmetic, so the bits are numpy's."""
    zero = np.float32(0.0)
    for i in range(mu_b.shape[0]):
        b = mu_b[i] + sigma_b[i] * normal(key, i, table)
        if quantize:
            if binary:
                b = step if b >= zero else -step
            elif step > zero:
                b = min(max(np.rint(b / step), -kmax), kmax) * step
            else:
                b = zero
        out[i] = b


# ------------------------------------------------------------------ pair-law path (differential cells read by a law)

#: Equiprobable quantiles per table of the pair-law path (12 bits, as DEVICE_TABLE).
PAIR_QUANTILES = 1 << DEVICE_NORMAL_BITS


#: Draws per task of cell_law_draws (a multiple of every thread count's share: the values do not depend on it).
_LAW_BLOCK = 4096


@nb.njit(parallel=True, cache=True)
def cell_law_draws(levels, sd_prog, key, n, table, glo, ghi, log_ratio, noise_t, drift_kind, nu_mean, nu_std,
                   read_kind, read_coeffs, q_coeff, q_exp, q_max, inv_gmax, out):
    """out[a, i] (float32, uS): draw i of the read of a cell programmed at levels[a] with programming std
    sd_prog[a]: clip(level + sd z1) read by the device's per-cell law (read_cells32: drift with the exponent
    normal z_nu, 1/f noise z), the float32 arithmetic of build_tiles' per-cell path. z1, z_nu, z: 16-bit
    table normals (`table`, rng.normal) of stream `key` at counters 3c, 3c+1, 3c+2, c = a*n + i. n: a
    multiple of _LAW_BLOCK."""
    m = levels.shape[0]
    per = n // _LAW_BLOCK
    for b in nb.prange(m * per):
        a = b // per
        i0 = (b - a * per) * _LAW_BLOCK
        g = np.empty(_LAW_BLOCK, np.float32)
        z_nu = np.empty(_LAW_BLOCK, np.float32)
        z = np.empty(_LAW_BLOCK, np.float32)
        lv = levels[a]
        sd = sd_prog[a]
        for i in range(_LAW_BLOCK):
            c = 3 * (a * n + i0 + i)
            g[i] = min(max(lv + sd * normal(key, c, table), glo), ghi)
            z_nu[i] = normal(key, c + 1, table)
            z[i] = normal(key, c + 2, table)
        read_cells32(g, z_nu, z, _LAW_BLOCK, log_ratio, noise_t, drift_kind, nu_mean, nu_std, read_kind, read_coeffs,
                     q_coeff, q_exp, q_max, inv_gmax, glo, ghi)
        out[a, i0:i0 + _LAW_BLOCK] = g


@nb.njit(parallel=True, cache=True)
def pair_quantiles(on, off, inv_norm, k_quantiles, out):
    """out[q] (float32 [k_quantiles]): the equiprobable quantiles (at (i + 1/2)/k_quantiles) of the law of
    (on[q, i] - off[i]) * inv_norm, from the n draws of each row (float32 arithmetic, as build_tiles)."""
    n = off.shape[0]
    for q in nb.prange(on.shape[0]):
        d = np.empty(n, np.float32)
        for i in range(n):
            d[i] = (on[q, i] - off[i]) * inv_norm
        _radix_sort32(d)
        for t in range(k_quantiles):
            out[q, t] = d[((2 * t + 1) * n) // (2 * k_quantiles)]


@nb.njit(cache=True)
def _radix_sort32(x):
    """Sort float32 x (finite) in place, ascending: LSD radix sort of the order-preserving uint32 image of the
    IEEE bits, three passes of 11 bits (a few ns an element, against ~35 for a comparison sort here)."""
    n = x.shape[0]
    keys = np.empty(n, np.uint32)
    tmp = np.empty(n, np.uint32)
    for i in range(n):
        b = np.uint32(_f32_bits(x[i]))
        keys[i] = ~b if b & np.uint32(0x80000000) else b | np.uint32(0x80000000)
    count = np.empty(2048, np.int64)
    for shift in (0, 11, 22):
        count[:] = 0
        for i in range(n):
            count[(keys[i] >> np.uint32(shift)) & np.uint32(2047)] += 1
        total = 0
        for v in range(2048):
            c = count[v]
            count[v] = total
            total += c
        for i in range(n):
            v = (keys[i] >> np.uint32(shift)) & np.uint32(2047)
            tmp[count[v]] = keys[i]
            count[v] += 1
        keys, tmp = tmp, keys
    for i in range(n):
        k = keys[i]
        b = k & np.uint32(0x7FFFFFFF) if k & np.uint32(0x80000000) else ~k
        x[i] = _bits_f32(np.int32(b))


@nb.njit(parallel=True, cache=True)
def build_pair_tiles(mu, sigma, eps_keys, table, dtable, binary, w_step, kmax_grp, grp, pair, pair_zero,
                     tile_keys, row_starts, tile_rows, tile_cols, out,
                     stored, held_p, held_m, held_s, sd_p, sd_m, sd_s, read_keys, inv_mu_unit, mu_mean,
                     sigma_log, sigma_rungs, sigma_kinks, sigma_ends, sigma_max, sigma_gain, g_base, g_span,
                     g_lo, g_hi):
    """Normalised effective weights of one layer for len(eps_keys) Monte-Carlo samples on the pair-law path
    (differential mapping, no IR drop): out[i] (block layout) is the sample of eps_keys[i],
    tile_keys[i], read_keys[i]. Each weight takes the steps of build_tiles up to its level index q, then
    (G+ - G-)/span is drawn in one lookup from the law of its cell pair: pair[(pair_zero[g] + q) * K + u],
    K = PAIR_QUANTILES quantiles per q (bayesim.crossbar.pairlaw), u a 12-bit uniform index. The two cells
    of a pair are programmed and read independently of each other and of every other cell, so drawing their
    difference from its law is exact in distribution (up to the table's 12-bit precision).

    Several samples per call: the stored arrays (seven float32 streams per weight) are read from memory
    once for all of them (the later samples find the row tile in L1 cache); memory bandwidth, not
    arithmetic, bounds this kernel. Every sample's values are those of a call with that sample alone.

    Random streams: eps as build_tiles; stored arrays read with the first three 12-bit fields of the hash
    of read_keys[i, r, c] at the cell's counter (as build_tiles), u its fourth field; without stored arrays
    u is the fourth field of the hash of tile_keys[i, r, c]. The hashes are kept whole (one store a cell)
    and their fields taken in the loops that use them: a third less memory traffic than index buffers."""
    n_out, n_in = mu.shape
    n_blocks = row_starts.shape[0] - 1
    n_samples = eps_keys.shape[0]
    glo = np.float32(g_lo)
    ghi = np.float32(g_hi)
    one = np.float32(1.0)
    zero = np.float32(0.0)
    for j in nb.prange(n_out):
        buf = np.empty((5, tile_rows), np.float32)
        wb, sb, y0, y1, y2 = buf[0], buf[1], buf[2], buf[3], buf[4]
        ib = np.empty((2, tile_rows), np.int32)
        q_b, i0 = ib[0], ib[1]
        hb = np.empty(tile_rows, np.uint64)  # the cells' hashes: their table fields are taken where used
        c = j // tile_cols
        jl = j - c * tile_cols
        for r in range(n_blocks):
            r0, rows_r, base = _block_cells(row_starts, r, n_out, j)
            ub = np.uint64(base)
            g = grp[r, j]
            kmf = np.float32(kmax_grp[g])
            row0 = np.int32(pair_zero[g])
            for si in range(n_samples):
                if stored:
                    _hashes(read_keys[si, r, c], jl, tile_cols, rows_r, hb)
                    for kl in range(rows_r):  # table lookups: scalar loads
                        b = hb[kl]
                        y0[kl] = dtable[(b >> _S0) & _M12]
                        y1[kl] = dtable[(b >> _S1) & _M12]
                        y2[kl] = dtable[(b >> _S2) & _M12]
                    _read_stored(held_p, held_m, held_s, sd_p, sd_m, sd_s, mu_mean, ub, y0, y1, y2, rows_r,
                                 inv_mu_unit[g], sigma_gain[r, c], glo, ghi, wb, sb)
                    _decode_sigma(sb, rows_r, sigma_log, sigma_rungs, sigma_kinks, sigma_ends, g_base, g_span,
                                  sigma_max, y2)
                else:
                    wb[:rows_r] = mu[j, r0: r0 + rows_r]
                    sb[:rows_r] = sigma[j, r0: r0 + rows_r]
                    _hashes(tile_keys[si, r, c], jl, tile_cols, rows_r, hb)
                _eps_indices(eps_keys[si], j * n_in + r0, rows_r, i0)
                for kl in range(rows_r):
                    y0[kl] = table[np.uint32(i0[kl])]
                for kl in range(rows_r):
                    wb[kl] = wb[kl] + sb[kl] * y0[kl]
                for kl in range(rows_r):
                    if binary:
                        qf = one if wb[kl] >= zero else -one
                    else:
                        qf = _rint32(wb[kl] / w_step)
                    q_b[kl] = ((row0 + np.int32(min(max(qf, -kmf), kmf))) << DEVICE_NORMAL_BITS) + _field(hb[kl], _S3)
                o = out[si]
                for kl in range(rows_r):
                    o[ub + np.uint64(kl)] = pair[np.uint32(q_b[kl])]


@nb.njit(inline="always", cache=True)
def _hashes(key, jl, tile_cols, n, out):
    """The 64-bit hashes of cells (kl, jl), kl < n, of stream `key` (SIMD)."""
    for kl in range(n):
        out[kl] = bits64(key, kl * tile_cols + jl)
