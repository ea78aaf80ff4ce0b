"""One Bayesian layer on crossbar tiles: program once, then one forward pass per Monte-Carlo sample.

Strategies (the `quant.strategy` of the exported op):
- fp: mu, sigma digital FP32; w = mu + sigma*eps drawn digitally; MVM through DAC/ADC (the software
  reference on the same code path).
- vpq: mu stored as a differential pair on uniform levels (b_mu bits), sigma in a log-level array
  (b_sigma bits); `program()` programs them once; each sample reads them (drift + read noise at
  `t_read`) and draws w = mu_read + sigma_read*eps digitally.
- spq: w = mu + sigma*eps at full precision, quantized to b_w levels (w_step grid) and programmed for
  each sample (fresh programming noise per program event, read at `t_compute`).
- jq: both (sampled from the read VPQ arrays, then quantized and programmed).
sampler="device": the weights are the mu targets re-programmed for every sample, the device's
programming spread (and read noise) being the random source; `sigma_shortfall` reports how far that
spread falls short of the trained sigma.

The eps of sample s, layer l is the software interface stream derive_key(seed, "eps_w", s, l) at the
flat weight index, so an ideal device with ideal periphery reproduces x @ (mu + sigma*eps).T + b.

Device paths: a device with the `gaussian_programming` contract (Gaussian program and read) is
programmed and read inside the fused weight kernel from per-level std tables; a device with Gaussian
programming and a per-cell read law (`gaussian_program`, `read_cell_law`, `read_moments`: PCM drift and
1/f noise) is programmed and read there too, with the device's own per-cell law
(bayesim.devices.kernels.read_cell) and the same drift-exponent streams as the generic path (drawn at
each programming: see bayesim.devices.base), and its stored VPQ arrays are read as drifted mean (fixed
per cell at t_read, computed once at programming) plus fresh read noise. With differential pairs and no
IR drop such a device takes the pair-law path: the two cells of a weight are independent of each other
and of every other cell, so the weight (G+ - G-)/span is drawn in one lookup from the tabulated law of
its level pair (bayesim.crossbar.pairlaw), and each call of that kernel builds up to four samples (the
stored arrays are read from memory once for all of them). Other devices take the generic per-tile
device.program / device.read path.

Products: layers with at most FUSED_MVM_MAX_OUT outputs run products + ADC + accumulation in one
numba kernel over blocks of input rows (periphery.mvm_adc: a single-threaded sgemm per block and row
tile); wider layers the same over blocks of output columns (periphery.gemm_adc); the lumped path one
GEMM per row tile. Conv
inputs go through one fused im2col + DAC kernel (`prepare`, reusable across samples).

Global drift compensation (`drift_compensation="global"`): one digital gain per tile and stored array,
measured at programming (an all-ones input at t = 0 and at t_read), multiplies the decoded mu and the
sigma cells' reads (`_drift_gains`); the per-sample cells are not compensated.

Lumped fast path (`lumped=True`): for fp/vpq with the digital sampler and no IR drop, the noise of a
tile output is exactly Gaussian with variance sum_k x_k^2 sigma_jk^2, drawn once per output (the local
reparameterisation). Elsewhere (quantized weights, device sampler, IR drop) it falls back to per-cell
draws and says why in `lumped_reason`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from bayesim import rng
from bayesim.crossbar import irdrop, kernels, pairlaw, periphery
from bayesim.crossbar.card import EXACT_IR_MAX_CELLS, CrossbarCard
from bayesim.errors import BayesimError

Z_MAX = float(np.abs(rng.NORMAL_TABLE).max())  # largest |eps| the 16-bit table can draw (4.33)
STRATEGIES = ("fp", "vpq", "spq", "jq")
DRIFT_COMPENSATIONS = ("none", "global")
#: Layers with at most this many outputs run products + ADC in one fused kernel (periphery.mvm_adc):
#: a BLAS call with so few columns is memory-bound on its [tiles, N, out] output. Wider layers use BLAS.
FUSED_MVM_MAX_OUT = 128


@dataclass
class CrossbarStats:
    """Event counters for saturation reporting and the energy estimate."""
    dac_conversions: int = 0
    dac_clipped: int = 0
    adc_conversions: int = 0
    adc_saturated: int = 0
    cell_reads: int = 0
    program_events: int = 0
    ir_drop_max: float = 0.0  # the largest fraction of a cell's ideal current lost to IR drop

    def add(self, other: "CrossbarStats") -> None:
        for k, v in asdict(other).items():
            setattr(self, k, max(self.ir_drop_max, v) if k == "ir_drop_max" else getattr(self, k) + v)

    def energy_J(self, card: CrossbarCard) -> dict:
        """Energy by component and total (J) from the card's per-event energies."""
        e = card.energy
        parts = {"dac": self.dac_conversions * e.dac_J, "adc": self.adc_conversions * e.adc_J,
                 "cell_read": self.cell_reads * e.cell_read_J, "program": self.program_events * e.program_J}
        parts["total"] = sum(parts.values())
        return parts

    def to_dict(self) -> dict:
        return asdict(self)


def im2col(x: np.ndarray, kh: int, kw: int, stride: int, padding: int) -> tuple[np.ndarray, int, int]:
    """[N, C, H, W] -> patches [N*Ho*Wo, C*kh*kw] (C-order (c, i, j), matching torch weights)."""
    n, c, h, w = x.shape
    if padding:
        x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    ho = (h + 2 * padding - kh) // stride + 1
    wo = (w + 2 * padding - kw) // stride + 1
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
    # win: [N, C, Ho, Wo, kh, kw] -> [N, Ho, Wo, C, kh, kw]
    cols = np.ascontiguousarray(win[:, :, :ho, :wo].transpose(0, 2, 3, 1, 4, 5), dtype=np.float32)
    return cols.reshape(n * ho * wo, c * kh * kw), ho, wo


def _pair(v, name):
    if isinstance(v, (tuple, list)):
        if len(set(v)) != 1:
            raise BayesimError(f"{name} must be square for the crossbar im2col, got {v}")
        return int(v[0])
    return int(v)


def _expected_clipped(mean, sd, lo: float, hi: float) -> np.ndarray:
    """E[clip(mean + sd z, lo, hi)] for z ~ N(0, 1), elementwise (float64): the average read of a cell whose
    read is Gaussian around `mean` and clipped to the device's range, as the crossbar reads it."""
    from scipy.special import ndtr

    m = np.asarray(mean, np.float64)
    s = np.asarray(sd, np.float64)
    safe = np.where(s > 0, s, 1.0)
    a, b = (lo - m) / safe, (hi - m) / safe
    pdf = lambda x: np.exp(-0.5 * x * x) / np.sqrt(2 * np.pi)  # noqa: E731
    below = lo * ndtr(a) if np.isfinite(lo) else 0.0
    above = hi * ndtr(-b) if np.isfinite(hi) else 0.0
    e = below + above + m * (ndtr(b) - ndtr(a)) + s * (pdf(a) - pdf(b))
    return np.where(s > 0, e, np.clip(m, lo, hi))


#: Monte-Carlo samples whose weights the pair-law kernel builds in one pass (the sample asked for and the
#: next ones, up to the last sample planned): the stored arrays, read from memory once, serve them all;
#: this many weight buffers per layer.
PAIR_SAMPLES_PER_PASS = 4


#: Longest read or compute time after programming, s (as hardware.read_time_s in experiment configs: ~300 years).
MAX_TIME_S = 1e10


