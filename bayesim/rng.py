"""Counter-based random streams: bit-identical results for a seed whatever the thread count.

Every random number in the simulator is a pure function of (key, counter): `key` is a 64-bit stream
key derived from the experiment seed and the identity of what is being drawn (MC sample, layer,
tile, purpose), `counter` the element's index. Kernels may therefore run their loops in any order and
on any number of threads.

Gaussian samples come from a 16-bit inverse-CDF table (65,536 equiprobable quantiles, |z| <= 4.33),
like the finite-precision Gaussian generators of hardware Bayesian machines: 16 bits of precision,
exact mean 0 and a variance within 2e-4 of 1. `normal_exact` (Box-Muller, float64) is the
full-precision reference.

Plug-in devices written in numpy can use `generator(key)` (a numpy Generator on Philox seeded by the
key) and stay deterministic too.
"""
from __future__ import annotations

import functools
import math

import numba as nb
import numpy as np
from scipy.special import ndtri

from bayesim import _numba_cache

_numba_cache.install()  # every kernel module imports this one: damaged cache files recompile, not fail

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_SEED_OFFSET = np.uint64(0x632BE59BD9B4E019)  # derive_key: key of a seed = seed * GOLDEN + _SEED_OFFSET
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
NORMAL_BITS = 16


def _make_table() -> np.ndarray:
    n = 1 << NORMAL_BITS
    q = ndtri((np.arange(n, dtype=np.float64) + 0.5) / n)
    q /= np.sqrt(np.mean(q * q))  # unit variance exactly over the table
    return q.astype(np.float32)


NORMAL_TABLE = _make_table()


@nb.njit(inline="always", cache=True)
def mix64(z):
    """SplitMix64 finaliser: a bijective 64-bit hash with full avalanche."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@nb.njit(inline="always", cache=True)
def bits64(key, counter):
    """64 random bits for element `counter` of stream `key`."""
    return mix64(np.uint64(key) + (np.uint64(counter) + np.uint64(1)) * GOLDEN)


@nb.njit(inline="always", cache=True)
def uniform(key, counter):
    """Uniform float64 in [0, 1) with 53 bits."""
    return (bits64(key, counter) >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@nb.njit(inline="always", cache=True)
def normal(key, counter, table):
    """Standard normal (16-bit table quantile) for element `counter` of stream `key`."""
    return table[bits64(key, counter) >> np.uint64(64 - NORMAL_BITS)]  # unsigned index: no wraparound test


@nb.njit(inline="always", cache=True)
def normal_exact(key, counter):
    """Standard normal by Box-Muller in float64 (the full-precision reference)."""
    b = bits64(key, counter)
    u1 = ((b >> np.uint64(32)) + np.uint64(1)) * (1.0 / 4294967297.0)
    u2 = (b & np.uint64(0xFFFFFFFF)) * (1.0 / 4294967296.0)
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


def derive_key(seed: int, *ids) -> int:
    """A 64-bit stream key for `seed` and a path of identifiers (ints or strings).

    derive_key(seed, "spq", sample, layer, tile) names one independent stream.
    """
    mask = (1 << 64) - 1
    k = (int(seed) * int(GOLDEN) + int(_SEED_OFFSET)) & mask
    for i in ids:
        k = _mix64_py((k ^ _mix64_py(_id64(i) + int(GOLDEN))) & mask)
    return k


def _id64(i) -> int:
    """The 64-bit value of one identifier of derive_key: a string's FNV id, an int modulo 2^64."""
    return _string_id(i) if isinstance(i, str) else int(i) & ((1 << 64) - 1)


@functools.lru_cache(maxsize=1024)
def _string_id(name: str) -> int:
    """The 64-bit identifier of a string in derive_key (FNV-style over its UTF-8 bytes)."""
    mask = (1 << 64) - 1
    v = 0
    for ch in name.encode():
        v = (v * 1099511628211 ^ ch) & mask
    return v


@nb.njit(inline="always", cache=True)
def _step(key, v):
    """derive_key's step for one identifier v (uint64) after `key` (numba: the same uint64 arithmetic)."""
    return mix64(key ^ mix64(v + GOLDEN))


