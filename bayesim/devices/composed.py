"""The composed device: a conductance range plus programming noise, read noise, drift, stuck-at faults
and device-to-device variation, each chosen independently (programming from a measured table and drift
from the PCM law, say). Built-in models are preset compositions of these components.

Conventions (uS, s):
- programming: held = clip(target*(1 + d2d.relative*z1) + d2d.absolute_uS*z2 + sigma_p(target)*z + offset(target))
  with z1, z2 fixed per cell (cell_key) and z fresh per event (key); a stuck-at cell holds g_min or g_max
  whatever the target. sigma_p is the polynomial sum_k c_k (target/g_max)^k (the aihwkit form) or the
  table's interpolated std; a samples table draws from the empirical law instead of a Gaussian.
- reading at t_read s after programming (aihwkit's t_inference): drift G = G_prog ((t_read + t0)/t0)^-nu with
  nu per cell (power law: max(nu + nu_std*z, 0); pcm: |mu(G) + sd(G) z| of aihwkit, evaluated at the
  held G because read() does not see the target), then read noise: polynomial sigma(G_prog), or PCM 1/f
  |G_drift| q_s(G_prog) sqrt(log((t_read + t0 + t_pulse) / (2 t_pulse))).
- clipping: clip "range" keeps programmed and read values in [g_min, g_max]; "nonnegative" only >= 0
  (aihwkit's PCM/ReRAM convention). `clip_range` exposes it.
"""
from __future__ import annotations

import numpy as np

from bayesim import rng
from bayesim.devices import kernels as K
from bayesim.devices.card import DeviceCard, MeasuredTable, build_card, load_table, poly_sigma, resolve_file
from bayesim.errors import BayesimError, ConfigError

# Preset compositions of the built-in models (numbers and their sources: the cards in devices/).
PRESETS: dict[str, dict] = {
    "ideal": {
        "range": {"g_min_uS": 0.0, "g_max_uS": 25.0, "log_min_uS": 0.25},
    },
    "gaussian": {  # generic multi-level cell; every number an assumption (see devices/gaussian_mlc.yaml)
        "range": {"g_min_uS": 1.0, "g_max_uS": 40.0, "n_levels": 16},
        "programming": {"model": "polynomial", "coeffs_uS": [0.2, 0.8]},
        "read": {"model": "polynomial", "coeffs_uS": [0.05, 0.2]},
        "drift": {"model": "power_law", "nu": 0.01, "nu_std": 0.005, "t0_s": 1.0},
        "faults": {"stuck_at_gmin": 0.001, "stuck_at_gmax": 0.001},
        "d2d": {"relative": 0.02, "absolute_uS": 0.0},
    },
    "pcm": {  # aihwkit PCMLikeNoiseModel (Nandakumar et al. 2018/2019; Joshi et al. 2020)
        "range": {"g_min_uS": 0.0, "g_max_uS": 25.0, "log_min_uS": 0.25, "clip": "nonnegative"},
        "programming": {"model": "polynomial", "coeffs_uS": [0.26348, 1.9650, -1.1731]},
        "read": {"model": "pcm", "q_coeff": 0.0088, "q_exponent": 0.65, "q_max": 0.2, "t_pulse_s": 250e-9,
                 "t0_s": 20.0},
        "drift": {"model": "pcm", "t0_s": 20.0},
    },
    "rram": {  # aihwkit ReRamWan2022NoiseModel (Wan et al., Nature 2022), 1 s polynomial
        "range": {"g_min_uS": 1.0, "g_max_uS": 40.0, "n_levels": 16, "clip": "nonnegative"},
        "programming": {"model": "polynomial", "coeffs_uS": [0.348, 16.030, -43.853, 45.393, -16.815]},
        "read": {"model": "polynomial", "coeffs_uS": [0.4]},
    },
    "table": {
        "programming": {"model": "table"},
    },
}

_PROG = {"none": K.PROG_NONE, "polynomial": K.PROG_POLY}
_READ = {"none": K.READ_NONE, "polynomial": K.READ_POLY, "pcm": K.READ_PCM}
_DRIFT = {"none": K.DRIFT_NONE, "power_law": K.DRIFT_POWER, "pcm": K.DRIFT_PCM}
_EMPTY_F = np.zeros(1, np.float64)
_EMPTY_I = np.zeros(1, np.int64)


