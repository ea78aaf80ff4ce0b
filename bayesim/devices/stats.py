"""Level statistics: programmed and read distributions per level, and how many levels a device can
tell apart at 1 sigma (neighbouring levels whose means are more than sigma_i + sigma_j apart).
Overlap between neighbouring levels is what limits the usable bits of a cell."""
from __future__ import annotations

import numpy as np

from bayesim import rng


def distinguishable_levels(means, sigmas) -> int:
    """Largest chain of levels (ascending means) whose consecutive members are > sigma_i + sigma_j apart,
    chosen greedily from the lowest level (optimal for a chain on a line)."""
    m = np.asarray(means, np.float64)
    s = np.asarray(sigmas, np.float64)
    order = np.argsort(m, kind="stable")
    m, s = m[order], s[order]
    if m.size == 0:
        return 0
    count, last = 1, 0
    for j in range(1, m.size):
        if m[j] - m[last] > s[last] + s[j]:
            count, last = count + 1, j
    return count


def _mean_sigma(device, g: np.ndarray, t_read: float):
    g = np.asarray(g, np.float32)
    off = getattr(device, "program_offset", None)
    prog_mean = g.astype(np.float64) + (np.asarray(off(g), np.float64) if off else 0.0)
    drift = getattr(device, "drift_factor", None)
    mean = prog_mean * (np.asarray(drift(prog_mean, t_read), np.float64) if drift else 1.0)
    ps = np.asarray(device.program_sigma(g), np.float64)
    rs = np.asarray(device.read_sigma(prog_mean.astype(np.float32), t_read), np.float64)
    return mean, np.sqrt(ps ** 2 + rs ** 2)


#: Cells sampled per rung by `log_ladder_noise`: a rung's 1-sigma spread is then known to about 1%.
LADDER_SAMPLES = 20000
#: The percentiles of a Gaussian's mean -1, 0 and +1 std
_ONE_SIGMA_PERCENTILES = (15.865525393145708, 50.0, 84.13447460685429)


def log_ladder_noise(device, n_rungs: int, t_read: float = 1.0, samples: int = LADDER_SAMPLES, seed: int = 0) -> float:
    """Noise of a stored log-level sigma array, in rungs of its ladder, where the trained sigmas are: the median
    over the top four rungs (sigma_max down to sigma_max / 16) of a rung's 1-sigma read spread / (the gap between
    its median read and the rung below's), on the device's geometric ladder of `n_rungs` conductances. The reads
    are sampled with the device's own program and read (`samples` cells per rung, fixed streams), so all that
    happens between programming and reading counts: programming noise, the cell-to-cell spread of drift exponents
    (which the analytic read std at the median drift leaves out), d2d variation and read noise. The spread is half
    the 15.9-84.1 percentile range (the std of a Gaussian), so that the few stuck cells of a card's faults, a
    failure of their own, do not set it. Each rung is a factor 2 in sigma, so a value of x means reads of those
    sigmas are off by about a factor 2^x: above 1 the stored sigma no longer says what was trained."""
    g = np.asarray(device.levels(int(n_rungs), "log"), np.float32)
    top = g[-min(5, g.size):]
    _, read = _program_read(device, top, t_read, samples, seed)
    lo, mid, hi = np.percentile(read.astype(np.float64), _ONE_SIGMA_PERCENTILES, axis=1)
    sd = (hi - lo) / 2.0
    gap = np.diff(mid)
    if gap.size == 0:
        return 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        rungs = np.where(gap > 0, sd[1:] / np.where(gap > 0, gap, 1.0), np.inf)
    return float(np.median(rungs))


def _program_read(device, levels: np.ndarray, t_read: float, samples: int, seed: int):
    """(programmed, read) [len(levels), samples] uS: `samples` cells programmed at each level and read t_read s
    later, on the fixed streams of `seed` (each cell its own programming, drift-exponent and read normals)."""
    targets = np.repeat(np.asarray(levels, np.float32)[:, None], samples, axis=1)
    cells = rng.derive_key(seed, "levels", "cells")
    prog = device.program(targets, rng.derive_key(seed, "levels", "program"), cells)
    return prog, device.read(prog, t_read, rng.derive_key(seed, "levels", "read"), cells)


