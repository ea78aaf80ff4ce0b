"""A whole Bayesian network on crossbar tiles.

`AnalogBNN` executes the frozen ops of `model.export_ops()` (see `bayesim.bnn.ops`): every Bayesian
layer becomes a `bayesim.crossbar.AnalogLayer` (tiles of `device` cells on `crossbar`), activations,
pooling and flattening run digitally in float32. Monte-Carlo sample s of every layer uses the same
counter-based weight streams as the software model, so an ideal device with ideal periphery gives the
software's predictive probabilities.

The loop is samples (outer) x batches x layers: a layer builds its effective weights of sample s once,
then serves every batch; nothing holds S copies of a matrix.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from bayesim.bnn.ops import ActivationOp, BayesConvOp, BayesLinearOp, FlattenOp, MaxPoolOp
from bayesim.bnn.quant import quantize_activation
from bayesim.crossbar import AnalogLayer, CrossbarStats
from bayesim.errors import BayesimError

# Monte-Carlo sample indices used for ADC calibration: far from the evaluation samples 0..S-1 so
# calibration never sees the draws it is evaluated on.
CALIBRATION_SAMPLE_BASE = 1 << 40


def _maxpool(x: np.ndarray, k: int, s: int) -> np.ndarray:
    if k == s and x.shape[2] % k == 0 and x.shape[3] % k == 0:
        n, c, h, w = x.shape
        return x.reshape(n, c, h // k, k, w // k, k).max(axis=(3, 5))
    win = sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::s, ::s]
    return np.ascontiguousarray(win.max(axis=(4, 5)))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z, dtype=np.float32)
    return e / e.sum(axis=1, keepdims=True)


class AnalogBNN:
    """A Bayesian network mapped onto crossbars of `device` cells (see module docstring).

    ops: `model.export_ops()`; device: a `DeviceModel`; crossbar: a `CrossbarCard`;
    sampler: "digital" (Gaussian generator) or "device" (the cells' own spread is the random source);
    t_read_s: read time after programming, s; lumped: use the lumped output-noise path where exact.
    """

    def __init__(self, ops, device, crossbar, seed: int, sampler: str = "digital", t_read_s: float = 1.0,
                 lumped: bool = False):
        self.ops = list(ops)
        self.device, self.crossbar, self.seed = device, crossbar, int(seed)
        self.layers: dict[int, AnalogLayer] = {}
        n_bayes = 0
        for i, op in enumerate(self.ops):
            if isinstance(op, (BayesLinearOp, BayesConvOp)):
                self.layers[i] = AnalogLayer(op, device, crossbar, layer_index=n_bayes, seed=self.seed,
                                             sampler=sampler, t_read=t_read_s, t_compute=t_read_s, lumped=lumped)
                n_bayes += 1
            elif not isinstance(op, (ActivationOp, MaxPoolOp, FlattenOp)):
                raise BayesimError(f"op {i}: {type(op).__name__} cannot run on the analog simulator")
        if not n_bayes:
            raise BayesimError("the network has no Bayesian layer to map onto crossbars")
        for layer in self.layers.values():
            layer.program()
        self.calibrated = False

    # ------------------------------------------------------------------ execution
    def _run(self, x: np.ndarray, sample: int, calibrate_with=None) -> np.ndarray:
        h = x
        for i, op in enumerate(self.ops):
            if i in self.layers:
                layer = self.layers[i]
                if calibrate_with is not None:
                    layer.calibrate_adc(h, calibrate_with)
                h = layer.forward(h, sample)
            elif isinstance(op, ActivationOp):
                if op.kind == "relu":
                    h = np.maximum(h, np.float32(0))
                else:
                    h = quantize_activation(h, op.upper, op.bits)
            elif isinstance(op, MaxPoolOp):
                h = _maxpool(h, op.kernel, op.stride)
            elif isinstance(op, FlattenOp):
                h = h.reshape(h.shape[0], -1)
        return h

    def calibrate(self, x: np.ndarray, samples: int = 4) -> None:
        """Calibrate the ADC ranges layer by layer on inputs `x` (calibration data, not test data).

        Each layer's range comes from its inputs propagated through the already-calibrated layers
        before it, over `samples` calibration Monte-Carlo samples (indices disjoint from evaluation).
        """
        cal = [CALIBRATION_SAMPLE_BASE + k for k in range(samples)]
        self._run(np.ascontiguousarray(x, dtype=np.float32), cal[0], calibrate_with=cal)
        self.reset_stats()
        self.calibrated = True

    def predict_probs(self, x: np.ndarray, samples: int, batch_size: int = 1000, progress=None) -> np.ndarray:
        """Predictive samples [S, N, C] float32 for inputs x [N, ...]."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.shape[0] == 0:
            raise BayesimError("empty input: nothing to predict")
        out = None
        for s in range(samples):
            for i in range(0, x.shape[0], batch_size):
                p = _softmax(self._run(x[i:i + batch_size], s))
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
