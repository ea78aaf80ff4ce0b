"""Numba kernels of the composed built-in devices: programming and reading whole tiles.

Element i is cell i: every random number is `bayesim.rng` of (key, i), so results are bit-identical
for a seed whatever the thread count. Event noise uses the event `key`; per-cell properties (stuck-at
faults, device-to-device gain/offset, drift exponent) use keys derived from the fixed `cell_key`.
Arithmetic is float64 per element, results float32.
"""
from __future__ import annotations

import math

import numba as nb
import numpy as np

from bayesim._math32 import exp32, log32
from bayesim.rng import normal, uniform

PROG_NONE, PROG_POLY, PROG_TABLE, PROG_SAMPLES = 0, 1, 2, 3
READ_NONE, READ_POLY, READ_PCM = 0, 1, 2
DRIFT_NONE, DRIFT_POWER, DRIFT_PCM = 0, 1, 2


@nb.njit(inline="always", cache=True)
def _poly(coeffs, x):
    s = 0.0
    p = 1.0
    for k in range(coeffs.size):
        s += coeffs[k] * p
        p *= x
    return s if s > 0.0 else 0.0


@nb.njit(inline="always", cache=True)
def _segment(levels, g):
    """(j, w): g lies between levels[j] and levels[j+1] with weight w in [0, 1] (clamped at the ends)."""
    n = levels.size
    if g <= levels[0]:
        return 0, 0.0
    if g >= levels[n - 1]:
        return n - 2, 1.0
    j = np.searchsorted(levels, g, side="right") - 1
    return j, (g - levels[j]) / (levels[j + 1] - levels[j])


@nb.njit(inline="always", cache=True)
def pcm_nu_mean_std(g_rel):
    """aihwkit PCMLikeNoiseModel drift exponent mean and std at G/g_max (Nandakumar et al. 2018)."""
    gr = g_rel if g_rel > 1e-7 else 1e-7
    lg = math.log(gr)
    mu = -0.0155 * lg + 0.0244
    mu = min(max(mu, 0.049), 0.1)
    sd = -0.0125 * lg - 0.0059
    sd = min(max(sd, 0.008), 0.045)
    return mu, sd


@nb.njit(parallel=True, cache=True)
def program_kernel(targets, out, key, k_fault, k_gain, k_off, table, prog_kind, coeffs, g_max,
                   f_min, f_max, d2d_rel, d2d_abs, lo, hi, g_min, t_levels, t_offset, t_std,
                   t_dev, t_start, t_count):
    """Held conductance (uS) of each cell after programming `targets` (uS)."""
    n = targets.size
    inv_gmax = 1.0 / g_max
    faults = f_min + f_max > 0.0
    d2d = d2d_rel > 0.0 or d2d_abs > 0.0
    for i in nb.prange(n):
        t = np.float64(targets[i])
        if faults:
            u = uniform(k_fault, i)
            if u < f_min:
                out[i] = np.float32(g_min)
                continue
            if u < f_min + f_max:
                out[i] = np.float32(g_max)
                continue
        g = t
        if d2d:
            g = t * (1.0 + d2d_rel * normal(k_gain, i, table)) + d2d_abs * normal(k_off, i, table)
        if prog_kind == PROG_POLY:
            g += _poly(coeffs, t * inv_gmax) * normal(key, i, table)
        elif prog_kind == PROG_TABLE:
            j, w = _segment(t_levels, t)
            off = (1.0 - w) * t_offset[j] + w * t_offset[j + 1]
            sd = (1.0 - w) * t_std[j] + w * t_std[j + 1]
            g += off + sd * normal(key, i, table)
        elif prog_kind == PROG_SAMPLES:
            # quantile (displacement) interpolation between the empirical deviation laws of the two
            # neighbouring levels; exactly the empirical law at a measured level
            j, w = _segment(t_levels, t)
            u = uniform(key, i)
            a = t_dev[t_start[j] + min(int(u * t_count[j]), t_count[j] - 1)]
            b = t_dev[t_start[j + 1] + min(int(u * t_count[j + 1]), t_count[j + 1] - 1)]
            g += (1.0 - w) * a + w * b
        if g < lo:
            g = lo
        elif g > hi:
            g = hi
        out[i] = np.float32(g)


