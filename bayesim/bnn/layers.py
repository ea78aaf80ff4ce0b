"""Mean-field Gaussian Bayesian layers and the (bounded) activation, in torch.

Each weight and bias element has a mean mu and sigma = softplus(rho); the prior is N(0, prior_sigma^2)
and the KL divergence of the posterior from it is computed in closed form. The layer also holds the
frozen ranges of its quantizers (`mu_step`, `sigma_max`, `w_step`; see `bayesim.bnn.quant` and
`bayesim.bnn.ops`) so a checkpoint round-trips exactly.

Training draws weights with the torch RNG (one draw per mini-batch) and applies the strategy's
quantizers with straight-through gradients; evaluation passes explicit weights drawn from the
counter-based streams (`bayesim.bnn.predict`).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bayesim.bnn import quant as Q
from bayesim.bnn.config import ActivationConfig, QuantConfig
from bayesim.bnn.ops import ActivationOp, BayesConvOp, BayesLinearOp, LayerQuant


def kl_normal(mu, sigma, prior_sigma: float):
    """Sum of KL(N(mu, sigma^2) || N(0, prior_sigma^2)) over all elements (closed form, nats)."""
    p2 = prior_sigma * prior_sigma
    return (math.log(prior_sigma) - torch.log(sigma) + (sigma * sigma + mu * mu) / (2.0 * p2) - 0.5).sum()


class _BayesLayer(nn.Module):
    """Common parameters, quantizer state and strategy logic of BayesLinear / BayesConv2d."""

    def _init_params(self, w_shape, n_out, fan_in, quant: QuantConfig, prior_sigma: float, init_rho: float):
        self.prior_sigma = float(prior_sigma)
        self.quant = quant
        bound = 1.0 / math.sqrt(fan_in)
        self.mu_w = nn.Parameter(torch.empty(w_shape).uniform_(-bound * math.sqrt(3), bound * math.sqrt(3)))
        self.rho_w = nn.Parameter(torch.full(w_shape, float(init_rho)))
        self.mu_b = nn.Parameter(torch.empty(n_out).uniform_(-bound, bound))
        self.rho_b = nn.Parameter(torch.full((n_out,), float(init_rho)))
        learned = quant.range == "learned"
        self.mu_step = nn.Parameter(torch.zeros(()), requires_grad=learned)
        self.w_step = nn.Parameter(torch.zeros(()), requires_grad=learned)
        self.register_buffer("sigma_max", torch.zeros(()))

    # -- posterior ------------------------------------------------------------------------------
    def sigmas(self):
        return F.softplus(self.rho_w), F.softplus(self.rho_b)

    def kl(self):
        sw, sb = self.sigmas()
        return kl_normal(self.mu_w, sw, self.prior_sigma) + kl_normal(self.mu_b, sb, self.prior_sigma)

    @property
    def n_weights(self) -> int:
        return self.mu_w.numel() + self.mu_b.numel()

    # -- quantizer ranges -----------------------------------------------------------------------
    def set_quant(self, quant: QuantConfig):
        self.quant = quant
        self.mu_step.requires_grad_(quant.range == "learned")
        self.w_step.requires_grad_(quant.range == "learned")

    @torch.no_grad()
    def calibrate(self, keep_learned: bool = False):
        """Freeze the ranges from the current parameters (numpy rule, identical to the hardware's).

        keep_learned: with range "learned", keep the trained steps and only re-anchor sigma_max.
        """
        q = self.quant
        mode = "percentile" if q.range == "percentile" else "max"
        mu = np.concatenate([self.mu_w.detach().cpu().numpy().ravel(), self.mu_b.detach().cpu().numpy().ravel()])
        sw, sb = self.sigmas()
        sig = np.concatenate([sw.cpu().numpy().ravel(), sb.cpu().numpy().ravel()])
        self.sigma_max.fill_(float(sig.max()))
        if keep_learned and q.range == "learned" and float(self.mu_step) > 0 and float(self.w_step) > 0:
            return
        self.mu_step.fill_(float(Q.uniform_step(mu, q.mu_bits, mode, q.percentile)))
        if q.quantize_stored:
            mu = Q.quantize_uniform(mu, self.mu_step.item(), q.mu_bits)
            sig = Q.quantize_sigma(sig, self.sigma_max.item(), q.sigma_bits, q.sigma_quantizer)
        span = np.abs(mu) + np.float32(q.w_range_sigmas) * sig
        self.w_step.fill_(float(Q.uniform_step(span, q.w_bits, mode, q.percentile)))

    @torch.no_grad()
    def _track_ranges(self):
        """QAT: ranges follow the parameters during training (learned steps only start from them)."""
        q = self.quant
        if q.range == "percentile" or (q.range == "learned" and float(self.mu_step) <= 0):
            self.calibrate()
            return
        sw, sb = self.sigmas()
        smax = torch.maximum(sw.max(), sb.max())
        self.sigma_max.copy_(smax)
        if q.range == "learned":
            return
        mu_abs = torch.maximum(self.mu_w.abs().max(), self.mu_b.abs().max())
        self.mu_step.copy_(mu_abs / Q.max_level(q.mu_bits) if q.mu_bits > 1 else
                           torch.cat([self.mu_w.abs().ravel(), self.mu_b.abs().ravel()]).mean())
        mw, mb = self.mu_w, self.mu_b
        if q.quantize_stored:
            mw, mb = Q.quantize_uniform_t(mw, self.mu_step, q.mu_bits), Q.quantize_uniform_t(mb, self.mu_step, q.mu_bits)
            sw = Q.quantize_sigma_t(sw, smax, q.sigma_bits, q.sigma_quantizer)
            sb = Q.quantize_sigma_t(sb, smax, q.sigma_bits, q.sigma_quantizer)
        span = torch.cat([(mw.abs() + q.w_range_sigmas * sw).ravel(), (mb.abs() + q.w_range_sigmas * sb).ravel()])
        self.w_step.copy_(span.max() / Q.max_level(q.w_bits) if q.w_bits > 1 else span.mean())

    # -- weights ----------------------------------------------------------------------------------
    def sample_train(self):
        """One weight draw (torch RNG) with the strategy's quantizers and straight-through gradients."""
        q = self.quant
        sw, sb = self.sigmas()
        mw, mb = self.mu_w, self.mu_b
        if q.strategy != "fp":
            self._track_ranges()
        if q.quantize_stored:
            mw = Q.uniform_ste(mw, self.mu_step, q.mu_bits)
            mb = Q.uniform_ste(mb, self.mu_step, q.mu_bits)
            sw = Q.log_ste(sw, self.sigma_max, q.sigma_bits, q.sigma_quantizer)
            sb = Q.log_ste(sb, self.sigma_max, q.sigma_bits, q.sigma_quantizer)
        w = mw + sw * torch.randn_like(sw)
        b = mb + sb * torch.randn_like(sb)
        if q.quantize_sampled:
            w = Q.uniform_ste(w, self.w_step, q.w_bits)
            b = Q.uniform_ste(b, self.w_step, q.w_bits)
        return w, b

    @torch.no_grad()
    def stored(self):
        """Stored (mu_w, sigma_w, mu_b, sigma_b) as numpy float32, VPQ-quantized for vpq / jq."""
        q = self.quant
        sw, sb = self.sigmas()
        out = [self.mu_w.detach().cpu().numpy(), sw.cpu().numpy(), self.mu_b.detach().cpu().numpy(), sb.cpu().numpy()]
        out = [np.ascontiguousarray(a, dtype=np.float32) for a in out]
        if q.quantize_stored:
            step, smax = self.mu_step.item(), self.sigma_max.item()
            k = q.sigma_quantizer
            out = [Q.quantize_uniform(out[0], step, q.mu_bits), Q.quantize_sigma(out[1], smax, q.sigma_bits, k),
                   Q.quantize_uniform(out[2], step, q.mu_bits), Q.quantize_sigma(out[3], smax, q.sigma_bits, k)]
        return tuple(out)

    def layer_quant(self) -> LayerQuant:
        q = self.quant
        return LayerQuant(strategy=q.strategy, mu_bits=q.mu_bits, mu_step=float(self.mu_step.item()),
                          sigma_bits=q.sigma_bits, sigma_max=float(self.sigma_max.item()), sigma_kind=q.sigma_quantizer,
                          w_bits=q.w_bits, w_step=float(self.w_step.item()))


class BayesLinear(_BayesLayer):
    """y = x W^T + b with W, b mean-field Gaussian."""

    def __init__(self, n_in: int, n_out: int, quant: QuantConfig = QuantConfig(), prior_sigma: float = 1.0,
                 init_rho: float = -5.5):
        super().__init__()
        self.n_in, self.n_out = int(n_in), int(n_out)
        self._init_params((self.n_out, self.n_in), self.n_out, self.n_in, quant, prior_sigma, init_rho)

    def forward(self, x, weights=None):
        w, b = self.sample_train() if weights is None else weights
        return F.linear(x, w, b)

    def export(self) -> BayesLinearOp:
        mw, sw, mb, sb = self.stored()
        return BayesLinearOp(mw, sw, mb, sb, self.layer_quant())


class BayesConv2d(_BayesLayer):
    """2-d convolution (cross-correlation) with mean-field Gaussian kernel and bias."""

    def __init__(self, in_c: int, out_c: int, kernel: int, stride: int = 1, padding: int = 0,
                 quant: QuantConfig = QuantConfig(), prior_sigma: float = 1.0, init_rho: float = -5.5):
        super().__init__()
        self.in_c, self.out_c, self.kernel = int(in_c), int(out_c), int(kernel)
        self.stride, self.padding = int(stride), int(padding)
        self._init_params((self.out_c, self.in_c, self.kernel, self.kernel), self.out_c,
                          self.in_c * self.kernel * self.kernel, quant, prior_sigma, init_rho)

    def forward(self, x, weights=None):
        w, b = self.sample_train() if weights is None else weights
        return F.conv2d(x, w, b, stride=self.stride, padding=self.padding)

    def export(self) -> BayesConvOp:
        mw, sw, mb, sb = self.stored()
        return BayesConvOp(mw, sw, mb, sb, self.stride, self.padding, self.layer_quant())


class Activation(nn.Module):
    """ReLU, or the bounded activation clip(x, 0, upper) with optional b-bit levels (STE in training)."""

    def __init__(self, cfg: ActivationConfig = ActivationConfig()):
        super().__init__()
        self.cfg = cfg
        self.upper = nn.Parameter(torch.tensor(float(cfg.upper)), requires_grad=bool(cfg.learn_upper))

    def forward(self, x):
        if self.cfg.kind == "relu":
            return F.relu(x)
        if self.training:
            return Q.activation_ste(x, self.upper, self.cfg.bits)
        return Q.quantize_activation_t(x, self.upper.detach(), self.cfg.bits)

    def export(self) -> ActivationOp:
        return ActivationOp(kind=self.cfg.kind, upper=float(self.upper.item()), bits=self.cfg.bits)
