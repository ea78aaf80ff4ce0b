"""The experiment configuration: what `bayesim run CONFIG.yaml` reads.

A plain typed dataclass tree built and validated in one place (`load_experiment`); the simulation
core only sees these objects, never YAML or argparse.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from bayesim.config import apply_overrides, build, load_yaml, spec
from bayesim.errors import ConfigError

SPLITS = ("mnist", "ambiguous", "ood")


@dataclass(frozen=True)
class ModelSpec:
    """Which trained network to run: the shipped default, a bayesim checkpoint, or a Pyro import."""

    source: Literal["default", "checkpoint", "pyro"] = "default"
    path: Optional[str] = spec(None, doc="checkpoint (.safetensors) or Pyro parameter-store file")
    arch: Optional[Literal["mlp", "lenet5"]] = spec(None, doc="architecture of a Pyro checkpoint")

    def validate(self):
        if self.source != "default" and not self.path:
            raise ConfigError(f"model.source {self.source!r} needs model.path", key="path")
        if self.source == "pyro" and not self.arch:
            raise ConfigError("model.source 'pyro' needs model.arch (mlp or lenet5)", key="arch")


@dataclass(frozen=True)
class DataSpec:
    """Which test splits, from where, how many examples, how normalised."""

    dir: Optional[str] = spec(None, doc="data folder (default: $BAYESIM_DATA, else the user cache)")
    splits: list[Literal["mnist", "ambiguous", "ood"]] = spec(default_factory=lambda: list(SPLITS))
    limit: Optional[int] = spec(None, lo=1, doc="first N examples of each split")
    normalization: Literal["mnist", "own"] = "mnist"
    embedded: Optional[bool] = spec(None, doc="true: the shipped subset; null: full data when present")

    def validate(self):
        if not self.splits:
            raise ConfigError("at least one split is needed", key="splits")
        if len(set(self.splits)) != len(self.splits):
            raise ConfigError("splits are repeated", key="splits")


@dataclass(frozen=True)
class Bits:
    """Bit widths: stored mean and sigma (VPQ/JQ), sampled weight (SPQ/JQ), activations,
    and optional overrides of the crossbar card's DAC / ADC resolution (null = card value)."""

    mu: int = spec(4, lo=1, hi=16)
    sigma: int = spec(4, lo=1, hi=16)
    w: int = spec(4, lo=1, hi=16)
    act: Optional[int] = spec(None, lo=1, hi=16)
    dac: Optional[int] = spec(None, lo=1, hi=16)
    adc: Optional[int] = spec(None, lo=1, hi=16)


@dataclass(frozen=True)
class HardwareSpec:
    """How the network meets hardware: strategy, bits, random source, device and crossbar cards."""

    strategy: Literal["fp", "vpq", "spq", "jq"] = "jq"
    bits: Bits = field(default_factory=Bits)
    sigma_quantizer: Literal["log", "uniform"] = "log"
    sampler: Literal["digital", "device"] = "digital"
    device: str = spec("pcm", doc="device name, card path (.yaml) or plug-in name")
    crossbar: str = spec("default", doc="crossbar card name or path (.yaml)")
    read_time_s: float = spec(1.0, lo=0.0, doc="time between programming and reading, s")
    lumped: Literal["auto", "on", "off"] = spec(
        "auto", doc="lumped output-noise fast path where exact (auto: not for fp, the software reference)")


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "experiment"
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    hardware: HardwareSpec = field(default_factory=HardwareSpec)
    samples: int = spec(32, lo=1, hi=100000, doc="Monte-Carlo weight samples S")
    seed: int = spec(0, lo=0, hi=2**63 - 1)
    batch_size: int = spec(1000, lo=1, doc="examples per forward chunk")
    software_reference: bool = spec(True, doc="also evaluate the FP32 software model and report deltas")


def load_experiment(path: str | Path | None = None, overrides=(), base: dict | None = None) -> ExperimentConfig:
    """Read, override (`key.path=value`) and validate an experiment config. Raises ConfigError."""
    source = str(path) if path is not None else "<config>"
    mapping = load_yaml(path) if path is not None else dict(base or {})
    mapping = apply_overrides(mapping, overrides, source=f"{source} (--set)")
    cfg = build(ExperimentConfig, mapping, source=source)
    # Relative paths in a config file are relative to that file.
    if path is not None and cfg.model.path and not Path(cfg.model.path).is_absolute():
        cand = Path(path).parent / cfg.model.path
        if cand.exists():
            from dataclasses import replace
            cfg = replace(cfg, model=replace(cfg.model, path=str(cand)))
    return cfg
