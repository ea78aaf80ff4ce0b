"""Quantizers for mean-field Gaussian weights: uniform (mu, sampled weights), logarithmic (sigma).

Every quantizer has a numpy and a torch version that give bit-identical float32 values, so the
hardware side (numpy / numba) and the software forward pass (torch) agree exactly.

Uniform grid (`quantize_uniform`): symmetric levels k * step with |k| <= K = 2^(b-1) - 1;
    q = clip(round_half_even(x / step), -K, K) * step        (float32 division and product)
  b = 1 is the binary grid {-step, +step}: q = step where x >= 0 else -step.

Logarithmic grid for sigma (`quantize_log`): levels sigma_max * 2^-k, k = 0 .. 2^b - 2, plus one
code for 0 (2^b codes in all, i.e. exactly b bits). With r = sigma / sigma_max (float32) written as
r = m * 2^e, m in [0.5, 1) (frexp, exact), the nearest level in the log domain is
    k = -e      if m >= sqrt(1/2)   else   -e + 1
  - r >= 1 (sigma above the anchor) -> k = 0 (clipped to sigma_max);
  - k > 2^b - 2 (sigma below the smallest level by more than half an octave) -> 0 exactly (the
    weight becomes deterministic); sigma <= 0 -> 0.
  The level value is read from a float32 table sigma_max * 2^-k (built in float64 then cast), shared
  by both versions; levels that underflow float32 are 0.

Straight-through estimators (torch, training): `uniform_ste` passes the gradient to x inside the
clipping range (0 outside) and to a learnable step as in LSQ; `log_ste` passes it to sigma unchanged.

Ranges: `uniform_step(x, bits, mode, percentile)` gives the per-tensor step from max |x| ("max") or
the p-th percentile of |x| ("percentile"); for b = 1 the step is mean |x| (the L2-optimal binary scale).
"""
from __future__ import annotations

import math

import numpy as np

from bayesim.errors import BayesimError

_SQRT_HALF = np.float32(math.sqrt(0.5))


def check_bits(bits, what: str = "bits") -> int:
    """Validate a bit width (an integer in 1..16)."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= int(bits) <= 16:
        raise BayesimError(f"{what}: {bits!r} is not allowed; bit widths are integers in 1..16")
    return int(bits)


def max_level(bits: int) -> int:
    """K = 2^(b-1) - 1: the largest |k| of the symmetric uniform grid (1 for the binary grid)."""
    return max((1 << (int(bits) - 1)) - 1, 1)


# ------------------------------------------------------------------ numpy versions

def quantize_uniform(x, step, bits: int) -> np.ndarray:
    """Symmetric uniform quantization of `x` to levels k*step, |k| <= 2^(b-1)-1 (float32)."""
    x = np.asarray(x, dtype=np.float32)
    step = np.float32(step)
    if bits == 1:
        return np.where(x >= 0, step, -step).astype(np.float32)
    if not step > 0:
        return np.zeros_like(x)
    k = max_level(bits)
    return (np.clip(np.rint(x / step), -k, k) * step).astype(np.float32)


def log_levels(sigma_max, bits: int) -> np.ndarray:
    """The float32 table sigma_max * 2^-k, k = 0 .. 2^b - 2, followed by the zero code."""
    n = (1 << int(bits)) - 1
    t = np.empty(n + 1, dtype=np.float32)
    t[:n] = (np.float64(np.float32(sigma_max)) * np.exp2(-np.arange(n, dtype=np.float64))).astype(np.float32)
    t[n] = 0.0
    return t


def log_codes(sigma, sigma_max, bits: int) -> np.ndarray:
    """Codes k of `quantize_log` (0 .. 2^b - 2 levels, 2^b - 1 the zero code), int64."""
    s = np.asarray(sigma, dtype=np.float32)
    zero = (1 << int(bits)) - 1
    smax = np.float32(sigma_max)
    if not smax > 0:
        return np.full(s.shape, zero, dtype=np.int64)
    r = (s / smax).astype(np.float32)
    m, e = np.frexp(r)
    k = np.where(m >= _SQRT_HALF, -e, -e + 1).astype(np.int64)
    k = np.where(r >= 1, 0, k)
    k = np.where((r <= 0) | (k > zero - 1), zero, k)
    return k


def quantize_log(sigma, sigma_max, bits: int) -> np.ndarray:
    """Power-of-two quantization of sigma anchored at sigma_max (see module docstring), float32."""
    return log_levels(sigma_max, bits)[log_codes(sigma, sigma_max, bits)]


def quantize_sigma_uniform(sigma, sigma_max, bits: int) -> np.ndarray:
    """Uniform quantization of sigma on [0, sigma_max]: 2^b levels j * sigma_max / (2^b - 1) (the
    ablation of the log quantizer; small sigmas collapse to 0 or the first step), float32."""
    s = np.asarray(sigma, dtype=np.float32)
    smax = np.float32(sigma_max)
    if not smax > 0:
        return np.zeros_like(s)
    step = np.float32(smax / np.float32((1 << int(bits)) - 1))
    return (np.clip(np.rint(s / step), 0, (1 << int(bits)) - 1) * step).astype(np.float32)


def quantize_sigma(sigma, sigma_max, bits: int, kind: str = "log") -> np.ndarray:
    """Sigma quantizer by `kind`: "log" (`quantize_log`) or "uniform" (`quantize_sigma_uniform`)."""
    if kind == "uniform":
        return quantize_sigma_uniform(sigma, sigma_max, bits)
    return quantize_log(sigma, sigma_max, bits)


def quantize_activation(a, upper, bits: int | None) -> np.ndarray:
    """Bounded activation: clip to [0, upper]; with `bits`, round to 2^b levels j * upper/(2^b - 1)."""
    a = np.clip(np.asarray(a, dtype=np.float32), np.float32(0), np.float32(upper))
    if bits is None:
        return a
    step = activation_step(upper, bits)
    return (np.rint(a / step) * step).astype(np.float32)


def activation_step(upper, bits: int) -> np.float32:
    """Step of the bounded activation's grid: float32(upper) / (2^bits - 1) in float32."""
    return np.float32(np.float32(upper) / np.float32((1 << int(bits)) - 1))


