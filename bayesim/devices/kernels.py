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


@nb.njit(parallel=True, cache=True)
def read_kernel(held, out, t_read, key, k_nu, table, drift_kind, nu_mean, nu_std, t0_drift,
                read_kind, coeffs, q_coeff, q_exp, q_max, t_pulse, t0_read, g_max, lo, hi):
    """Conductance (uS) read `t_read` s after programming: drift, then read noise."""
    n = held.size
    inv_gmax = 1.0 / g_max
    log_ratio = math.log((t_read + t0_drift) / t0_drift)
    noise_t = 0.0
    if read_kind == READ_PCM:
        x = math.log((t_read + t0_read + t_pulse) / (2.0 * t_pulse))
        noise_t = math.sqrt(x) if x > 0.0 else 0.0
    for i in nb.prange(n):
        g0 = np.float64(held[i])
        g = g0
        if drift_kind != DRIFT_NONE and t_read > 0.0:
            if drift_kind == DRIFT_POWER:
                nu = nu_mean + nu_std * normal(k_nu, i, table)
                if nu < 0.0:
                    nu = 0.0
            else:
                mu, sd = pcm_nu_mean_std(abs(g0) * inv_gmax)
                nu = abs(mu + sd * normal(k_nu, i, table))
            g = g0 * math.exp(-nu * log_ratio)
        if read_kind == READ_POLY:
            g += _poly(coeffs, g0 * inv_gmax) * normal(key, i, table)
        elif read_kind == READ_PCM:
            gr = abs(g0) * inv_gmax
            den = gr ** q_exp
            if den < 1e-3:
                den = 1e-3
            q = q_coeff / den
            if q > q_max:
                q = q_max
            g += abs(g) * q * noise_t * normal(key, i, table)
        if g < lo:
            g = lo
        elif g > hi:
            g = hi
        out[i] = np.float32(g)