def _as_cells(a, what: str) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.float32)
    if a.size and not np.isfinite(a).all():
        raise BayesimError(f"{what} contains NaN or Inf")
    return a


class ComposedDevice:
    """A `DeviceModel` made of the components of a validated `DeviceCard` (numba kernels)."""

    def __init__(self, card: DeviceCard):
        self.card = card
        self.name = card.name
        src = card.path or "<dict>"
        self.table: MeasuredTable | None = None
        p = card.programming
        if p.model == "table":
            self.table = load_table(resolve_file(p.file, src), src, "programming.file")
        r = card.range
        self.g_min = float(r.g_min_uS if r.g_min_uS is not None else self.table.levels[0])
        self.g_max = float(r.g_max_uS if r.g_max_uS is not None else self.table.levels[-1])
        self.log_min = float(r.log_min_uS if r.log_min_uS is not None else self.g_min)
        self.n_levels = r.n_levels
        self.clip_range = (self.g_min, self.g_max) if r.clip == "range" else (0.0, float(np.inf))
        if p.model == "table":
            self._prog_kind = K.PROG_SAMPLES if self.table.has_samples else K.PROG_TABLE
        else:
            self._prog_kind = _PROG[p.model]
        self._prog_coeffs = np.asarray(p.coeffs_uS or [0.0], np.float64)
        self._read_coeffs = np.asarray(card.read.coeffs_uS or [0.0], np.float64)
        t = self.table
        if t is not None:
            self._tab = (t.levels, t.offset, t.std,
                         t.dev_sorted if t.has_samples else _EMPTY_F,
                         t.start if t.has_samples else _EMPTY_I, t.count if t.has_samples else _EMPTY_I)
        else:
            self._tab = (np.array([0.0, 1.0]), np.zeros(2), np.zeros(2), _EMPTY_F, _EMPTY_I, _EMPTY_I)
        unbiased = self._prog_kind in (K.PROG_NONE, K.PROG_POLY) or (
            self._prog_kind == K.PROG_TABLE and not np.any(t.offset))
        f, d = card.faults, card.d2d
        #: True when program() is exactly clip(target + program_sigma(target) z) and read() exactly
        #: clip(held + read_sigma(held, t) z): Gaussian, unbiased, no faults, no d2d, no drift. The
        #: crossbar may then fuse both into its own kernels.
        self.gaussian_programming = bool(unbiased and f.stuck_at_gmin == 0 and f.stuck_at_gmax == 0
                                         and d.relative == 0 and d.absolute_uS == 0
                                         and card.drift.model == "none")
        #: True when program() is exactly clip(target + program_sigma(target) z) (drift and read may be
        #: anything `read_cell_law` describes): the crossbar then programs cells in its own kernels.
        self.gaussian_program = bool(unbiased and f.stuck_at_gmin == 0 and f.stuck_at_gmax == 0
                                     and d.relative == 0 and d.absolute_uS == 0)

    # ------------------------------------------------------------------ levels
    def levels(self, n: int, spacing: str = "linear") -> np.ndarray:
        """`n` target conductances (uS, ascending, float32): linear, log (from log_min_uS) or measured."""
        if not isinstance(n, (int, np.integer)) or n < 2:
            raise BayesimError(f"device {self.name}: needs at least 2 levels, got {n!r}")
        if spacing == "linear":
            return np.linspace(self.g_min, self.g_max, int(n)).astype(np.float32)
        if spacing == "log":
            if not self.log_min > 0:
                raise ConfigError(f"log spacing (the sigma ladder of VPQ/JQ) needs a lowest level > 0, and g_min_uS "
                                  f"is {self.g_min}: set range.log_min_uS", self.card.path or f"device {self.name}",
                                  "range.log_min_uS")
            return np.geomspace(self.log_min, self.g_max, int(n)).astype(np.float32)
        if spacing == "measured":
            lv = self.measured_levels()
            if lv is None:
                raise BayesimError(f"device {self.name}: has no measured levels (range.levels_uS or a table)")
            if lv.size != n:
                raise BayesimError(f"device {self.name}: has {lv.size} measured levels, {n} requested")
            return lv
        raise BayesimError(f"spacing must be 'linear', 'log' or 'measured', got {spacing!r}")

    def measured_levels(self) -> np.ndarray | None:
        """The device's own characterised levels (uS), or None."""
        if self.card.range.levels_uS is not None:
            return np.asarray(self.card.range.levels_uS, np.float32)
        if self.table is not None:
            return self.table.levels.astype(np.float32)
        return None

    # ------------------------------------------------------------------ fast contract (fused crossbar kernels)
    def read_cell_law(self, t_read: float) -> tuple:
        """Parameters of `bayesim.devices.kernels.read_cell` for reads at t_read (s): a numba kernel that
        programs a cell itself reads it as read(): read_cell(g0, z_nu, z, *law), z_nu the normal of the cell's
        drift exponent (stream derive_key(cell_key, "nu") at the cell index, read's cell_key naming the cells as
        programmed: see bayesim.devices.base), z fresh per read."""
        dr, rd = self.card.drift, self.card.read
        log_ratio, noise_t = K.read_law(float(t_read), _DRIFT[dr.model], dr.nu, dr.nu_std, dr.t0_s,
                                        _READ[rd.model], rd.t_pulse_s, rd.t0_s)
        return (float(log_ratio), float(noise_t), _DRIFT[dr.model], float(dr.nu), float(dr.nu_std),
                _READ[rd.model], self._read_coeffs, float(rd.q_coeff), float(rd.q_exponent), float(rd.q_max),
                1.0 / self.g_max, float(self.clip_range[0]), float(self.clip_range[1]))

    def read_moments(self, held: np.ndarray, t_read: float, cell_key: int) -> tuple[np.ndarray, np.ndarray]:
        """(mean, sd) per cell (uS, float32): read(held, t_read, key, cell_key) is exactly
        clip(mean + sd z, clip_range) with z a fresh standard normal (drift is fixed per cell)."""
        h = _as_cells(held, f"device {self.name}: held conductances")
        law = self.read_cell_law(t_read)
        mean = np.empty_like(h)
        sd = np.empty_like(h)
        K.read_moments_kernel(h.reshape(-1), mean.reshape(-1), sd.reshape(-1),
                              np.uint64(rng.derive_key(cell_key, "nu")), rng.NORMAL_TABLE, *law[:11])
        return mean, sd

    # ------------------------------------------------------------------ events
    def program(self, targets: np.ndarray, key: int, cell_key: int) -> np.ndarray:
        """Held conductance (uS, float32, shape of targets) after programming `targets`."""
        t = _as_cells(targets, f"device {self.name}: program targets")
        out = np.empty_like(t)
        f, d = self.card.faults, self.card.d2d
        tab = self._tab
        K.program_kernel(t.reshape(-1), out.reshape(-1), np.uint64(key),
                         np.uint64(rng.derive_key(cell_key, "fault")), np.uint64(rng.derive_key(cell_key, "gain")),
                         np.uint64(rng.derive_key(cell_key, "offset")), rng.NORMAL_TABLE, self._prog_kind,
                         self._prog_coeffs, self.g_max, f.stuck_at_gmin, f.stuck_at_gmax, d.relative,
                         d.absolute_uS, self.clip_range[0], self.clip_range[1], self.g_min, *tab)
        return out

    def read(self, held: np.ndarray, t_read: float, key: int, cell_key: int) -> np.ndarray:
        """Conductance (uS, float32) read `t_read` s after programming: drift then read noise."""
        h = _as_cells(held, f"device {self.name}: held conductances")
        t_read = float(t_read)
        if not np.isfinite(t_read) or t_read < 0:
            raise BayesimError(f"device {self.name}: t_read must be a finite number of seconds >= 0, got {t_read}")
        out = np.empty_like(h)
        dr, rd = self.card.drift, self.card.read
        K.read_kernel(h.reshape(-1), out.reshape(-1), t_read, np.uint64(key),
                      np.uint64(rng.derive_key(cell_key, "nu")), rng.NORMAL_TABLE, _DRIFT[dr.model], dr.nu,
                      dr.nu_std, dr.t0_s, _READ[rd.model], self._read_coeffs, rd.q_coeff, rd.q_exponent,
                      rd.q_max, rd.t_pulse_s, rd.t0_s, self.g_max, self.clip_range[0], self.clip_range[1])
        return out

    # ------------------------------------------------------------------ summaries
    def program_sigma(self, g: np.ndarray) -> np.ndarray:
        """Cycle-to-cycle programming std (uS, float32) at target `g` (uS); excludes d2d and faults."""
        g = np.asarray(g, np.float64)
        if self._prog_kind == K.PROG_POLY:
            s = poly_sigma(self._prog_coeffs, g / self.g_max)
        elif self._prog_kind in (K.PROG_TABLE, K.PROG_SAMPLES):
            s = np.interp(g, self.table.levels, self.table.std)
        else:
            s = np.zeros_like(g)
        return s.astype(np.float32)

    def program_offset(self, g: np.ndarray) -> np.ndarray:
        """Mean programming error (uS) at target `g`: non-zero only for measured tables."""
        g = np.asarray(g, np.float64)
        if self.table is None:
            return np.zeros_like(g, dtype=np.float32)
        return np.interp(g, self.table.levels, self.table.offset).astype(np.float32)

    def drift_factor(self, g: np.ndarray, t_read: float) -> np.ndarray:
        """Median G(t_read)/G_prog at held `g` (the factor of the median drift exponent)."""
        g = np.asarray(g, np.float64)
        dr = self.card.drift
        lr = np.log((float(t_read) + dr.t0_s) / dr.t0_s)
        if dr.model == "power_law":
            nu = np.full_like(g, dr.nu)
        elif dr.model == "pcm":
            mu, sd = _pcm_nu(g / self.g_max)
            nu = sd * _foldnorm_median_unit(np.abs(mu / sd))
        else:
            nu = np.zeros_like(g)
        return np.exp(-nu * lr).astype(np.float32)

    def read_sigma(self, g: np.ndarray, t_read: float) -> np.ndarray:
        """Read-noise std (uS, float32) at held `g`, `t_read` s after programming (PCM: at the median
        drifted conductance)."""
        g = np.asarray(g, np.float64)
        rd = self.card.read
        if rd.model == "polynomial":
            s = poly_sigma(self._read_coeffs, g / self.g_max)
        elif rd.model == "pcm":
            gr = np.abs(g) / self.g_max
            q = np.minimum(rd.q_coeff / np.maximum(gr ** rd.q_exponent, 1e-3), rd.q_max)
            x = np.log((float(t_read) + rd.t0_s + rd.t_pulse_s) / (2 * rd.t_pulse_s))
            s = np.abs(g) * self.drift_factor(g, t_read) * q * np.sqrt(max(x, 0.0))
        else:
            s = np.zeros_like(g)
        return s.astype(np.float32)

    def __repr__(self) -> str:
        return f"ComposedDevice({self.name!r}, model={self.card.model!r}, G=[{self.g_min}, {self.g_max}] uS)"


