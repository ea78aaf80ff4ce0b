"""Frozen per-layer export of a Bayesian network (`model.export_ops()`): plain numpy float32 ops.

An executor that implements these ops in order reproduces `bayesim.bnn.predict_probs`:

For Monte-Carlo sample s and Bayesian layer l (0-based, forward order), with `seed` the prediction seed:
    eps_w = bayesim.rng.normals(derive_key(seed, "eps_w", s, l), mu_w.shape)
    eps_b = bayesim.rng.normals(derive_key(seed, "eps_b", s, l), mu_b.shape)
    w = mu_w + sigma_w * eps_w        (float32: product, then sum; no fused multiply-add)
    b = mu_b + sigma_b * eps_b
    spq / jq:  w = quantize_uniform(w, quant.w_step, quant.w_bits)
               b = quantize_uniform(b, quant.w_step, quant.w_bits)
`mu_w, sigma_w, mu_b, sigma_b` are the stored values, already VPQ-quantized for vpq / jq
(mu on the uniform grid `mu_step`, sigma on the log grid anchored at `sigma_max`).

Biases: a layer's weight and bias share one grid (as if the bias were an extra crossbar row driven by
a constant input 1): the ranges mu_step, sigma_max and w_step are computed over weight and bias
together, and the bias is quantized with the same rule as the weights in every strategy.

Linear: y = x @ w.T + b. Conv: cross-correlation with `stride`, zero `padding` (torch conv2d).
ActivationOp: relu -> max(x, 0); bounded -> clip(x, 0, upper) and, with bits, round_half_even(a / step) * step
with step = float32(upper) / (2^bits - 1) (`bayesim.bnn.quant.quantize_activation`).
MaxPoolOp: max over kernel x kernel windows with the stride, no padding. FlattenOp: [N, ...] -> [N, -1] (C order).
The last op gives logits; probabilities are softmax(logits) in float32 (torch.softmax).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np


@dataclass(frozen=True)
class LayerQuant:
    """Grid parameters of one Bayesian layer (values of the frozen quantizer ranges).

    mu levels: k * mu_step, |k| <= 2^(mu_bits-1) - 1 (binary {-mu_step, +mu_step} at 1 bit).
    sigma levels (sigma_kind "log"): sigma_max * 2^-k, k = 0 .. 2^sigma_bits - 2, and 0 for sigma below the
    smallest level by more than half an octave (`bayesim.bnn.quant.quantize_log`); sigma_kind "uniform" (the
    ablation): j * sigma_max / (2^sigma_bits - 1), j = 0 .. 2^sigma_bits - 1 (`quantize_sigma_uniform`).
    sampled weight levels: k * w_step, |k| <= 2^(w_bits-1) - 1, clipped.
    Fields of a quantizer the strategy does not use are still filled (informational).
    """
    strategy: str
    mu_bits: int
    mu_step: float
    sigma_bits: int
    sigma_max: float
    sigma_kind: str
    w_bits: int
    w_step: float


@dataclass(frozen=True)
class BayesLinearOp:
    mu_w: np.ndarray      # [out, in] float32
    sigma_w: np.ndarray   # [out, in]
    mu_b: np.ndarray      # [out]
    sigma_b: np.ndarray   # [out]
    quant: LayerQuant


@dataclass(frozen=True)
class BayesConvOp:
    mu_w: np.ndarray      # [out, in_c, kh, kw] float32
    sigma_w: np.ndarray
    mu_b: np.ndarray      # [out]
    sigma_b: np.ndarray
    stride: int
    padding: int
    quant: LayerQuant


@dataclass(frozen=True)
class ActivationOp:
    kind: str             # "relu" | "bounded"
    upper: float          # bounded: clip to [0, upper]
    bits: Optional[int]   # bounded: 2^bits uniform levels on [0, upper]; None = full precision


@dataclass(frozen=True)
class MaxPoolOp:
    kernel: int
    stride: int


@dataclass(frozen=True)
class FlattenOp:
    pass


Op = Union[BayesLinearOp, BayesConvOp, ActivationOp, MaxPoolOp, FlattenOp]