def max_distinguishable_levels(device, t_read: float = 1.0, grid: int = 20001) -> float:
    """How many levels fit in [g_min, g_max] at 1 sigma, from the device's analytic mean and
    sigma = sqrt(program_sigma^2 + read_sigma^2) at `t_read` (greedy packing on a fine grid from g_min;
    ignores d2d variation and faults). The mean and read std are at the median drift: the cell-to-cell spread
    of drift exponents is not in sigma, so after long read times the count is approximate (PCM at 1 day: the
    sampled read std of the top level is ~15% above this sigma; `level_overlap` samples the real spread).
    A noiseless device gives inf."""
    g = np.linspace(device.g_min, device.g_max, grid)
    mean, sig = _mean_sigma(device, g, t_read)
    if not np.any(sig > 0):
        return float("inf")
    count, a = 1, 0
    while True:
        ok = np.nonzero(mean[a + 1:] - mean[a] > sig[a] + sig[a + 1:])[0]
        if ok.size == 0:
            return count
        a = a + 1 + int(ok[0])
        count += 1


def level_overlap(device, n: int, spacing: str = "linear", t_read: float = 1.0, samples: int = 2000,
                  seed: int = 0) -> dict:
    """Programmed and read samples of each of `n` levels ([n, samples] uS), their means and stds, and
    the number of levels distinguishable at 1 sigma (programmed, and read at `t_read` s)."""
    lv = np.asarray(device.levels(n, spacing), np.float32)
    prog, read = _program_read(device, lv, t_read, samples, seed)
    pm, ps = prog.mean(axis=1, dtype=np.float64), prog.std(axis=1, dtype=np.float64)
    rm, rs = read.mean(axis=1, dtype=np.float64), read.std(axis=1, dtype=np.float64)
    return {"levels": lv, "programmed": prog, "read": read, "prog_mean": pm, "prog_std": ps,
            "read_mean": rm, "read_std": rs, "distinguishable_programmed": distinguishable_levels(pm, ps),
            "distinguishable_read": distinguishable_levels(rm, rs), "t_read": float(t_read)}


def intrinsic_sigma(device, g, t_read: float = 1.0, source: str = "program") -> np.ndarray:
    """The std (uS) a device gives at conductance `g` when used as a Bayesian machine's random source:
    "program" (re-programming, cycle-to-cycle), "read" (read noise at `t_read`) or "both" (a fresh
    program then a read: the two in quadrature)."""
    g = np.asarray(g, np.float32)
    if source not in ("program", "read", "both"):
        raise ValueError(f"source must be 'program', 'read' or 'both', got {source!r}")
    ps = np.asarray(device.program_sigma(g), np.float64) if source != "read" else 0.0
    rs = np.asarray(device.read_sigma(g, t_read), np.float64) if source != "program" else 0.0
    return np.sqrt(ps ** 2 + rs ** 2 + np.zeros(g.shape)).astype(np.float32)


def realisable_sigma(device, t_read: float = 1.0, source: str = "program", grid: int = 1001) -> dict:
    """Which sigma values (uS) the device's own stochasticity can realise over [g_min, g_max]:
    {"g": grid, "sigma": sigma(g), "min": ..., "max": ..., "relative_min"/"relative_max": sigma/G}.
    A trained sigma outside [min, max] (in conductance units) cannot come from the device alone."""
    g = np.linspace(device.g_min, device.g_max, grid).astype(np.float32)
    s = intrinsic_sigma(device, g, t_read, source).astype(np.float64)
    pos = g > 0
    rel = s[pos] / g[pos]
    return {"g": g, "sigma": s, "min": float(s.min()), "max": float(s.max()),
            "relative_min": float(rel.min()) if rel.size else 0.0,
            "relative_max": float(rel.max()) if rel.size else 0.0}