def check_time(what: str, t) -> None:
    """A read or compute time: a number of seconds in [0, MAX_TIME_S]; a NaN, an infinite or a negative time would
    reach the drift law's log and power. `what` is the argument's name as the caller wrote it (t_read,
    t_read_s), so the message names what the user passed."""
    number = isinstance(t, (int, float, np.integer, np.floating)) and not isinstance(t, (bool, np.bool_))
    if not (number and 0.0 <= float(t) <= MAX_TIME_S):
        raise BayesimError(f"{what} must be a number of seconds in [0, {MAX_TIME_S:g}], got {t!r}")


class AnalogLayer:
    """A BayesLinearOp / BayesConvOp mapped onto crossbar tiles of `crossbar` with cells of `device`."""

    def __init__(self, op, device, crossbar: CrossbarCard, layer_index: int, seed: int,
                 sampler: str = "digital", t_read: float = 1.0, t_compute: float = 1.0,
                 lumped: bool = False, drift_compensation: str = "none"):
        if sampler not in ("digital", "device"):
            raise BayesimError(f"sampler must be 'digital' or 'device', got {sampler!r}")
        if drift_compensation not in DRIFT_COMPENSATIONS:
            raise BayesimError(f"drift_compensation must be one of {', '.join(map(repr, DRIFT_COMPENSATIONS))}, "
                               f"got {drift_compensation!r}")
        self.drift_compensation = drift_compensation
        #: digital gains of global drift compensation per stored array and tile (None: none; see _drift_gains)
        self.drift_gains: dict | None = None
        q = getattr(op, "quant", None)
        self.strategy = getattr(q, "strategy", "fp") if q is not None else "fp"
        if self.strategy not in STRATEGIES:
            raise BayesimError(f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        self.quant, self.device, self.card = q, device, crossbar
        self.layer, self.seed, self.sampler = int(layer_index), int(seed), sampler
        check_time("t_read", t_read)
        check_time("t_compute", t_compute)
        self.t_read, self.t_compute = float(t_read), float(t_compute)
        mu = np.asarray(op.mu_w, dtype=np.float32)
        sg = np.asarray(op.sigma_w, dtype=np.float32)
        self.is_conv = mu.ndim == 4
        if self.is_conv:
            self.kh, self.kw = int(mu.shape[2]), int(mu.shape[3])
            self.stride = _pair(getattr(op, "stride", 1), "stride")
            self.padding = _pair(getattr(op, "padding", 0), "padding")
        elif mu.ndim != 2:
            raise BayesimError(f"layer {layer_index}: weights must be [out, in] or [out, in_c, kh, kw], "
                               f"got shape {mu.shape}")
        if sg.shape != mu.shape:
            raise BayesimError(f"layer {layer_index}: sigma_w shape {sg.shape} != mu_w shape {mu.shape}")
        if mu.size == 0:
            raise BayesimError(f"layer {layer_index}: empty weight tensor")
        if not (np.isfinite(mu).all() and np.isfinite(sg).all()):
            raise BayesimError(f"layer {layer_index}: mu_w/sigma_w contain NaN or Inf")
        if (sg < 0).any():
            raise BayesimError(f"layer {layer_index}: sigma_w has negative values")
        self.out_features = mu.shape[0]
        self.mu = np.ascontiguousarray(mu.reshape(self.out_features, -1))
        self.sigma = np.ascontiguousarray(sg.reshape(self.out_features, -1))
        self.in_features = self.mu.shape[1]
        self.mu_b = None if getattr(op, "mu_b", None) is None else np.asarray(op.mu_b, np.float32)
        sb = getattr(op, "sigma_b", None)
        self.sigma_b = None if sb is None else np.asarray(sb, np.float32)

        # tiles and scale groups
        t = crossbar.tile
        self.row_starts = np.append(np.arange(0, self.in_features, t.rows), self.in_features).astype(np.int64)
        self.n_rt = len(self.row_starts) - 1
        self.n_ct = -(-self.out_features // t.cols)
        j = np.arange(self.out_features)
        if crossbar.mapping.scale == "per_tile":
            self.grp = (np.arange(self.n_rt)[:, None] * self.n_ct + j[None, :] // t.cols).astype(np.int64)
        else:
            self.grp = (np.arange(self.n_rt)[:, None] * self.out_features + j[None, :]).astype(np.int64)
        self.n_groups = int(self.grp.max()) + 1
        self.offset = crossbar.mapping.kind == "offset"
        self.g_min, self.g_max = float(device.g_min), float(device.g_max)
        self.span = self.g_max - self.g_min
        if not self.span > 0:
            raise BayesimError(f"device {getattr(device, 'name', '?')}: g_max must exceed g_min")
        self.quantized = self.sampler == "digital" and self.strategy in ("spq", "jq")
        self.stored = self.sampler == "digital" and self.strategy in ("vpq", "jq")
        self.ir = crossbar.ir_drop.model != "none" and crossbar.ir_drop.r_wire_ohm > 0
        self.table_noise = bool(getattr(device, "gaussian_programming", False))
        # devices with Gaussian programming and a per-cell read law (drift + read noise, e.g. PCM): the fused
        # kernel programs and reads the cells itself (the `read_cell_law` contract of ComposedDevice)
        self.cell_law = (not self.table_noise and bool(getattr(device, "gaussian_program", False))
                         and hasattr(device, "read_cell_law"))
        self.fused_cells = self.table_noise or self.cell_law
        # pair-law path (cell-law devices, differential pairs, no IR drop): each sampled weight is one draw from
        # the tabulated law of its two cells (bayesim.crossbar.pairlaw); _setup_mapping may still turn it off
        self.pair_law = self.quantized and self.cell_law and not self.offset and not self.ir
        # lumped path
        why = None
        if sampler != "digital":
            why = "device sampler"
        elif self.strategy not in ("fp", "vpq"):
            why = "sampled weights are quantized"
        elif self.ir:
            why = "IR drop couples the cells"
        self.lumped = bool(lumped) and why is None
        self.lumped_reason = why if lumped else None

        self.stats = CrossbarStats()
        self.sigma_shortfall: dict | None = None
        self.adc_range: np.ndarray | None = None
        if crossbar.adc.bits is not None and crossbar.adc.range == "fixed":
            self.adc_range = np.full((self.n_rt, self.out_features), crossbar.adc.full_scale, np.float32)
        self._programmed = False
        self.stored_program_events = 0  # cells of the stored arrays programmed once (`program`)
        self._built = None
        self._ahead = {}  # sample -> row of self._pass: the samples the pair-law kernel built ahead
        self._last_sample = None  # plan_samples
        self._no_keys = np.zeros((1, 1, 1), np.uint64)
        self._cell_keys = {}  # _cells_key: name -> key grid
        self._key_grids = {}  # _kept_grid
        self._sample_cache = None
        self._fused_mvm = self.out_features <= FUSED_MVM_MAX_OUT and not self.lumped
        self._setup_mapping()

    # ------------------------------------------------------------------ mapping set-up
    def _group_max(self, v: np.ndarray) -> np.ndarray:
        """Max of v [out, in] over each scale group -> [n_groups]."""
        out = np.zeros(self.n_groups, np.float64)
        for r in range(self.n_rt):
            blk = v[:, self.row_starts[r]:self.row_starts[r + 1]].max(axis=1)  # per output
            np.maximum.at(out, self.grp[r], blk)
        return out

    def _setup_mapping(self):
        q = self.quant
        m = 0
        if self.sampler == "device":
            wmax = self._group_max(np.abs(self.mu))
        else:
            wmax = self._group_max(np.abs(self.mu) + np.float32(Z_MAX) * self.sigma)
        if self.quantized:
            if q.w_bits is None or not q.w_step > 0:
                raise BayesimError(f"layer {self.layer}: strategy {self.strategy} needs w_bits and w_step > 0")
            m = max((1 << (int(q.w_bits) - 1)) - 1, 1)
            kmax = np.clip(np.rint(wmax / float(q.w_step)), 1, m).astype(np.int64)
            self.kmax = kmax
            if self.pair_law and not pairlaw.pays_off(self.mu.size, kmax):
                self.pair_law = False  # a small layer or many grids: the tables would cost more than they save
            self.w_scale_grp = (kmax * np.float64(q.w_step)).astype(np.float32)
        else:
            self.kmax = np.ones(self.n_groups, np.int64)
            self.w_scale_grp = np.where(wmax > 0, wmax, 1.0).astype(np.float32)
        self.inv_wscale = (1.0 / self.w_scale_grp.astype(np.float64)).astype(np.float32)
        self.w_scale = self.w_scale_grp[self.grp]  # [n_rt, out]
        # level tables [groups, 2m+1] (uS) with programming / read std
        idx = np.arange(-m, m + 1)
        km = self.kmax[:, None].astype(np.float64)
        if self.offset:
            lv = (self.g_min + self.g_max) / 2 + idx[None, :] * (self.span / 2) / km
        else:
            lv = self.g_min + np.abs(idx)[None, :] * self.span / km
        self.lvl = np.clip(lv, self.g_min, self.g_max).astype(np.float32)
        zero = np.zeros_like(self.lvl)
        self.ref_sd = (0.0, 0.0)
        if self.quantized and self.fused_cells:
            self.sd_prog = np.asarray(self.device.program_sigma(self.lvl), np.float32).reshape(self.lvl.shape)
            ref = np.array([(self.g_min + self.g_max) / 2], np.float32)
            if self.table_noise:
                self.sd_read = np.asarray(self.device.read_sigma(self.lvl, self.t_compute),
                                          np.float32).reshape(self.lvl.shape)
                self.ref_sd = (float(self.device.program_sigma(ref)[0]),
                               float(self.device.read_sigma(ref, self.t_compute)[0]))
            else:  # read by the device's per-cell law in the kernel
                self.sd_read = zero.copy()
                self.ref_sd = (float(self.device.program_sigma(ref)[0]), 0.0)
        else:
            self.sd_prog, self.sd_read = zero, zero.copy()
        self.g_clip = tuple(getattr(self.device, "clip_range", (self.g_min, self.g_max)))
        if self.sampler == "device":
            self._shortfall()

    def _shortfall(self):
        """How far the device's own spread falls short of the trained sigma (device sampler)."""
        wsc = np.empty_like(self.mu)
        for r in range(self.n_rt):
            wsc[:, self.row_starts[r]:self.row_starts[r + 1]] = self.w_scale[r][:, None]
        wn = self.mu / wsc
        if self.offset:
            g = self.g_min + self.span / 2 * (1 + wn)
            var = self._cell_var(g) + self._cell_var(np.full_like(g, (self.g_min + self.g_max) / 2))
            realised = np.sqrt(var) / (self.span / 2) * wsc
        else:
            gp = self.g_min + np.maximum(wn, 0) * self.span
            gm = self.g_min + np.maximum(-wn, 0) * self.span
            realised = np.sqrt(self._cell_var(gp) + self._cell_var(gm)) / self.span * wsc
        req = self.sigma
        short = realised < req
        self.sigma_shortfall = {
            "mean_requested_sigma": float(req.mean()), "mean_realised_sigma": float(realised.mean()),
            "fraction_short": float(short.mean()),
            "mean_relative_shortfall": float(np.mean(np.where(short, (req - realised) / np.maximum(req, 1e-30), 0))),
        }

    def _cell_var(self, g):
        g = np.asarray(g, np.float32)
        ps = np.asarray(self.device.program_sigma(g), np.float64)
        rs = np.asarray(self.device.read_sigma(g, self.t_compute), np.float64)
        return ps ** 2 + rs ** 2

    def _tiles(self):
        """(r, c, block offset, rows_r, c0, c1) for every tile."""
        cols = self.card.tile.cols
        for r in range(self.n_rt):
            r0, r1 = int(self.row_starts[r]), int(self.row_starts[r + 1])
            for c in range(self.n_ct):
                c0, c1 = c * cols, min((c + 1) * cols, self.out_features)
                yield r, c, self.out_features * r0, r1 - r0, c0, c1

    def _tile_view(self, flat, r_off, rows_r, c0, c1):
        return flat[r_off + c0 * rows_r: r_off + c1 * rows_r].reshape(c1 - c0, rows_r)

    # ------------------------------------------------------------------ programming
    def program(self) -> None:
        """Program the stored arrays (VPQ/JQ: mu pair on uniform levels, sigma on log levels) once; their
        cells are counted in `stored_program_events`, not in the per-sample `stats.program_events`."""
        self._programmed = True
        self._fixed_args = None  # the kernel arguments that hold for every sample, rebuilt on next use
        self._ahead = {}
        if not self.stored:
            return
        q = self.quant
        m_mu = max((1 << (int(q.mu_bits) - 1)) - 1, 1)
        k = np.rint(self.mu / np.float32(q.mu_step))
        k = np.clip(k, -m_mu, m_mu)
        kmax = np.maximum(self._group_max(np.abs(k)), 1.0)
        self.mu_unit = (self.span / kmax).astype(np.float64)  # uS per mu step, per group
        per = self.mu_unit[self.grp]  # [n_rt, out]
        gp = np.empty(self.mu.size, np.float32)
        gm = np.empty(self.mu.size, np.float32)
        gs = np.empty(self.mu.size, np.float32)
        sig_g = self._sigma_to_g(self.sigma)
        for r in range(self.n_rt):
            r0, r1 = self.row_starts[r], self.row_starts[r + 1]
            off = self.out_features * r0
            kb = k[:, r0:r1]
            unit = per[r][:, None]
            gp[off: off + kb.size] = (self.g_min + np.maximum(kb, 0) * unit).ravel()
            gm[off: off + kb.size] = (self.g_min + np.maximum(-kb, 0) * unit).ravel()
            gs[off: off + kb.size] = sig_g[:, r0:r1].ravel()
        self.held = {}
        for name, arr in (("mu+", gp), ("mu-", gm), ("sigma", gs)):
            held = np.empty_like(arr)
            keys = self._tile_keys(("prog_stored", self.layer), name)
            for r, c, off, rows_r, c0, c1 in self._tiles():
                tgt = self._tile_view(arr, off, rows_r, c0, c1)
                key = int(keys[r, c])
                ck = self._cells_key(r, c, name)
                self._tile_view(held, off, rows_r, c0, c1)[...] = self.device.program(tgt, key, ck)
            self.held[name] = held
        # one-time programming, before any inference: counted apart from the per-sample events (stats are
        # reset after ADC calibration)
        self.stored_program_events = 3 * self.mu.size
        self._mu_read = np.empty_like(self.mu)
        self._sigma_read = np.empty_like(self.sigma)
        # Fused read of the stored arrays: a read is clip(mean + sd z) with a per-cell mean and sd fixed for a
        # given t_read (Gaussian devices, the `gaussian_programming` contract of bayesim.devices.base: mean =
        # held; devices with `read_moments`, e.g. PCM: mean = the cell's drifted conductance, deterministic per
        # cell), so the per-sample read fuses into the weight kernel and only the read noise is drawn.
        moments = getattr(self.device, "read_moments", None)
        self.fused_read = (self.table_noise or moments is not None) and not self.lumped
        if self.fused_read:
            if self.table_noise:
                self.read_mean = self.held
                self.read_sd = {k: np.asarray(self.device.read_sigma(h, self.t_read), np.float32)
                                for k, h in self.held.items()}
            else:
                self.read_mean, self.read_sd = {}, {}
                for name, held in self.held.items():
                    mean, sd = np.empty_like(held), np.empty_like(held)
                    for r, c, off, rows_r, c0, c1 in self._tiles():
                        ck = self._cells_key(r, c, name)
                        m_, s_ = moments(self._tile_view(held, off, rows_r, c0, c1), self.t_read, ck)
                        self._tile_view(mean, off, rows_r, c0, c1)[...] = m_
                        self._tile_view(sd, off, rows_r, c0, c1)[...] = s_
                    self.read_mean[name], self.read_sd[name] = mean, sd
            self._mu_mean = self._decode_mu_blocks(self.read_mean["mu+"], self.read_mean["mu-"])
        if self.drift_compensation == "global":
            self.drift_gains = self._drift_gains()
        if self.fused_read:
            _, values, ladder = self._sigma_ladder()
            self._ladder = (ladder if ladder is not None else np.ones(2), values if values is not None else np.zeros(2))

    def _drift_gains(self) -> dict:
        """Global drift compensation (GDC) of the stored arrays, per tile, as on IBM's PCM chips and in aihwkit:
        an all-ones input is applied right after programming and again at t_read, and each tile's digital gain
        is sum_j |I_j(0)| / sum_j |I_j(t_read)| over its column currents I_j. The mu pair's G+ and G- columns
        are measured together (I_j = the sum of both currents), so weights of opposite sign cannot cancel the
        measurement. The gain undoes the tile's mean drift, not the cell-to-cell spread of drift exponents.
        The currents are the cells' expected reads, clipped as the reads are (`read_moments`: drifted mean and
        read-noise std; a Gaussian-read device: the held conductance and its read std), or, for other
        devices, one read at each time with the same noise draw (a device without drift gets gains of 1).
        Returns {"mu": gains, "sigma": gains}, float64 [row tiles, column tiles]."""
        moments = getattr(self.device, "read_moments", None)
        lo, hi = (float(v) for v in self.g_clip)

        # the drifted moments at t_read, as program() computed them for the fused read (float32, as moments gives)
        fused_now = self.fused_read and not self.table_noise and moments is not None

        def current(name, t, r, c, off, rows_r, c0, c1):  # the column currents of one array of one tile
            if fused_now and t == self.t_read:
                m_, s_ = (self._tile_view(a[name], off, rows_r, c0, c1) for a in (self.read_mean, self.read_sd))
                return _expected_clipped(m_, s_, lo, hi).sum(axis=1)
            h = np.ascontiguousarray(self._tile_view(self.held[name], off, rows_r, c0, c1), np.float32)
            ck = self._cells_key(r, c, name)
            if self.table_noise:
                g = _expected_clipped(h, np.asarray(self.device.read_sigma(h, t)), lo, hi)
            elif moments is not None:
                m_, s_ = moments(h, t, ck)
                g = _expected_clipped(m_, s_, lo, hi)
            else:
                g = self.device.read(h, t, rng.derive_key(self.seed, "gdc", self.layer, r, c, name), ck)
            return np.asarray(g, np.float64).sum(axis=1)

        gains = {k: np.ones((self.n_rt, self.n_ct)) for k in ("mu", "sigma")}
        for r, c, off, rows_r, c0, c1 in self._tiles():
            for which, names in (("mu", ("mu+", "mu-")), ("sigma", ("sigma",))):
                ref, now = (float(np.abs(sum(current(n, t, r, c, off, rows_r, c0, c1) for n in names)).sum())
                            for t in (0.0, self.t_read))
                if ref == 0.0:
                    continue  # no current right after programming (all cells at 0 uS): nothing to compensate
                if not now > 0.0 or not np.isfinite(ref / now):
                    raise BayesimError(f"layer {self.layer}, tile {r},{c}: drift compensation: the stored {which} "
                                       f"array reads no current at t = {self.t_read:g} s (it did right after "
                                       f"programming)")
                gains[which][r, c] = ref / now
        return gains

    def _group_gains(self, tile_gains: np.ndarray) -> np.ndarray:
        """A per-tile gain [n_rt, n_ct] as a per-scale-group gain [n_groups] (every group lies in one tile)."""
        out = np.ones(self.n_groups, np.float64)
        cols = self.card.tile.cols
        for r in range(self.n_rt):
            out[self.grp[r]] = tile_gains[r, np.arange(self.out_features) // cols]
        return out

    def _scale_tiles(self, flat: np.ndarray, tile_gains: np.ndarray) -> None:
        """Multiply each tile's cells of a block-layout float32 array by the tile's gain, in place."""
        for r, c, off, rows_r, c0, c1 in self._tiles():
            if tile_gains[r, c] != 1.0:
                v = self._tile_view(flat, off, rows_r, c0, c1)
                v *= np.float32(tile_gains[r, c])

    def _sigma_ladder(self):
        """Log-level sigma array: code k (sigma_max * 2^-k, k = 0..n-1, code n = zero) sits on rung
        n - k of the device's geometric ladder of n + 1 conductances (zero on the lowest rung).
        A read conductance decodes piecewise linearly between rungs (exact on them)."""
        q = self.quant
        if getattr(q, "sigma_kind", "log") != "log":
            return None, None, None
        from bayesim.bnn.quant import log_levels

        n = (1 << int(q.sigma_bits)) - 1
        ladder = np.asarray(self.device.levels(n + 1, "log"), np.float64)
        if ladder[0] <= 0:
            raise BayesimError(f"device {getattr(self.device, 'name', '?')}: log levels need g_min > 0")
        values = log_levels(q.sigma_max, q.sigma_bits)[::-1].astype(np.float64)  # [0, smallest .. sigma_max]
        return np.log(ladder), values, ladder

    def _sigma_to_g(self, sigma):
        q = self.quant
        logl, values, ladder = self._sigma_ladder()
        if ladder is None:  # uniform sigma grid: linear in conductance
            return (self.g_min + np.clip(sigma / np.float32(q.sigma_max), 0, 1) * self.span).astype(np.float32)
        from bayesim.bnn.quant import log_codes

        codes = log_codes(sigma, q.sigma_max, q.sigma_bits)
        return ladder[(ladder.size - 1) - codes].astype(np.float32)

    def _g_to_sigma(self, g):
        q = self.quant
        logl, values, ladder = self._sigma_ladder()
        if ladder is None:
            return (np.clip((g - self.g_min) / self.span, 0, None) * float(q.sigma_max)).astype(np.float32)
        # piecewise linear between the rungs (exact on them), as the fused kernel
        return np.interp(g.astype(np.float64), ladder, values).astype(np.float32)

    def _read_stored(self, s):
        """Read the stored mu pair and sigma array (drift + read noise at t_read) -> [out, in] values."""
        reads = {}
        for name, held in self.held.items():
            out = np.empty_like(held)
            keys = self._tile_keys(("read_stored", s, self.layer), name)
            for r, c, off, rows_r, c0, c1 in self._tiles():
                h = self._tile_view(held, off, rows_r, c0, c1)
                key = int(keys[r, c])
                ck = self._cells_key(r, c, name)
                self._tile_view(out, off, rows_r, c0, c1)[...] = self.device.read(h, self.t_read, key, ck)
            reads[name] = out
        mu_blocks = self._decode_mu_blocks(reads["mu+"], reads["mu-"])
        sig_g = reads["sigma"]
        if self.drift_gains is not None:  # GDC: each tile's digital gain on its decoded mu and its sigma reads
            self._scale_tiles(mu_blocks, self.drift_gains["mu"])  # (both arrays are this sample's own)
            self._scale_tiles(sig_g, self.drift_gains["sigma"])
        for r in range(self.n_rt):
            r0, r1 = self.row_starts[r], self.row_starts[r + 1]
            off, n = self.out_features * r0, self.out_features * (r1 - r0)
            shape = (self.out_features, r1 - r0)
            self._mu_read[:, r0:r1] = mu_blocks[off:off + n].reshape(shape)
            self._sigma_read[:, r0:r1] = self._g_to_sigma(sig_g[off:off + n]).reshape(shape)
        self.stats.cell_reads += 3 * self.mu.size
        return self._mu_read, self._sigma_read

    def _decode_mu_blocks(self, gp, gm):
        """mu (block layout, float32) from the read pair conductances: (G+ - G-) / (uS per step) * mu_step.
        Values within 1e-4 of a level step snap to it: that is float32 round-off of the conductance
        arithmetic, so a noise-free device returns the stored grid values bit for bit."""
        out = np.empty_like(gp)
        for r in range(self.n_rt):
            r0, r1 = self.row_starts[r], self.row_starts[r + 1]
            off, n = self.out_features * r0, self.out_features * (r1 - r0)
            shape = (self.out_features, r1 - r0)
            d = (gp[off:off + n] - gm[off:off + n]).reshape(shape)
            k = d.astype(np.float64) / self.mu_unit[self.grp[r]][:, None]
            kr = np.rint(k)
            k = np.where(np.abs(k - kr) < 1e-4, kr, k)
            out[off:off + n] = (k.astype(np.float32) * np.float32(self.quant.mu_step)).ravel()
        return out

    # ------------------------------------------------------------------ per-sample weights
    def _build(self, s):
        """Effective normalised weights of sample s in block layout (cached for repeated batches)."""
        if self._built == s:
            return
        cache = self._sample_cache
        if cache is not None and s in cache:
            wn, sn = cache[s]
            np.copyto(self._wn, wn)
            if sn is not None:
                np.copyto(self._sn, sn)
                self._mean_n = self._wn
            self._built = s
            return
        if s in self._ahead:  # built with an earlier sample by the pair-law kernel
            self._wn = self._pass[self._ahead.pop(s)]
            self._count_sample_events()
            self._built = s
        else:
            self._build_fresh(s)
        if cache is not None:
            cache[s] = (self._wn.copy(), self._sn.copy() if self.lumped else None)

    def weight_bytes(self) -> int:
        """Bytes one sample's effective weights take in the per-sample cache (see cache_samples)."""
        return 4 * self.mu.size * (2 if self.lumped else 1)

    def cache_samples(self, enabled: bool) -> None:
        """Keep the effective weights of every sample built from now on (True) so that batches may run
        in the outer loop; False drops them. The caller bounds the memory (weight_bytes() per sample)."""
        self._sample_cache = {} if enabled else None

    def _build_fresh(self, s):
        with kernels.serial_if_small(self.mu.size):
            self._build_sample(s)

    def _build_sample(self, s):
        if not self._programmed:
            self.program()
        fused = self.stored and self.fused_read
        if self.stored and not fused:
            mu, sigma = self._read_stored(s)
        else:
            mu, sigma = self.mu, self.sigma
        if not hasattr(self, "_wn"):
            self._wn = np.empty(self.mu.size, np.float32)
        eps_key = np.uint64(rng.derive_key(self.seed, "eps_w", s, self.layer))
        if self.lumped:
            self._mean_n = self._run_kernel(mu, sigma, eps_key, False, kernels.OUT_NORMALISED, self._wn)
            if not hasattr(self, "_sn"):
                self._sn = np.empty(self.mu.size, np.float32)
            self._run_kernel(sigma, sigma, eps_key, False, kernels.OUT_NORMALISED, self._sn)
            np.square(self._sn, out=self._sn)
            self.stats.program_events += self._cells_per_layer()  # the hardware it stands for writes the sample
            self._built = s
            return
        use_eps = self.sampler == "digital"
        conductance = self.ir or self.sampler == "device" or (self.quantized and not self.fused_cells)
        if not conductance:
            self._run_kernel(mu, sigma, eps_key, use_eps, kernels.OUT_NORMALISED, self._wn, s=s)
        else:
            if not hasattr(self, "_ga"):
                self._ga = np.empty(self.mu.size, np.float32)
                self._gb = np.empty(self.mu.size, np.float32)
            self._run_kernel(mu, sigma, eps_key, use_eps, kernels.OUT_CONDUCTANCE, self._ga, self._gb, s=s)
            self._finish_conductances(s)
        self._count_sample_events()
        self._built = s

    def _count_sample_events(self):
        """The cell events of one sample's weights: reads of the stored arrays (read inside the weight kernel) and
        the writes of the compute cells (every strategy writes each sample's weights: fp/vpq exactly, at full
        precision, an idealisation without programming noise; spq/jq and the device sampler with the device's
        noise)."""
        if self.stored and self.fused_read:
            self.stats.cell_reads += 3 * self.mu.size
        self.stats.program_events += self._cells_per_layer()

    def _cells_per_layer(self):
        if self.offset:
            return self.mu.size + self.in_features * self.n_ct
        return 2 * self.mu.size

    def _keys(self, *ids):
        """derive_key(seed, *ids, r, c) of every tile (r, c): uint64 [row tiles, column tiles]."""
        return rng.derive_key_grid(self.seed, ids, self.n_rt, self.n_ct)

    def _sample_independent_args(self):
        """(stored, stored-array arguments, cell-law arguments, noise tables) of build_tiles that are the same for every
        Monte-Carlo sample (built once after programming; the per-sample read keys are added by the caller)."""
        if getattr(self, "_fixed_args", None) is not None:
            return self._fixed_args
        stored = self.stored and getattr(self, "fused_read", False) and not self.lumped
        if stored:
            q = self.quant
            hp, hm, hs = (self.read_mean[k] for k in ("mu+", "mu-", "sigma"))
            sp, sm, ss = (self.read_sd[k] for k in ("mu+", "mu-", "sigma"))
            inv_unit = (np.float64(np.float32(q.mu_step)) / self.mu_unit).astype(np.float32)  # mu per uS, per group
            mu_mean, sigma_gain = self._mu_mean, np.ones((self.n_rt, self.n_ct), np.float32)
            if self.drift_gains is not None:  # GDC: mu's gain folds into the linear decode, sigma's into the kernel
                inv_unit = inv_unit * self._group_gains(self.drift_gains["mu"]).astype(np.float32)
                mu_mean = mu_mean.copy()
                self._scale_tiles(mu_mean, self.drift_gains["mu"])
                sigma_gain = self.drift_gains["sigma"].astype(np.float32)
            st = (True, hp, hm, hs, sp, sm, ss, inv_unit, mu_mean, getattr(q, "sigma_kind", "log") == "log",
                  *kernels.sigma_decode_coefficients(*self._ladder), float(q.sigma_max), sigma_gain)
        else:
            z = np.zeros(1, np.float32)
            st = (False, z, z, z, z, z, z, np.ones(1, np.float32), z, True,
                  *kernels.sigma_decode_coefficients(np.ones(2), np.zeros(2)), 1.0, np.ones((1, 1), np.float32))
        noisy = self.quantized and self.fused_cells and self.sampler == "digital"
        if noisy and self.cell_law:
            law = self.device.read_cell_law(self.t_compute)
            f32 = np.float32
            self._drift = law[2] != 0 and law[0] > 0  # the per-cell path draws drift normals (_run_kernel)
            no_nu = np.zeros(1, np.float32)
            cl = (True, no_nu, no_nu, f32(law[0]), f32(law[1]), law[2], f32(law[3]), f32(law[4]), law[5], law[6],
                  f32(law[7]), f32(law[8]), f32(law[9]), f32(law[10]))
        else:
            z32 = np.float32(0.0)
            no_nu = np.zeros(1, np.float32)
            cl = (False, no_nu, no_nu, z32, z32, 0, z32, z32, 0, np.zeros(1), z32, z32, z32, np.float32(1.0))
        # per-level programming/read stds and the reference cell's (zeros: noise-free digital targets)
        noise = ((self.sd_prog, self.sd_read, np.float32(self.ref_sd[0]), np.float32(self.ref_sd[1])) if noisy else
                 (np.zeros_like(self.lvl), np.zeros_like(self.lvl), np.float32(0.0), np.float32(0.0)))
        if self._programmed:
            self._fixed_args = (stored, st, cl, noise)
        return stored, st, cl, noise

    def _pair_tables(self):
        """(pair, pair_zero) of bayesim.crossbar.pairlaw.pair_tables for this layer's grids and read law (built on
        first use; cached there by content)."""
        if getattr(self, "_pair", None) is None:
            law = self.device.read_cell_law(self.t_compute)
            law32 = tuple(np.float32(v) if isinstance(v, float) else v for v in (*law[:11], *self.g_clip))
            self._pair = pairlaw.pair_tables(self.lvl, self.sd_prog, self.kmax, law32, self.span)
        return self._pair

    def _run_kernel(self, mu, sigma, eps_key, use_eps, out_kind, out_a, out_b=None, s=0):
        t = self.card.tile
        stored, st, cl, (sd_prog, sd_read, ref_sd_prog, ref_sd_read) = self._sample_independent_args()
        if self.pair_law and use_eps and out_kind == kernels.OUT_NORMALISED:
            return self._run_pair_kernel(mu, sigma, s, st, self._pair_tables())
        keys = self._keys("prog", s, self.layer)
        read_keys = self._keys("read_stored", s, self.layer) if stored else keys
        st = (*st[:7], read_keys, *st[7:])
        if cl[0] and self._drift:  # the programmed cells' drift-exponent normals, new at each programming
            if getattr(self, "_nu", None) is None:
                self._nu = (np.empty(self.mu.size, np.float32), np.empty(self.mu.size, np.float32))
            names = ("w", "ref") if self.offset else ("w+", "w-")
            cells = np.stack([self._programmed_key_grid(nm, s) for nm in names], axis=-1)
            nu_keys = rng.derive_keys(cells, "nu")  # [r, c, side]
            kernels.cell_normals(nu_keys, self.row_starts, self.out_features, t.cols, self.offset, rng.NORMAL_TABLE,
                                 *self._nu)
            cl = (cl[0], *self._nu, *cl[3:])
        kernels.build_tiles(
            mu, sigma, eps_key, use_eps, rng.NORMAL_TABLE, kernels.DEVICE_TABLE, self.quantized,
            bool(self.quantized and int(self.quant.w_bits) == 1),
            np.float32(self.quant.w_step if self.quantized else 1.0), self.kmax, self.inv_wscale, self.grp,
            self.lvl, sd_prog, sd_read, np.float32(self.g_clip[0]), np.float32(self.g_clip[1]),
            np.float32(self.g_min), np.float32(self.span), self.offset, ref_sd_prog, ref_sd_read,
            keys, self.row_starts, t.rows, t.cols, out_kind,
            out_a, np.empty(1, np.float32) if out_b is None else out_b, *st, *cl)
        return out_a

    def _run_pair_kernel(self, mu, sigma, s, st, pair):
        """The pair-law kernel for sample s and, unless the stored arrays were read outside the kernel, for the
        next PAIR_SAMPLES_PER_PASS - 1 samples too, up to the last sample planned (`plan_samples`): built ahead,
        the kernel reads the stored arrays once for all of them. Returns s's weights."""
        t = self.card.tile
        last = self._last_sample
        stored = st[0]
        # not ahead past the last sample, nor when mu and sigma are this sample's reads (made outside the kernel)
        end = s + (1 if self.stored and not stored else PAIR_SAMPLES_PER_PASS)
        ids = list(range(s, end if last is None else max(min(end, last + 1), s + 1)))
        if getattr(self, "_pass", None) is None:
            self._pass = np.empty((PAIR_SAMPLES_PER_PASS, self.mu.size), np.float32)
        eps_keys = rng.derive_key_rows(self.seed, ("eps_w",), ids, (self.layer,))
        grid = (self.n_rt, self.n_ct)  # derive_key(seed, name, sample, layer, r, c): as _keys(name, sample, layer)
        tile_keys = self._no_keys if stored else rng.derive_key_rows(self.seed, ("prog",), ids, (self.layer,), grid)
        read_keys = rng.derive_key_rows(self.seed, ("read_stored",), ids, (self.layer,), grid) if stored \
            else self._no_keys
        kernels.build_pair_tiles(
            mu, sigma, eps_keys, rng.NORMAL_TABLE, kernels.DEVICE_TABLE, int(self.quant.w_bits) == 1,
            np.float32(self.quant.w_step), self.kmax, self.grp, pair[0], pair[1], tile_keys, self.row_starts,
            t.rows, t.cols, self._pass, *st[:7], read_keys, *st[7:], np.float32(self.g_min), np.float32(self.span),
            np.float32(self.g_clip[0]), np.float32(self.g_clip[1]))
        self._ahead = {i: k for k, i in enumerate(ids) if k > 0}
        self._wn = self._pass[0]
        return self._wn

    def plan_samples(self, n: int | None) -> None:
        """Tell the layer that samples 0 .. n-1 will be run (None: not known). The pair-law path builds each
        sample's weights together with the next ones'; it does not build past the last sample planned."""
        self._last_sample = None if n is None else int(n) - 1

    def _finish_conductances(self, s):
        """Generic device program/read per tile (when no per-level tables), IR drop, -> normalised."""
        generic = self.sampler == "device" or (self.quantized and not self.fused_cells)
        ir = self.card.ir_drop
        half = self.span / 2 if self.offset else self.span
        for r, c, off, rows_r, c0, c1 in self._tiles():
            a = self._tile_view(self._ga, off, rows_r, c0, c1)
            b = self._tile_view(self._gb, off, rows_r, c0, c1)
            if generic:
                a[...] = self._program_read(a, s, r, c, "w+" if not self.offset else "w")
                if self.offset:
                    ref = self._program_read(np.ascontiguousarray(b[0]), s, r, c, "ref")
                    b[...] = ref[None, :]
                else:
                    b[...] = self._program_read(b, s, r, c, "w-")
            if self.ir:
                for g in (a, b):
                    m, drop = irdrop.apply(g.T, ir.model, ir.r_wire_ohm, self.card.tile.rows)
                    if drop >= 1.0:  # first order only: the exact solve never loses a whole current
                        t = self.card.tile
                        exact = ("ir_drop.model: exact, smaller tiles" if t.rows * t.cols <= EXACT_IR_MAX_CELLS else
                                 f"smaller tiles (at most {EXACT_IR_MAX_CELLS} cells also allow ir_drop.model: exact)")
                        raise BayesimError(
                            f"{self.card.path or 'crossbar card ' + self.card.name}: ir_drop.model {ir.model}: the "
                            f"first-order drop of a cell "
                            f"is {drop:.0%} of its current (layer {self.layer}, tile {r},{c}), so its effective "
                            f"conductance would be negative: the model does not hold here; use {exact} "
                            f"or a smaller ir_drop.r_wire_ohm ({ir.r_wire_ohm:g} ohm)")
                    self.stats.ir_drop_max = max(self.stats.ir_drop_max, drop)
                    g[...] = m.T
            self._tile_view(self._wn, off, rows_r, c0, c1)[...] = (a - b) / np.float32(half)

    def _program_read(self, targets, s, r, c, name):
        key = int(self._tile_keys(("prog", s, self.layer), name)[r, c])
        ck = self._cells_key(r, c, name)
        held = self.device.program(np.ascontiguousarray(targets), key, ck)
        rkey = int(self._tile_keys(("read", s, self.layer), name)[r, c])
        return self.device.read(held, self.t_compute, rkey, self._programmed_cells_key(r, c, name, s))

    def _tile_keys(self, ids: tuple, name: str) -> np.ndarray:
        """uint64 [row tiles, column tiles]: derive_key(seed, *ids, r, c, name) of every tile, derived in one call
        (a card of small tiles has tens of thousands). The latest grids are kept: the per-tile loops ask for the
        same one once per tile."""
        return self._kept_grid((ids, name), lambda: rng.derive_key_grid(self.seed, ids, self.n_rt, self.n_ct,
                                                                        (name,)))

    def _kept_grid(self, k, derive) -> np.ndarray:
        """The key grid cached under k, derived by derive() when absent; the cache keeps at most 16 grids."""
        grid = self._key_grids.get(k)
        if grid is None:
            if len(self._key_grids) >= 16:
                self._key_grids.clear()
            grid = self._key_grids[k] = derive()
        return grid

    def _cell_key_grid(self, name) -> np.ndarray:
        """The `cell_key` of the physical cells `name` of every tile, uint64 [row tiles, column tiles]: fixed for the
        layer, derived once: derive_key(seed, "cells", layer, r, c, name)."""
        grid = self._cell_keys.get(name)
        if grid is None:
            grid = self._cell_keys[name] = rng.derive_key_grid(self.seed, ("cells", self.layer), self.n_rt,
                                                               self.n_ct, (name,))
        return grid

    def _cells_key(self, r, c, name):
        """The `cell_key` of the physical cells `name` of tile (r, c) (see _cell_key_grid)."""
        return int(self._cell_key_grid(name)[r, c])

    def _programmed_cells_key(self, r, c, name, s):
        """The `cell_key` of the reads of compute cells programmed for sample s (see bayesim.devices.base:
        the cells as programmed, so what is drawn at programming, e.g. a PCM drift exponent, is new each time)."""
        return int(self._programmed_key_grid(name, s)[r, c])

    def _programmed_key_grid(self, name, s) -> np.ndarray:
        """_programmed_cells_key of every tile, uint64 [row tiles, column tiles]: derive_key(cell key,
        "programmed", s), derived in one call and kept with the _tile_keys grids."""
        return self._kept_grid((("programmed", s), name),
                               lambda: rng.derive_keys(self._cell_key_grid(name), "programmed", s))

    # ------------------------------------------------------------------ forward
    def _bias(self, s):
        """Sample s's bias (added digitally): drawn and quantized as the software model's (bnn.predict)."""
        if self.mu_b is None:
            return None
        if self.sigma_b is None:
            return self.mu_b
        from bayesim.bnn.quant import max_level

        quantize = self.strategy in ("spq", "jq")  # same grid and rule as the weights (bnn/ops.py)
        bits = int(self.quant.w_bits) if quantize else 0
        b = np.empty(self.mu_b.shape, np.float32)
        kernels.bias_sample(self.mu_b.reshape(-1), self.sigma_b.reshape(-1),
                            np.uint64(rng.derive_key(self.seed, "eps_b", s, self.layer)), rng.NORMAL_TABLE, quantize,
                            bits == 1, np.float32(self.quant.w_step if quantize else 0.0),
                            np.float32(max_level(bits) if quantize else 0), b.reshape(-1))
        return b

    def _unfold(self, x):
        x = np.asarray(x, dtype=np.float32)
        if self.is_conv:
            if x.ndim != 4:
                raise BayesimError(f"layer {self.layer}: conv input must be [N, C, H, W], got {x.shape}")
            cols, ho, wo = im2col(x, self.kh, self.kw, self.stride, self.padding)
            return cols, (x.shape[0], ho, wo)
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise BayesimError(f"layer {self.layer}: input must be [N, {self.in_features}], got {x.shape}")
        return x, None

    def _fold(self, y, geo):
        if geo is None:
            return y
        n, ho, wo = geo
        return np.ascontiguousarray(y.reshape(n, ho, wo, self.out_features).transpose(0, 3, 1, 2))

    def _tile_outputs(self, xn, s, row0=0):
        """Normalised column currents u [row tiles, N, out] of sample s: one GEMM per row tile (lumped: plus
        the output noise of the cells, drawn for GEMM rows row0, row0 + 1, ...: see _forward_prepared)."""
        out = self.out_features
        n = xn.shape[0]
        u = np.empty((self.n_rt, n, out), np.float32)
        if self._fused_mvm:  # the products of the fused forward kernel, bit for bit
            with kernels.blas_single_thread():
                periphery.mvm_adc(xn, self._wn, self.row_starts, u, 1, np.ones(n, np.float32), self.w_scale,
                                  self.w_scale, 0, 0.0, np.uint64(0), 0, rng.NORMAL_TABLE, np.zeros(n, np.int64),
                                  True, u)
            return u
        if not self.lumped:  # BLAS inside the numba tasks, products written straight into u
            with kernels.blas_single_thread():
                periphery.gemm_adc(xn, self._wn, self.row_starts, np.ones(n, np.float32), self.w_scale,
                                   self.w_scale, 0, 0.0, np.uint64(0), 0, rng.NORMAL_TABLE,
                                   np.zeros((1, n), np.int64), True, u, u[0])
            return u
        with kernels.blas_single_thread():  # see blas_single_thread: no BLAS threads racing numba's
            for r in range(self.n_rt):
                r0, r1 = int(self.row_starts[r]), int(self.row_starts[r + 1])
                xr = xn[:, r0:r1]  # a strided view: BLAS takes the leading dimension, no copy
                w = self._wn[out * r0: out * r1].reshape(out, r1 - r0)
                np.matmul(xr, w.T, out=u[r])
                if self.lumped:
                    var = np.square(xr) @ self._sn[out * r0: out * r1].reshape(out, r1 - r0).T
                    z = rng.normals(rng.derive_key(self.seed, "lumped", s, self.layer, r), var.shape,
                                    start=row0 * out)
                    u[r] += np.sqrt(var) * z
        return u

    def prepare(self, x: np.ndarray):
        """The DAC'd GEMM operand of inputs x (im2col for conv, fused with the DAC in one parallel pass):
        (x_norm [rows, in] float32, x_scale [rows], clipped, geometry). It does not depend on the
        Monte-Carlo sample, so a caller may reuse it for every sample of the same inputs. x_norm is the
        layer's reusable buffer: valid until this layer's next `prepare` (or `forward`) call."""
        card = self.card
        x = np.asarray(x, dtype=np.float32)
        if card.ideal_periphery:
            xm, geo = self._unfold(x)
            return np.ascontiguousarray(xm), np.ones(xm.shape[0], np.float32), 0, geo
        if self.is_conv:
            if x.ndim != 4:
                raise BayesimError(f"layer {self.layer}: conv input must be [N, C, H, W], got {x.shape}")
            x4 = x
        else:
            if x.ndim != 2 or x.shape[1] != self.in_features:
                raise BayesimError(f"layer {self.layer}: input must be [N, {self.in_features}], got {x.shape}")
            x4 = x.reshape(x.shape[0], x.shape[1], 1, 1)
        kh, kw, st, pd = (self.kh, self.kw, self.stride, self.padding) if self.is_conv else (1, 1, 1, 0)
        xn, xs, clipped = periphery.im2col_dac(x4, kh, kw, st, pd, card.dac.bits, card.dac.signed,
                                               card.dac.scaling, card.dac.range, getattr(self, "_xbuf", None))
        self._xbuf = xn
        geo = None
        if self.is_conv:
            n, _, h, w = x.shape
            geo = (n, (h + 2 * pd - kh) // st + 1, (w + 2 * pd - kw) // st + 1)
        return xn, xs, clipped, geo

    def forward(self, x: np.ndarray, sample: int, first_row: int = 0) -> np.ndarray:
        """Output of Monte-Carlo sample `sample` for inputs x ([N, in] or [N, C, H, W]); float32.

        first_row: the index of x[0] among all the inputs of the sample when they come in batches. The
        output noise of input i is drawn for input first_row + i, so every input has noise of its own and
        the outputs do not depend on the batching (all the rest already is a function of the input alone)."""
        with kernels.serial_if_small(np.size(x) * max(1, self.kh * self.kw if self.is_conv else 1)):
            prepared = self.prepare(x)
        return self.forward_prepared(prepared, sample, first_row)

    def forward_prepared(self, prepared, sample: int, first_row: int = 0) -> np.ndarray:
        """`forward` on the output of `prepare` (reusable across samples)."""
        if first_row < 0:
            raise BayesimError(f"first_row must be >= 0, got {first_row}")
        self._build(int(sample))
        with kernels.serial_if_small(prepared[0].size * self.out_features // 64):
            return self._forward_prepared(prepared, sample, int(first_row))

    def _forward_prepared(self, prepared, sample: int, first_row: int = 0) -> np.ndarray:
        xn, xs, clipped, geo = prepared
        row0 = first_row * (geo[1] * geo[2] if geo is not None else 1)  # GEMM rows: one per output pixel
        card = self.card
        n = xn.shape[0]
        qmax = 0 if card.adc.bits is None else (1 << (card.adc.bits - 1)) - 1
        if qmax and self.adc_range is None:
            raise BayesimError(f"crossbar card {card.name}: ADC range {card.adc.range!r} must be calibrated "
                               "(AnalogLayer.calibrate_adc) before the forward pass")
        sat = np.zeros(n, np.int64)
        noisy = card.output_noise > 0
        nkey = np.uint64(rng.derive_key(self.seed, "out_noise", sample, self.layer) if noisy else 0)
        b = self._bias(sample)
        if self._fused_mvm:
            # few outputs: products, ADC and accumulation fused, written straight in NCHW order
            n_img, per = (geo[0], geo[1] * geo[2]) if geo is not None else (n, 1)
            y = np.empty((n_img, self.out_features, per), np.float32)
            with kernels.blas_single_thread():
                periphery.mvm_adc(xn, self._wn, self.row_starts, y, per, xs, self.w_scale,
                                  self.adc_range if qmax else self.w_scale, qmax, float(card.output_noise), nkey,
                                  row0, rng.NORMAL_TABLE, sat, False, y)
            if b is not None:
                y += b[:, None]
            y = y.reshape(n_img, self.out_features, geo[1], geo[2]) if geo is not None else y.reshape(n, -1)
            geo = None
        else:
            # the kernels add each output's converted currents into y: starting from the bias (added digitally)
            # gives the bits of adding it afterwards (addition commutes) without another pass over y
            y = np.empty((n, self.out_features), np.float32)
            y[...] = 0.0 if b is None else b
            col_range = self.adc_range if qmax else self.w_scale
            if self.lumped:
                u = self._tile_outputs(xn, sample, row0)
                periphery.adc_accumulate(u, y, xs, self.w_scale, col_range, qmax, float(card.output_noise), nkey,
                                         row0, rng.NORMAL_TABLE, sat)
            else:  # products, ADC and accumulation in one parallel pass, BLAS in each task
                tasks = np.zeros((-(-self.out_features // periphery.GEMM_COLUMNS), n), np.int64)
                with kernels.blas_single_thread():
                    periphery.gemm_adc(xn, self._wn, self.row_starts, xs, self.w_scale, col_range, qmax,
                                       float(card.output_noise), nkey, row0, rng.NORMAL_TABLE, tasks, False,
                                       np.empty((1, 1, 1), np.float32), y)
                sat = tasks.sum(axis=0)
        st = self.stats
        st.dac_conversions += n * self.in_features * self.n_ct
        st.dac_clipped += clipped * self.n_ct
        st.adc_conversions += n * self.out_features * self.n_rt
        st.adc_saturated += int(sat.sum())
        st.cell_reads += n * (self._cells_per_layer())
        return self._fold(y, geo)

    def calibrate_adc(self, x: np.ndarray, samples) -> np.ndarray:
        """Set per-column ADC ranges [n_row_tiles, out] from data: max or percentile of |u| over samples."""
        card = self.card
        if card.adc.bits is None or card.adc.range == "fixed":
            return self.adc_range
        prepared = self.prepare(x)
        per_tile = []
        for s in samples:
            self._build(int(s))
            per_tile.append(np.abs(self._tile_outputs(prepared[0], s)))
        rng_ = np.empty((self.n_rt, self.out_features), np.float32)
        for r in range(self.n_rt):
            a = np.concatenate([u[r] for u in per_tile], axis=0)
            v = a.max(axis=0) if card.adc.range == "max" else np.percentile(a, card.adc.percentile, axis=0)
            rng_[r] = np.maximum(v, np.float32(1e-6))
        self.adc_range = rng_
        return rng_

    def summary(self) -> dict:
        """Geometry and chosen paths (for reports)."""
        return {"layer": self.layer, "strategy": self.strategy, "sampler": self.sampler,
                "in": self.in_features, "out": self.out_features, "row_tiles": self.n_rt,
                "col_tiles": self.n_ct, "cells": self._cells_per_layer() + (3 * self.mu.size if self.stored else 0),
                "path": "lumped" if self.lumped else ("per-cell (level tables)" if self.quantized and self.table_noise
                                                      else "pair law (fused device law)" if self.pair_law
                                                      else "per-cell (fused device law)" if self.quantized and self.cell_law
                                                      else "per-cell"),
                "lumped_fallback": self.lumped_reason, "sigma_shortfall": self.sigma_shortfall,
                "drift_gains": None if self.drift_gains is None else
                {k: {"min": float(g.min()), "mean": float(g.mean()), "max": float(g.max())}
                 for k, g in self.drift_gains.items()}}