def uniform_step(x, bits: int, mode: str = "max", percentile: float = 99.9) -> np.float32:
    """Per-tensor step of the uniform grid from max |x| or a percentile of |x| (float32)."""
    a = np.abs(np.asarray(x, dtype=np.float32)).ravel()
    if a.size == 0:
        raise BayesimError("cannot compute a quantization range of an empty tensor")
    if bits == 1:
        return np.float32(a.mean())
    if mode == "percentile":
        r = np.float32(np.percentile(a.astype(np.float64), percentile))
    else:
        r = np.float32(a.max())
    return np.float32(r / np.float32(max_level(bits)))


# ------------------------------------------------------------------ torch versions (identical values)

def _torch():
    import torch

    return torch


def quantize_uniform_t(x, step, bits: int):
    """torch version of `quantize_uniform` (no gradient); `step` a float or 0-d tensor."""
    torch = _torch()
    step = torch.as_tensor(step, dtype=torch.float32)
    if bits == 1:
        return torch.where(x >= 0, step, -step)
    if not float(step) > 0:
        return torch.zeros_like(x)
    k = max_level(bits)
    return torch.clamp(torch.round(x / step), -k, k) * step


def quantize_log_t(sigma, sigma_max, bits: int):
    """torch version of `quantize_log` (no gradient)."""
    torch = _torch()
    zero = (1 << int(bits)) - 1
    smax = torch.as_tensor(sigma_max, dtype=torch.float32)
    table = torch.from_numpy(log_levels(float(smax), bits)).to(sigma.device)
    if not float(smax) > 0:
        return torch.zeros_like(sigma)
    r = sigma / smax
    m, e = torch.frexp(r)
    e = e.to(torch.int64)
    k = torch.where(m >= float(_SQRT_HALF), -e, -e + 1)
    k = torch.where(r >= 1, torch.zeros_like(k), k)
    k = torch.where((r <= 0) | (k > zero - 1), torch.full_like(k, zero), k)
    return table[k]


def quantize_sigma_t(sigma, sigma_max, bits: int, kind: str = "log"):
    """torch version of `quantize_sigma` (no gradient)."""
    torch = _torch()
    if kind != "uniform":
        return quantize_log_t(sigma, sigma_max, bits)
    smax = torch.as_tensor(sigma_max, dtype=torch.float32)
    if not float(smax) > 0:
        return torch.zeros_like(sigma)
    step = smax / float((1 << int(bits)) - 1)
    return torch.clamp(torch.round(sigma / step), 0, (1 << int(bits)) - 1) * step


def quantize_activation_t(a, upper, bits: int | None):
    """torch version of `quantize_activation` (no gradient); `upper` a float or 0-d tensor."""
    torch = _torch()
    upper = torch.as_tensor(upper, dtype=torch.float32)
    a = torch.minimum(torch.clamp(a, min=0.0), upper)
    if bits is None:
        return a
    step = upper / float((1 << int(bits)) - 1)
    return torch.round(a / step) * step


def _round_ste(x):
    return x + (_torch().round(x) - x).detach()


def uniform_ste(x, step, bits: int):
    """Uniform quantizer with a straight-through gradient (to x inside the range, LSQ-style to step).

    Forward values equal `quantize_uniform_t(x, step, bits)`.
    """
    torch = _torch()
    if bits == 1:
        sign = torch.where(x >= 0, 1.0, -1.0).detach()
        return sign * step + (x - x.detach())
    k = max_level(bits)
    v = torch.clamp(x / step, -k, k)
    return _round_ste(v) * step


def log_ste(sigma, sigma_max, bits: int, kind: str = "log"):
    """Sigma quantizer (log, or uniform for the ablation) with an identity straight-through gradient."""
    q = quantize_sigma_t(sigma.detach(), sigma_max.detach() if hasattr(sigma_max, "detach") else sigma_max, bits,
                         kind)
    return sigma + (q - sigma).detach()


def activation_ste(a, upper, bits: int | None):
    """Bounded (clipped) activation with optional b-bit quantization and STE rounding.

    The gradient flows to `a` inside [0, upper] and, when `upper` is learnable, to it for clipped
    values (PACT).
    """
    torch = _torch()
    a = torch.clamp(a, min=0.0)
    a = torch.minimum(a, upper) if isinstance(upper, torch.Tensor) else torch.clamp(a, max=float(upper))
    if bits is None:
        return a
    step = upper / float((1 << int(bits)) - 1)
    return _round_ste(a / step) * step