_FOLD_C = np.linspace(0.0, 40.0, 4001)
_FOLD_MEDIAN = None


def _foldnorm_median_unit(c: np.ndarray) -> np.ndarray:
    """Median of |X|, X ~ N(c, 1), by interpolation in a table (scipy's per-element root finding is
    far too slow for whole tiles). Linear interpolation on a 0.01 grid: error < 2e-5 (in units of
    the std); beyond c = 40 the median is c."""
    global _FOLD_MEDIAN
    if _FOLD_MEDIAN is None:
        from scipy.stats import foldnorm

        _FOLD_MEDIAN = foldnorm.median(_FOLD_C)
    c = np.asarray(c, np.float64)
    return np.where(c >= _FOLD_C[-1], c, np.interp(c, _FOLD_C, _FOLD_MEDIAN))


def _pcm_nu(g_rel):
    lg = np.log(np.maximum(np.abs(g_rel), 1e-7))
    mu = np.clip(-0.0155 * lg + 0.0244, 0.049, 0.1)
    sd = np.clip(-0.0125 * lg - 0.0059, 0.008, 0.045)
    return mu, sd


def preset_device(model: str, name: str | None = None) -> ComposedDevice:
    """A built-in model with its preset parameters."""
    if model == "table":
        raise ConfigError("the table model needs a card naming its CSV (programming: {model: table, file: x.csv})",
                          key="model")
    return ComposedDevice(build_card({"name": name or model, "model": model}, source=f"<built-in {model}>"))
