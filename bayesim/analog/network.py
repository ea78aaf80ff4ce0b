"""A whole Bayesian network on crossbar tiles.

`AnalogBNN` executes the frozen ops of `model.export_ops()` (see `bayesim.bnn.ops`): every Bayesian
layer becomes a `bayesim.crossbar.AnalogLayer` (tiles of `device` cells on `crossbar`), activations,
pooling and flattening run digitally in float32. Monte-Carlo sample s of every layer uses the same
counter-based weight streams as the software model, so an ideal device with ideal periphery gives the
software's predictive probabilities.

Loop order: when the effective weights of all S samples of all layers fit in WEIGHT_CACHE_BYTES
(LeNet-5: 62k weights x 32 samples x 4 B = 8 MB), batches run outer and samples inner: every layer
builds sample s once, keeps it, and the first layer's input (and its im2col + DAC, which do not depend
on the sample) is prepared once per batch. Otherwise samples run outer (each layer builds sample s
once, then serves every batch), so a big network never holds S copies of a matrix.
"""
from __future__ import annotations

import numba as nb
import numpy as np

from bayesim.bnn.ops import ActivationOp, BayesConvOp, BayesLinearOp, FlattenOp, MaxPoolOp
from bayesim.bnn.predict import check_batch, check_samples
from bayesim.bnn.quant import activation_step
from bayesim.crossbar import AnalogLayer, CrossbarStats
from bayesim.crossbar.layer import check_time
from bayesim.errors import BayesimError

# Monte-Carlo sample indices used for ADC calibration: far from the evaluation samples 0..S-1 so
# calibration never sees the draws it is evaluated on.
CALIBRATION_SAMPLE_BASE = 1 << 40
#: Memory budget (bytes) for keeping every sample's effective weights (batches-outer loop order).
WEIGHT_CACHE_BYTES = 64 << 20


def _maxpool(x: np.ndarray, k: int, s: int) -> np.ndarray:
    """Max pooling [N, C, H, W] -> [N, C, (H-k)//s + 1, (W-k)//s + 1] (no padding), one parallel pass."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, c, h, w = x.shape
    out = np.empty((n, c, (h - k) // s + 1, (w - k) // s + 1), np.float32)
    from bayesim.crossbar.kernels import serial_if_small

    with serial_if_small(x.size):
        _maxpool_kernel(x.reshape(n * c, h, w), k, s, out.reshape(n * c, out.shape[2], out.shape[3]))
    return out


@nb.njit(parallel=True, cache=True)
def _maxpool_kernel(x, k, s, out):
    """Window max per output pixel, NaN propagating as numpy's max. The window is walked row by row of
    the output (offsets (a, b) outer, output columns inner), so the inner loop runs along a row as SIMD;
    a max does not depend on the order it is taken in."""
    planes, ho, wo = out.shape
    for p in nb.prange(planes):
        for i in range(ho):
            o = out[p, i]
            first = x[p, i * s]
            for j in range(wo):
                o[j] = first[j * s]
            for a in range(k):
                row = x[p, i * s + a]
                for b in range(k):
                    for j in range(wo):
                        v = row[j * s + b]
                        m = o[j]
                        o[j] = v if (v > m or v != v) else m


def _bounded_activation(a: np.ndarray, upper, bits) -> np.ndarray:
    """`bayesim.bnn.quant.quantize_activation` (the same float32 operations, the same values) in one
    parallel pass instead of numpy's four."""
    from bayesim.crossbar.kernels import serial_if_small

    a = np.ascontiguousarray(a, dtype=np.float32)
    out = np.empty_like(a)
    up = np.float32(upper)
    step = activation_step(upper, bits) if bits is not None else np.float32(1.0)
    with serial_if_small(a.size):
        _bounded_activation_kernel(a.reshape(-1), up, step, bits is not None, out.reshape(-1))
    return out


