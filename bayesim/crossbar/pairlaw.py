"""Pair-law tables: the law of a differential weight (G+ - G-)/span, per level index q, as 12-bit tables.

On the pair-law path (a device with Gaussian programming and a per-cell read law, e.g. PCM; differential
mapping; no IR drop) a sampled weight at level index q is one draw from the law of its cell pair: cell +
programmed at level m + max(q, 0), cell - at level m + max(-q, 0), each programmed (clip(level + sd z))
and read by the device's law (drift with an exponent drawn at programming, 1/f noise) independently of
the other and of every other cell. That law is tabulated once per layer as PAIR_QUANTILES equiprobable
quantiles, estimated from N_DRAWS Monte-Carlo draws of each cell (16-bit table normals); the weight kernel then
draws the weight with one table lookup instead of two programming draws, two read draws and two cell
laws (three transcendental functions each).

The tables are a finite-precision representation of the device's law, like the 12-bit Gaussian table of
the device noise: they come from a fixed stream, so they are the same for every seed and are cached by
their content (levels, stds, law, read time).
"""
from __future__ import annotations

import numpy as np

from bayesim import rng
from bayesim.crossbar import kernels

#: Monte-Carlo draws per cell level behind each table: 64 per quantile; the variance of a table is within
#: about 0.3% (sqrt(2 / N_DRAWS)) of the law's.
N_DRAWS = 1 << 18
#: The cost model that decides where a layer takes the pair-law path (AnalogLayer._setup_mapping), measured on
#: the 2-core machine of the benchmark: the weight kernel saves about 4 ns per weight and sample (2.2-2.6 ms
#: against 0.6 ms for the bench's 401,408 weights), and the tables cost about 1.2 ms per cell level drawn
#: (`level_draws`). The path is taken where NOMINAL_SAMPLES samples save more than the tables cost, so the
#: choice (and with it the random streams) depends on the layer alone, never on the run.
SAVED_S_PER_WEIGHT_SAMPLE = 4e-9
TABLE_S_PER_LEVEL = 1.2e-3
NOMINAL_SAMPLES = 32
_KEY_ON, _KEY_OFF = (np.uint64(rng.derive_key(0, "pair law", side)) for side in ("on", "off"))
_CACHE: dict[bytes, np.ndarray] = {}
_CACHE_MAX = 256


def level_draws(kmax: np.ndarray) -> int:
    """Cell levels the tables of a layer with these per-group grid sizes must draw."""
    return int(sum(int(k) + 2 for k in np.unique(kmax)))


def pays_off(n_weights: int, kmax: np.ndarray) -> bool:
    """Whether NOMINAL_SAMPLES samples of a layer of n_weights weights save more than its tables cost."""
    return n_weights * NOMINAL_SAMPLES * SAVED_S_PER_WEIGHT_SAMPLE >= level_draws(kmax) * TABLE_S_PER_LEVEL


def pair_tables(lvl: np.ndarray, sd_prog: np.ndarray, kmax: np.ndarray, law: tuple, span: float):
    """(pair, pair_zero): pair float32 [rows * PAIR_QUANTILES], the quantile tables of every q of every
    distinct grid (rows q = -k..k of grid k, one after the other); pair_zero int32 [groups], the row of
    q = 0 of each group's grid. lvl, sd_prog: [groups, 2m+1] level conductances and programming stds (uS);
    law: the float32 arguments of read_cell32 after the normals (log_ratio .. inv_gmax, lo, hi)."""
    m = lvl.shape[1] // 2
    inv_norm = np.float32(1.0) / np.float32(span)
    blocks, zero_row, rows = [], {}, 0
    for k in np.unique(kmax):
        k = int(k)
        g = int(np.flatnonzero(kmax == k)[0])  # every group with this grid has the same levels and stds
        t = _grid_tables(np.ascontiguousarray(lvl[g, m:m + k + 1]), np.ascontiguousarray(sd_prog[g, m:m + k + 1]),
                         law, inv_norm)
        blocks.append(t)
        zero_row[k] = rows + k
        rows += t.shape[0]
    pair_zero = np.array([zero_row[int(k)] for k in kmax], np.int32)
    return np.ascontiguousarray(np.concatenate(blocks).reshape(-1)), pair_zero


def _grid_tables(levels: np.ndarray, sd: np.ndarray, law: tuple, inv_norm: np.float32) -> np.ndarray:
    """[2k+1, PAIR_QUANTILES] for one grid: rows q = -k..k."""
    key = b"".join((levels.astype(np.float32).tobytes(), sd.astype(np.float32).tobytes(), repr(law).encode(),
                    np.float32(inv_norm).tobytes()))
    hit = _CACHE.get(key)
    if hit is not None:
        return hit
    lo, hi = np.float32(law[-2]), np.float32(law[-1])
    k = levels.size - 1
    on = np.empty((k + 1, N_DRAWS), np.float32)
    off = np.empty((1, N_DRAWS), np.float32)
    kernels.cell_law_draws(levels.astype(np.float32), sd.astype(np.float32), _KEY_ON, N_DRAWS, rng.NORMAL_TABLE, lo,
                           hi, *law[:-2], on)
    kernels.cell_law_draws(levels[:1].astype(np.float32), sd[:1].astype(np.float32), _KEY_OFF, N_DRAWS,
                           rng.NORMAL_TABLE, lo, hi, *law[:-2], off)
    pos = np.empty((k + 1, kernels.PAIR_QUANTILES), np.float32)
    kernels.pair_quantiles(on, off[0], inv_norm, kernels.PAIR_QUANTILES, pos)
    # q < 0: the pair swapped, the law of -D_|q|: its quantiles are those of D_|q| negated, in reverse order
    table = np.concatenate([-pos[:0:-1, ::-1], pos])
    if len(_CACHE) >= _CACHE_MAX:
        _CACHE.clear()
    _CACHE[key] = table
    return table