@nb.njit(cache=True)
def _extend_grid(key, n_r, n_c, out):
    """out[r, c] = derive_key's steps for the ids r, c after `key`."""
    for r in range(n_r):
        kr = _step(key, np.uint64(r))
        for c in range(n_c):
            out[r, c] = _step(kr, np.uint64(c))


def derive_key_grid(seed: int, ids: tuple, n_r: int, n_c: int, suffix: tuple = ()) -> np.ndarray:
    """uint64 [n_r, n_c]: derive_key(seed, *ids, r, c, *suffix) for every r < n_r, c < n_c (one key per tile),
    in one call instead of n_r * n_c."""
    out = np.empty((n_r, n_c), np.uint64)
    _extend_grid(np.uint64(derive_key(seed, *ids)), n_r, n_c, out)
    if suffix:
        _chain(out.reshape(-1), _ids64(suffix), False, out.reshape(-1))
    return out


def derive_key_rows(seed: int, head: tuple, values, tail: tuple = (), grid: tuple | None = None) -> np.ndarray:
    """uint64 [len(values)] (grid (n_r, n_c): [len(values), n_r, n_c]): derive_key(seed, *head, v, *tail) for
    every integer v of `values` (with the grid: derive_key(seed, *head, v, *tail, r, c) for every tile r, c),
    in one call: the keys of several Monte-Carlo samples at once."""
    values = np.ascontiguousarray(values, np.uint64)
    rows = np.empty(values.shape[0], np.uint64)
    _rows(np.uint64(derive_key(seed, *head)), values, _ids64(tail), rows)
    if grid is None:
        return rows
    out = np.empty((values.shape[0], *grid), np.uint64)
    for k in range(values.shape[0]):
        _extend_grid(rows[k], grid[0], grid[1], out[k])
    return out


@nb.njit(cache=True)
def _rows(key, values, tail, out):
    """out[i] = derive_key's steps for values[i], then `tail`, after `key`."""
    for i in range(values.shape[0]):
        k = _step(key, values[i])
        for v in tail:
            k = _step(k, v)
        out[i] = k


def derive_keys(seeds: np.ndarray, *ids) -> np.ndarray:
    """derive_key(k, *ids) for every key k of the uint64 array `seeds` (same shape), in one call."""
    seeds = np.ascontiguousarray(seeds, np.uint64)
    out = np.empty_like(seeds)
    _chain(seeds.reshape(-1), _ids64(ids), True, out.reshape(-1))
    return out


def _ids64(ids) -> np.ndarray:
    return np.array([_id64(i) for i in ids], np.uint64)


@nb.njit(cache=True)
def _chain(keys, ids, from_seed, out):
    """out[i] = derive_key's steps for `ids` after keys[i]: from derive_key(keys[i], *ids) when from_seed, else
    continuing a key already derived (derive_key(seed, *a) -> derive_key(seed, *a, *ids))."""
    for i in range(keys.shape[0]):
        k = keys[i] * GOLDEN + _SEED_OFFSET if from_seed else keys[i]
        for v in ids:
            k = _step(k, v)
        out[i] = k


def _mix64_py(z: int) -> int:
    mask = (1 << 64) - 1
    z &= mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def generator(key: int) -> np.random.Generator:
    """A numpy Generator for stream `key` (for plug-ins written in plain numpy)."""
    return np.random.Generator(np.random.Philox(key=int(key) & ((1 << 64) - 1)))


@nb.njit(parallel=True, cache=True)
def _fill_normal(out, key, start, table):
    flat = out.reshape(-1)
    for i in nb.prange(flat.size):
        flat[i] = normal(key, start + i, table)


@nb.njit(parallel=True, cache=True)
def _fill_uniform(out, key):
    flat = out.reshape(-1)
    for i in nb.prange(flat.size):
        flat[i] = uniform(key, i)


def normals(key: int, shape, start: int = 0) -> np.ndarray:
    """float32 array of standard normals from stream `key` at counters start, start + 1, ... in C order
    (16-bit table precision)."""
    out = np.empty(shape, dtype=np.float32)
    _fill_normal(out, np.uint64(key), np.uint64(start), NORMAL_TABLE)
    return out


def uniforms(key: int, shape) -> np.ndarray:
    """float64 array of U[0,1) from stream `key`."""
    out = np.empty(shape, dtype=np.float64)
    _fill_uniform(out, np.uint64(key))
    return out