@nb.njit(inline="always", cache=True)
def read_cell(g0, z_nu, z, log_ratio, noise_t, drift_kind, nu_mean, nu_std, read_kind, coeffs, q_coeff, q_exp,
              q_max, inv_gmax, lo, hi):
    """One cell read: held g0 (uS) -> drift with the cell's fixed normal z_nu (drift exponent), then read
    noise with the fresh normal z, clipped to [lo, hi] (float64). The law of `read_kernel`, per cell, so
    the crossbar's fused kernels can apply it to cells they program themselves."""
    g = g0
    if g0 == 0.0 and read_kind != READ_POLY:  # a zero conductance neither drifts nor has 1/f noise
        return 0.0 if lo <= 0.0 <= hi else (lo if 0.0 < lo else hi)
    # log(|G|/g_max), clamped as aihwkit, shared by the PCM drift exponent and the 1/f noise factor
    lg = math.log(max(abs(g0) * inv_gmax, 1e-7)) if (drift_kind == DRIFT_PCM or read_kind == READ_PCM) else 0.0
    if drift_kind != DRIFT_NONE and log_ratio > 0.0:
        if drift_kind == DRIFT_POWER:
            nu = nu_mean + nu_std * z_nu
            if nu < 0.0:
                nu = 0.0
        else:
            mu = min(max(-0.0155 * lg + 0.0244, 0.049), 0.1)
            sd = min(max(-0.0125 * lg - 0.0059, 0.008), 0.045)
            nu = abs(mu + sd * z_nu)
        g = g0 * math.exp(-nu * log_ratio)
    if read_kind == READ_POLY:
        g += _poly(coeffs, g0 * inv_gmax) * z
    elif read_kind == READ_PCM:
        den = math.exp(q_exp * lg)  # |G/g_max|^q_exp (below 1e-7 the 1e-3 floor applies either way)
        if den < 1e-3:
            den = 1e-3
        q = q_coeff / den
        if q > q_max:
            q = q_max
        g += abs(g) * q * noise_t * z
    if g < lo:
        g = lo
    elif g > hi:
        g = hi
    return g


@nb.njit(inline="always", cache=True)
def read_cell32(g0, z_nu, z, log_ratio, noise_t, drift_kind, nu_mean, nu_std, read_kind, coeffs, q_coeff, q_exp,
              q_max, inv_gmax, lo, hi):
    """`read_cell` in float32 arithmetic (the crossbar's fused weight kernel: the same law, float32
    rounding, the inlined single-precision log/exp of bayesim._math32)."""
    if read_kind != READ_POLY:
        return _read_cell32_no_poly(g0, z_nu, z, log_ratio, noise_t, drift_kind, nu_mean, nu_std, read_kind,
                                    q_coeff, q_exp, q_max, inv_gmax, lo, hi)
    inf = np.float32(np.inf)
    g = _read_cell32_no_poly(g0, z_nu, z, log_ratio, noise_t, drift_kind, nu_mean, nu_std, READ_NONE, q_coeff,
                             q_exp, q_max, inv_gmax, -inf, inf)  # drift alone
    g += np.float32(_poly(coeffs, g0 * inv_gmax)) * z
    return min(max(g, lo), hi)


@nb.njit(inline="always", cache=True)
def _read_cell32_no_poly(g0, z_nu, z, log_ratio, noise_t, drift_kind, nu_mean, nu_std, read_kind, q_coeff, q_exp,
                         q_max, inv_gmax, lo, hi):
    """read_cell32 for every read law but READ_POLY, without its coefficient loop: straight-line code
    that the compiler turns into SIMD over a row of cells (same values as read_cell32)."""
    zero = np.float32(0.0)
    pcm = drift_kind == DRIFT_PCM or read_kind == READ_PCM
    lg = log32(max(abs(g0) * inv_gmax, np.float32(1e-7))) if pcm else zero
    g = g0
    if drift_kind != DRIFT_NONE and log_ratio > 0.0:
        if drift_kind == DRIFT_POWER:
            nu = max(nu_mean + nu_std * z_nu, zero)
        else:
            mu = min(max(-np.float32(0.0155) * lg + np.float32(0.0244), np.float32(0.049)), np.float32(0.1))
            sd = min(max(-np.float32(0.0125) * lg - np.float32(0.0059), np.float32(0.008)), np.float32(0.045))
            nu = abs(mu + sd * z_nu)
        g = g0 * exp32(-nu * log_ratio)
    if read_kind == READ_PCM:
        q = min(q_coeff / max(exp32(q_exp * lg), np.float32(1e-3)), q_max)
        g += abs(g) * q * noise_t * z
    if g0 == zero:  # a zero conductance neither drifts nor has 1/f noise
        g = zero
    return min(max(g, lo), hi)


