"""Bayesian network architectures: `mlp` (784-100-100-10 by default) and `lenet5`.

A `BayesNet` is a flat sequence of modules (Bayesian layers, activations, max-pooling, flatten) that
maps [N, 1, 28, 28] images to logits [N, C]; `export_ops()` freezes it into `bayesim.bnn.ops`.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from bayesim.bnn.config import ActivationConfig, ModelConfig, QuantConfig
from bayesim.bnn.layers import Activation, BayesConv2d, BayesLinear, _BayesLayer
from bayesim.bnn.ops import FlattenOp, MaxPoolOp, Op


class BayesNet(nn.Module):
    """A mean-field Gaussian BNN built from a `ModelConfig`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        q, p, r = cfg.quant, cfg.prior_sigma, cfg.init_rho
        act = cfg.activation
        mods: list[nn.Module] = []
        if cfg.arch == "mlp":
            mods.append(nn.Flatten())
            dims = [784, *cfg.widths]
            for a, b in zip(dims[:-1], dims[1:]):
                mods += [BayesLinear(a, b, q, p, r), Activation(act)]
            mods.append(BayesLinear(dims[-1], cfg.num_classes, q, p, r))
        elif cfg.arch == "lenet5":
            mods += [BayesConv2d(1, 6, 5, padding=2, quant=q, prior_sigma=p, init_rho=r), Activation(act),
                     nn.MaxPool2d(2, 2),
                     BayesConv2d(6, 16, 5, quant=q, prior_sigma=p, init_rho=r), Activation(act),
                     nn.MaxPool2d(2, 2), nn.Flatten(),
                     BayesLinear(400, 120, q, p, r), Activation(act),
                     BayesLinear(120, 84, q, p, r), Activation(act),
                     BayesLinear(84, cfg.num_classes, q, p, r)]
        else:  # guarded by the config
            raise ValueError(cfg.arch)
        self.layers = nn.ModuleList(mods)

    @property
    def bayes_layers(self) -> list[_BayesLayer]:
        return [m for m in self.layers if isinstance(m, _BayesLayer)]

    def forward(self, x, weights=None):
        """Logits; `weights` = [(w, b)] per Bayesian layer, or None to draw them (training path)."""
        i = 0
        for m in self.layers:
            if isinstance(m, _BayesLayer):
                x = m(x, None if weights is None else weights[i])
                i += 1
            else:
                x = m(x)
        return x

    def kl(self):
        return sum(m.kl() for m in self.bayes_layers)

    @property
    def n_weights(self) -> int:
        return sum(m.n_weights for m in self.bayes_layers)

    def set_quant(self, quant: QuantConfig, calibrate: bool = True):
        """Switch strategy / bits (post-training quantization); freezes ranges from the parameters."""
        self.cfg = replace(self.cfg, quant=quant)
        for m in self.bayes_layers:
            m.set_quant(quant)
            if calibrate:
                m.calibrate()

    def activation_uppers(self) -> list[float]:
        """The clip level of every activation layer (learned ones included)."""
        return [float(m.upper.item()) for m in self.layers if isinstance(m, Activation)]

    def set_activation(self, act: ActivationConfig, uppers: list[float] | None = None):
        """Replace the hidden activation (post-training ablation); `uppers` per activation layer."""
        self.cfg = replace(self.cfg, activation=act)
        acts = [m for m in self.layers if isinstance(m, Activation)]
        if uppers is not None and len(uppers) != len(acts):
            raise ValueError(f"{len(uppers)} clip levels for {len(acts)} activation layers")
        with torch.no_grad():
            for i, m in enumerate(acts):
                m.cfg = act
                m.upper.fill_(float(act.upper if uppers is None else uppers[i]))
                m.upper.requires_grad_(bool(act.learn_upper))

    def calibrate(self, keep_learned: bool = False):
        """Freeze every layer's quantizer ranges from its parameters (see `_BayesLayer.calibrate`)."""
        for m in self.bayes_layers:
            m.calibrate(keep_learned)

    def export_ops(self) -> list[Op]:
        """The frozen network as plain numpy ops in execution order (see `bayesim.bnn.ops`)."""
        ops: list[Op] = []
        for m in self.layers:
            if isinstance(m, (BayesLinear, BayesConv2d, Activation)):
                ops.append(m.export())
            elif isinstance(m, nn.MaxPool2d):
                ops.append(MaxPoolOp(int(m.kernel_size), int(m.stride)))
            elif isinstance(m, nn.Flatten):
                ops.append(FlattenOp())
            else:  # pragma: no cover
                raise TypeError(type(m).__name__)
        return ops


def build_model(cfg: ModelConfig, calibrate: bool = True) -> BayesNet:
    """A freshly initialised network for `cfg` (ranges calibrated from the initial parameters)."""
    model = BayesNet(cfg)
    if calibrate:
        model.calibrate()
    return model


@torch.no_grad()
def activation_upper_from_data(model: BayesNet, x, percentile: float = 99.99) -> list[float]:
    """Percentile of each hidden pre-activation (mean weights) on `x`: a clip level for a bounded activation."""
    import numpy as np

    h = torch.as_tensor(x, dtype=torch.float32)
    uppers = []
    for m in model.layers:
        if isinstance(m, (BayesLinear, BayesConv2d)):
            h = m(h, (m.mu_w, m.mu_b))
        elif isinstance(m, Activation):
            uppers.append(float(np.percentile(torch.relu(h).numpy().ravel(), percentile)))
            h = torch.relu(h)
        else:
            h = m(h)
    return uppers