@nb.njit(parallel=True, cache=True)
def _bounded_activation_kernel(a, upper, step, quantize, out):
    zero = np.float32(0.0)
    for i in nb.prange(a.size):
        v = min(max(a[i], zero), upper)  # np.clip: NaN stays NaN (first operand), -0.0 becomes +0.0
        out[i] = np.rint(v / step) * step if quantize else v


def _digital(op, h: np.ndarray) -> np.ndarray:
    """One digital (non-crossbar) op."""
    if isinstance(op, ActivationOp):
        if op.kind == "relu":
            return np.maximum(h, np.float32(0))
        return _bounded_activation(h, op.upper, op.bits)
    if isinstance(op, MaxPoolOp):
        return _maxpool(h, op.kernel, op.stride)
    if isinstance(op, FlattenOp):
        return h.reshape(h.shape[0], -1)
    raise BayesimError(f"{type(op).__name__} is not a digital op")


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z, dtype=np.float32)
    return e / e.sum(axis=1, keepdims=True)


class AnalogBNN:
    """A Bayesian network mapped onto crossbars of `device` cells (see module docstring).

    ops: `model.export_ops()`; device: a `DeviceModel`; crossbar: a `CrossbarCard`;
    sampler: "digital" (Gaussian generator) or "device" (the cells' own spread is the random source);
    t_read_s: read time of the stored mu/sigma arrays after their programming, s; t_compute_s: time between
    programming a sample's cells and the MVM that reads them, s (default 1 s, as `hardware.compute_delay_s`;
    None: t_read_s, every cell as old as the stored arrays); lumped: use the lumped
    output-noise path where exact; drift_compensation: "none" or "global" (GDC of the stored mu/sigma
    arrays: one digital gain per tile, measured with an all-ones input; see AnalogLayer._drift_gains).
    """

    def __init__(self, ops, device, crossbar, seed: int, sampler: str = "digital", t_read_s: float = 1.0,
                 lumped: bool = False, t_compute_s: float | None = 1.0, drift_compensation: str = "none"):
        check_time("t_read_s", t_read_s)  # here, with this class's argument names (the layers call them t_read)
        if t_compute_s is not None:
            check_time("t_compute_s", t_compute_s)
        self.ops = list(ops)
        self.device, self.crossbar, self.seed = device, crossbar, int(seed)
        self.layers: dict[int, AnalogLayer] = {}
        n_bayes = 0
        for i, op in enumerate(self.ops):
            if isinstance(op, (BayesLinearOp, BayesConvOp)):
                self.layers[i] = AnalogLayer(op, device, crossbar, layer_index=n_bayes, seed=self.seed,
                                             sampler=sampler, t_read=t_read_s,
                                             t_compute=t_read_s if t_compute_s is None else t_compute_s,
                                             lumped=lumped, drift_compensation=drift_compensation)
                n_bayes += 1
            elif not isinstance(op, (ActivationOp, MaxPoolOp, FlattenOp)):
                raise BayesimError(f"op {i}: {type(op).__name__} cannot run on the analog simulator")
        if not n_bayes:
            raise BayesimError("the network has no Bayesian layer to map onto crossbars")
        for layer in self.layers.values():
            layer.program()
        self.calibrated = False

    # ------------------------------------------------------------------ execution
    def _run(self, x: np.ndarray, sample: int, calibrate_with=None, start: int = 0, prepared=None,
             first_row: int = 0) -> np.ndarray:
        """Ops start.. on x; `prepared` (from AnalogLayer.prepare) replaces the input of op `start`; first_row:
        the index of the batch's first input among all inputs (its output noise, see AnalogLayer.forward)."""
        h = x
        for i in range(start, len(self.ops)):
            op = self.ops[i]
            if i in self.layers:
                layer = self.layers[i]
                if calibrate_with is not None:
                    layer.calibrate_adc(h, calibrate_with)
                if prepared is not None and i == start:
                    h = layer.forward_prepared(prepared, sample, first_row)
                else:
                    h = layer.forward(h, sample, first_row)
            else:
                h = _digital(op, h)
        return h

    def calibrate(self, x: np.ndarray, samples: int = 4) -> None:
        """Calibrate the ADC ranges layer by layer on inputs `x` (calibration data, not test data).

        Each layer's range comes from its inputs propagated through the already-calibrated layers
        before it, over `samples` calibration Monte-Carlo samples (indices disjoint from evaluation).
        """
        samples = check_samples(samples, "calibration samples")
        cal = [CALIBRATION_SAMPLE_BASE + k for k in range(samples)]
        self._run(check_batch(x, "calibration inputs"), cal[0], calibrate_with=cal)
        self.reset_stats()
        self.calibrated = True

    def predict_probs(self, x: np.ndarray, samples: int, batch_size: int = 1000, progress=None,
                      first_index: int = 0) -> np.ndarray:
        """Predictive samples [S, N, C] float32 for inputs x [N, ...] (loop order: module docstring).

        first_index: the number of x[0] among all the inputs this network evaluates (e.g. the splits one
        after another): input i draws the output noise of input first_index + i, so that inputs evaluated
        in separate calls do not share it. The Monte-Carlo weight samples are the same for every call."""
        samples = check_samples(samples)
        x = check_batch(x, "inputs")
        starts = list(range(0, x.shape[0], batch_size))
        per_sample = sum(layer.weight_bytes() for layer in self.layers.values())
        if not isinstance(first_index, (int, np.integer)) or first_index < 0:
            raise BayesimError(f"first_index must be an integer >= 0, got {first_index!r}")
        if len(starts) > 1 and samples * per_sample > WEIGHT_CACHE_BYTES:
            return self._predict_samples_outer(x, samples, batch_size, progress, first_index)
        first = min(self.layers)
        out = None
        done = 0
        try:
            for layer in self.layers.values():
                layer.cache_samples(len(starts) > 1)
                layer.plan_samples(samples)
            for b, i in enumerate(starts):
                h = x[i:i + batch_size]
                for k in range(first):  # digital ops before the first crossbar layer (sample-independent)
                    h = _digital(self.ops[k], h)
                prepared = self.layers[first].prepare(h)
                for s in range(samples):
                    p = _softmax(self._run(None, s, start=first, prepared=prepared, first_row=first_index + i))
                    if out is None:
                        out = np.empty((samples, x.shape[0], p.shape[1]), np.float32)
                    out[s, i:i + batch_size] = p
                if progress is not None:
                    now = samples * (b + 1) // len(starts)
                    if now > done:
                        progress.update(now - done)
                        done = now
        finally:
            for layer in self.layers.values():
                layer.cache_samples(False)
        return out

    def _predict_samples_outer(self, x, samples, batch_size, progress, first_index=0):
        for layer in self.layers.values():
            layer.plan_samples(samples)
        out = None
        for s in range(samples):
            for i in range(0, x.shape[0], batch_size):
                p = _softmax(self._run(x[i:i + batch_size], s, first_row=first_index + i))
                if out is None:
                    out = np.empty((samples, x.shape[0], p.shape[1]), np.float32)
                out[s, i:i + batch_size] = p
            if progress is not None:
                progress.update(1)
        return out

    # ------------------------------------------------------------------ reports
    @property
    def stats(self) -> CrossbarStats:
        total = CrossbarStats()
        for layer in self.layers.values():
            total.add(layer.stats)
        return total

    @property
    def stored_program_events(self) -> int:
        """Cells programmed once, before any inference: the stored mu pair and sigma cell of every weight
        (VPQ/JQ); not part of `stats`, which counts the events of the inferences since `reset_stats`."""
        return int(sum(layer.stored_program_events for layer in self.layers.values()))

    def reset_stats(self) -> None:
        for layer in self.layers.values():
            layer.stats = CrossbarStats()

    def summary(self) -> dict:
        """Per-layer geometry, paths taken, tiles and cells, sigma shortfall of the device sampler."""
        layers = [layer.summary() for layer in self.layers.values()]
        return {
            "layers": layers,
            "tiles": int(sum(l["row_tiles"] * l["col_tiles"] for l in layers)),
            "cells": int(sum(l["cells"] for l in layers)),
        }