@nb.njit(cache=True)
def read_cells32(g, z_nu, z, n, log_ratio, noise_t, drift_kind, nu_mean, nu_std, read_kind, coeffs, q_coeff, q_exp,
                 q_max, inv_gmax, lo, hi):
    """read_cell32 over g[:n] in place (z_nu, z: the cells' normals). One loop per law family, so the
    common ones (PCM, power-law drift, no read noise) run branch-free as SIMD: the per-cell law in a long
    scalar loop is latency-bound (~30 ns a cell), here ~2 ns. A function of its own, not inlined into the
    crossbar's weight kernel: numba's IR inlining made that parallel kernel compile in 26 s instead of 7 s,
    for no speed."""
    if read_kind == READ_POLY:
        for i in range(n):
            g[i] = read_cell32(g[i], z_nu[i], z[i], log_ratio, noise_t, drift_kind, nu_mean, nu_std, read_kind,
                               coeffs, q_coeff, q_exp, q_max, inv_gmax, lo, hi)
    else:
        for i in range(n):
            g[i] = _read_cell32_no_poly(g[i], z_nu[i], z[i], log_ratio, noise_t, drift_kind, nu_mean, nu_std,
                                        read_kind, q_coeff, q_exp, q_max, inv_gmax, lo, hi)


def read_law(t_read, drift_kind, nu_mean, nu_std, t0_drift, read_kind, t_pulse, t0_read):
    """(log_ratio, noise_t): the time factors of `read_cell` at read time t_read (s); log_ratio is 0 when
    there is no drift (or t_read = 0), as in read_kernel."""
    log_ratio = math.log((t_read + t0_drift) / t0_drift) if drift_kind != DRIFT_NONE and t_read > 0.0 else 0.0
    noise_t = 0.0
    if read_kind == READ_PCM:
        x = math.log((t_read + t0_read + t_pulse) / (2.0 * t_pulse))
        noise_t = math.sqrt(x) if x > 0.0 else 0.0
    return log_ratio, noise_t


@nb.njit(parallel=True, cache=True)
def read_kernel(held, out, t_read, key, k_nu, table, drift_kind, nu_mean, nu_std, t0_drift,
                read_kind, coeffs, q_coeff, q_exp, q_max, t_pulse, t0_read, g_max, lo, hi):
    """Conductance (uS) read `t_read` s after programming: drift, then read noise."""
    n = held.size
    inv_gmax = 1.0 / g_max
    log_ratio = math.log((t_read + t0_drift) / t0_drift) if drift_kind != DRIFT_NONE and t_read > 0.0 else 0.0
    noise_t = 0.0
    if read_kind == READ_PCM:
        x = math.log((t_read + t0_read + t_pulse) / (2.0 * t_pulse))
        noise_t = math.sqrt(x) if x > 0.0 else 0.0
    for i in nb.prange(n):
        z_nu = normal(k_nu, i, table) if drift_kind != DRIFT_NONE and log_ratio > 0.0 else 0.0
        z = normal(key, i, table) if read_kind != READ_NONE else 0.0
        out[i] = np.float32(read_cell(np.float64(held[i]), z_nu, z, log_ratio, noise_t, drift_kind, nu_mean,
                                      nu_std, read_kind, coeffs, q_coeff, q_exp, q_max, inv_gmax, lo, hi))


@nb.njit(parallel=True, cache=True)
def read_moments_kernel(held, mean, sd, k_nu, table, log_ratio, noise_t, drift_kind, nu_mean, nu_std, read_kind,
                        coeffs, q_coeff, q_exp, q_max, inv_gmax):
    """Per cell: the drifted conductance (mean of the read before clipping) and the read-noise std (uS) at
    a fixed read time: read = clip(mean + sd z), z a fresh standard normal."""
    for i in nb.prange(held.size):
        g0 = np.float64(held[i])
        z_nu = normal(k_nu, i, table) if drift_kind != DRIFT_NONE and log_ratio > 0.0 else 0.0
        m = read_cell(g0, z_nu, 0.0, log_ratio, noise_t, drift_kind, nu_mean, nu_std, 0, coeffs, q_coeff,
                      q_exp, q_max, inv_gmax, -np.inf, np.inf)
        if read_kind == READ_POLY:
            v = _poly(coeffs, g0 * inv_gmax)
        elif read_kind == READ_PCM:  # the noise term of read_cell with z = 1
            v = read_cell(g0, z_nu, 1.0, log_ratio, noise_t, drift_kind, nu_mean, nu_std, read_kind, coeffs,
                          q_coeff, q_exp, q_max, inv_gmax, -np.inf, np.inf) - m
        else:
            v = 0.0
        mean[i] = np.float32(m)
        sd[i] = np.float32(v)
