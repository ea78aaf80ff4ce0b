"""Model configuration: everything needed to rebuild a Bayesian network from a checkpoint.

Built from YAML / JSON through `bayesim.config.schema.build`, so bad values give a ConfigError that
names the file and the key.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal, Optional

from bayesim.config.schema import spec
from bayesim.errors import ConfigError

STRATEGIES = ("fp", "vpq", "spq", "jq")
ARCHS = ("mlp", "lenet5")
MAX_CLASSES = 10_000  # sane upper bounds: a checkpoint's metadata must not ask for terabytes of weights
MAX_WIDTH = 65_536
MAX_HIDDEN_LAYERS = 256


@dataclass(frozen=True)
class ActivationConfig:
    """Hidden activation: plain ReLU, or bounded (clip to [0, upper]) with optional b-bit levels."""
    kind: Literal["relu", "bounded"] = "relu"
    upper: float = spec(1.0, lo=0.0, lo_open=True, doc="clip level of the bounded activation")
    learn_upper: bool = False
    bits: Optional[int] = spec(None, lo=1, hi=16, doc="activation bits (bounded only); null = full precision")

    def validate(self):
        if self.bits is not None and self.kind != "bounded":
            raise ConfigError("activation bits need kind 'bounded' (a ReLU has no upper end to quantize)",
                              key="bits")
        if self.learn_upper and self.kind != "bounded":
            raise ConfigError("learn_upper needs kind 'bounded'", key="learn_upper")


@dataclass(frozen=True)
class QuantConfig:
    """Strategy and bit widths (mu, sigma, sampled weight) with the range rule of the uniform grids."""
    strategy: Literal["fp", "vpq", "spq", "jq"] = "fp"
    mu_bits: int = spec(8, lo=1, hi=16)
    sigma_bits: int = spec(8, lo=1, hi=16)
    w_bits: int = spec(8, lo=1, hi=16)
    sigma_quantizer: Literal["log", "uniform"] = spec("log", doc="log (power-of-two) grid, or uniform (ablation)")
    range: Literal["max", "percentile", "learned"] = "max"
    percentile: float = spec(99.9, lo=50.0, hi=100.0)
    w_range_sigmas: float = spec(3.0, lo=0.0, doc="SPQ grid covers max(|mu| + n*sigma)")

    @property
    def quantize_stored(self) -> bool:
        return self.strategy in ("vpq", "jq")

    @property
    def quantize_sampled(self) -> bool:
        return self.strategy in ("spq", "jq")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture, activation, prior, quantization and the data normalisation the model expects."""
    arch: Literal["mlp", "lenet5"] = "mlp"
    widths: list[int] = field(default_factory=lambda: [100, 100],  # item_md: the range of each width
                              metadata={"doc": "mlp hidden widths", "item_md": {"lo": 1, "hi": MAX_WIDTH}})
    num_classes: int = spec(10, lo=2, hi=MAX_CLASSES)
    activation: ActivationConfig = field(default_factory=ActivationConfig)
    prior_sigma: float = spec(1.0, lo=1e-4, hi=1e4, doc="std of the Gaussian prior (a KL that float32 can hold)")
    init_rho: float = spec(-5.5, lo=-30.0, hi=10.0,
                           doc="initial rho; sigma = softplus(rho) (from ~1e-13 to ~10)")
    quant: QuantConfig = field(default_factory=QuantConfig)
    normalization: Literal["mnist", "own"] = "mnist"

    def validate(self):
        if self.arch == "mlp" and (not self.widths or any(w < 1 for w in self.widths)):
            raise ConfigError("mlp widths must be a non-empty list of positive integers", key="widths")
        if len(self.widths) > MAX_HIDDEN_LAYERS:
            raise ConfigError(f"{len(self.widths)} hidden layers; allowed at most {MAX_HIDDEN_LAYERS}", key="widths")

    def with_quant(self, **kw) -> "ModelConfig":
        return replace(self, quant=replace(self.quant, **kw))
