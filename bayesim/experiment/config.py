"""The experiment configuration: what `bayesim run CONFIG.yaml` reads.

A plain typed dataclass tree built and validated in one place (`load_experiment`); the simulation
core only sees these objects, never YAML or argparse.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from bayesim.config import apply_overrides, build, load_yaml, spec
from bayesim._io import not_regular
from bayesim.config.schema import INT64_MAX
from bayesim.errors import ConfigError
from bayesim.paths import beside_config, is_card_path, named_data_dir_problem, searched_folders

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
        if self.source == "default" and (self.path or self.arch):
            key = "path" if self.path else "arch"
            raise ConfigError("is used only with model.source checkpoint or pyro; model.source is 'default' (the "
                              "shipped LeNet-5): set model.source, or leave this key out", key=key)


@dataclass(frozen=True)
class DataSpec:
    """Which test splits, from where, how many examples, how normalised."""

    dir: Optional[str] = spec(None, doc="data folder (default: $BAYESIM_DATA, else the user cache)")
    splits: list[Literal["mnist", "ambiguous", "ood"]] = spec(default_factory=lambda: list(SPLITS))
    limit: Optional[int] = spec(None, lo=1, doc="a seeded random subset of N examples of each split")
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
    dac: Optional[int] = spec(None, lo=1, hi=24, doc="a signed DAC (crossbar card dac.signed) needs >= 2")
    adc: Optional[int] = spec(None, lo=2, hi=24, doc="2^(bits-1)-1 levels per side: 1 bit would have none")


#: A card reference (hardware.device, hardware.crossbar) has a character other than white space: an empty one
#: names no card, and would only fail later as an unknown name.
NON_EMPTY = r"(?s).*\S.*"


@dataclass(frozen=True)
class HardwareSpec:
    """How the network meets hardware: strategy, bits, random source, device and crossbar cards."""

    strategy: Literal["fp", "vpq", "spq", "jq"] = "jq"
    bits: Bits = field(default_factory=Bits)
    sigma_quantizer: Literal["log", "uniform"] = "log"
    sampler: Literal["digital", "device"] = "digital"
    device: str = spec("pcm", doc="device name, card path (.yaml) or plug-in name", pattern=NON_EMPTY,
                       pattern_doc="an empty value names no device: give a device name (pcm), a device card path "
                                   "(.yaml) or a plug-in name")
    crossbar: str = spec("default", doc="crossbar card name or path (.yaml)", pattern=NON_EMPTY,
                         pattern_doc="an empty value names no crossbar card: give a card name (default) or a card "
                                     "path (.yaml)")
    read_time_s: float = spec(1.0, lo=0.0, hi=1e10,
                              doc="time between programming the stored mu/sigma arrays (VPQ/JQ) and reading "
                                  "them, s (<= ~300 years)")
    compute_delay_s: float = spec(1.0, lo=0.0, hi=1e10,
                                  doc="time between programming a sample's cells (SPQ/JQ, the device sampler) "
                                      "and the MVM that reads them, s")
    drift_compensation: Literal["none", "global"] = spec(
        "none", doc="global drift compensation of the stored mu/sigma arrays (VPQ/JQ): one digital gain per "
                    "tile, measured with an all-ones input right after programming and at read_time_s")
    lumped: Literal["off", "on"] = spec(
        "off", doc="on: draw each output's noise once from its exact Gaussian (the local reparameterisation) "
                   "where that is exact (fp/vpq, digital sampler, no IR drop); a second GEMM per sample, so "
                   "slower than the per-cell draws for batches of more than a few rows")


#: An experiment name is the folder out/<name>: one plain path component, never hidden, never "..".
NAME_PATTERN = r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}"


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = spec("experiment", pattern=NAME_PATTERN,
                     pattern_doc="use 1 to 128 letters, digits, '_', '-' or '.', not starting with '.' "
                                 "(it names the output folder out/<name>)")
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    hardware: HardwareSpec = field(default_factory=HardwareSpec)
    samples: int = spec(32, lo=1, hi=100000, doc="Monte-Carlo weight samples S")
    seed: int = spec(0, lo=0, hi=INT64_MAX)
    batch_size: int = spec(1000, lo=1, hi=1_000_000, doc="examples per forward chunk")
    software_reference: bool = spec(True, doc="also evaluate the FP32 software model and report deltas")


def load_experiment(path: str | Path | None = None, overrides=(), base: dict | None = None,
                    source: str | None = None) -> ExperimentConfig:
    """Read, override (`key.path=value`) and validate an experiment config. Raises ConfigError.

    `source` names the config in messages when there is no file (default "<config>").
    Files the config names (device and crossbar card paths, model.path) must exist.
    """
    source = str(path) if path is not None else (source or "<config>")
    mapping = load_yaml(path, cls=ExperimentConfig) if path is not None else dict(base or {})
    mapping = apply_overrides(mapping, overrides, source=f"{source} (--set)")
    try:
        cfg = build(ExperimentConfig, mapping, source=source)
    except ConfigError as e:  # a bad value given with --set: say so
        if e.key and e.source == source and from_set(e.key, overrides):
            raise ConfigError(e.message, f"{source} (--set)", e.key) from None
        raise
    if path is not None:
        cfg = _relative_to_config(cfg, Path(path), overrides)
    check_files(cfg, source, overrides, Path(path) if path is not None else None)
    _warn_unused_quantization(cfg, mapping, source, overrides)
    return cfg


def _warn_unused_quantization(cfg: ExperimentConfig, mapping: dict, source: str, overrides) -> None:
    """Warn about a hardware.bits key (or sigma_quantizer) that the strategy does not quantize with, which would
    otherwise be ignored without a word: fp quantizes no weights, vpq the stored mu and sigma only, spq the
    sampled weights only. Keys given with --set are always checked; keys of the file only when the file names
    the strategy too (a strategy changed with --set leaves the file's other bits as a template, not a mistake)."""
    import warnings

    from bayesim.bnn.config import QuantConfig

    hw = mapping.get("hardware") if isinstance(mapping, dict) else None
    if not isinstance(hw, dict):
        return
    bits = hw.get("bits") if isinstance(hw.get("bits"), dict) else {}
    q = QuantConfig(strategy=cfg.hardware.strategy)
    what = {"fp": "no weights (full precision)", "vpq": "the stored mu and sigma only (bits.mu, bits.sigma)",
            "spq": "the sampled weights only (bits.w)"}.get(q.strategy, "")
    given = [(f"bits.{k}", bits[k]) for k, use in (("mu", q.quantize_stored), ("sigma", q.quantize_stored),
                                                   ("w", q.quantize_sampled)) if k in bits and not use]
    if "sigma_quantizer" in hw and not q.quantize_stored:
        given.append(("sigma_quantizer", hw["sigma_quantizer"]))
    strategy_set = from_set("hardware.strategy", overrides)
    for key, value in given:
        full = f"hardware.{key}"
        if not from_set(full, overrides) and strategy_set:
            continue
        where = f"{source} (--set)" if from_set(full, overrides) else source
        warnings.warn(f"{where}: {full}: {value} has no effect with strategy {q.strategy}: it quantizes {what}; "
                      "the key is ignored", UserWarning, stacklevel=2)


def _relative_to_config(cfg: ExperimentConfig, path: Path, overrides) -> ExperimentConfig:
    """Relative paths in a config file are relative to that file where something of the right kind is there
    (else to the current folder): model.path, data.dir, and card paths of hardware.device / crossbar (a name
    such as "pcm" stays a name; a card path given with --set is the command line's, as on any command line)."""
    from dataclasses import replace

    if (p := beside_config(cfg.model.path, path, Path.exists)):
        cfg = replace(cfg, model=replace(cfg.model, path=p))
    if (p := beside_config(cfg.data.dir, path, Path.is_dir)):
        cfg = replace(cfg, data=replace(cfg.data, dir=p))
    for key in ("device", "crossbar"):
        ref = getattr(cfg.hardware, key)
        if is_card_path(ref) and not from_set(f"hardware.{key}", overrides) \
                and (p := beside_config(ref, path, Path.is_file)):
            cfg = replace(cfg, hardware=replace(cfg.hardware, **{key: p}))
    return cfg


def from_set(key: str, overrides) -> bool:
    """Did the value at dotted `key` come from a `--set key.path=value` override?"""
    set_keys = [str(o).split("=", 1)[0].strip() for o in overrides or ()]
    return any(key == k or key.startswith((k + ".", k + "[")) or k.startswith(key + ".") for k in set_keys)


def check_files(cfg: ExperimentConfig, source: str, overrides=(), config_file: Path | None = None) -> None:
    """Files named by the config exist: a missing one is a ConfigError naming the config and its key
    (`source (--set)` when the key came from a `--set` override) and, for a relative path from the config
    file, both folders it was looked for in (`config_file`'s folder and the current one).

    The path rules are the runner's (`bayesim.paths.is_card_path`): hardware.device and hardware.crossbar are
    card files when they end in .yaml/.yml, have a folder separator or start with ~; otherwise they are names
    (an unknown name is reported by the runner with the known ones).
    """
    def fail(message: str, key: str):
        raise ConfigError(message, f"{source} (--set)" if from_set(key, overrides) else source, key)

    def check(p: Path, key: str, what: str):
        if p.is_dir():
            fail(f"{p} is a folder; expected {what}", key)
        if (odd := not_regular(p.expanduser())):
            fail(f"{p}: {odd}; expected {what}", key)
        if not p.is_file():
            where = ""
            if config_file is not None and not p.expanduser().is_absolute() and not from_set(key, overrides):
                where = searched_folders(p, config_file)
            fail(f"{p}: file not found{where}; expected {what}", key)

    for key, what in (("device", "a device card file (.yaml) or a device name"),
                      ("crossbar", "a crossbar card file (.yaml) or a card name")):
        ref = getattr(cfg.hardware, key)
        if is_card_path(ref) and not ref.lower().endswith((".csv", ".tsv")):  # the runner explains a CSV
            check(Path(ref).expanduser(), f"hardware.{key}", what)
    if cfg.data.dir is not None:
        why = named_data_dir_problem(cfg.data.dir)
        if why:
            fail(f"{Path(cfg.data.dir).expanduser()}: {why}, or null for $BAYESIM_DATA / the user cache", "data.dir")
    if cfg.model.source != "default" and cfg.model.path:
        what = "a bayesim checkpoint (.safetensors)" if cfg.model.source == "checkpoint" \
            else "a Pyro parameter-store file"
        check(Path(cfg.model.path), "model.path", what)
