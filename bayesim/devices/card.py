"""Device cards: the YAML schema of a device and its validation.

A card names a device, the model it uses and that model's parameters, in uS and s:

    name: pcm_ibm
    model: pcm                       # built-in | path/to/file.py:ClassName | entry-point name
    source: "Nandakumar et al. 2018; Joshi et al. 2020; aihwkit PCMLikeNoiseModel"
    range: {g_min_uS: 0.0, g_max_uS: 25.0}
    programming: {model: polynomial, coeffs_uS: [0.26348, 1.9650, -1.1731]}
    read: {model: pcm}
    drift: {model: pcm}
    faults: {stuck_at_gmin: 0.0, stuck_at_gmax: 0.0}
    d2d: {relative: 0.0, absolute_uS: 0.0}
    sources: {programming.coeffs_uS: "Joshi 2020, Methods / aihwkit pcm.py"}
    assumptions: [faults]

Built-in models are preset compositions (see `bayesim.devices.composed.PRESETS`); a card overrides any
component. A component given with the preset's `model` (or without `model`) is merged key by key into
the preset's; one with another `model` replaces it. Plug-in models receive `params` as keyword arguments.
All validation happens here, before any simulation, with errors naming the file and the key.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np

from bayesim.config.schema import build, load_yaml, spec, with_path
from bayesim.errors import ConfigError


def poly_sigma(coeffs, g_rel):
    """sum_k c_k * g_rel^k (uS), clipped at 0: the aihwkit polynomial in g normalised to g_max."""
    g_rel = np.asarray(g_rel, np.float64)
    s = np.zeros_like(g_rel)
    p = np.ones_like(g_rel)
    for c in coeffs:
        s = s + c * p
        p = p * g_rel
    return np.maximum(s, 0.0)


#: Sanity bound of every conductance and conductance std a card gives (uS), as for range.g_max_uS: it
#: catches a slipped exponent, not an unusual device.
MAX_US = 1e5


def _check_coeffs(coeffs) -> None:
    for i, c in enumerate(coeffs):
        if abs(c) > MAX_US:
            raise ConfigError(f"{c!r} is out of range; allowed [-{MAX_US:g}, {MAX_US:g}] uS", key=f"coeffs_uS[{i}]")


@dataclass(frozen=True)
class RangeSpec:
    """Conductance range (uS) and level options."""
    g_min_uS: Optional[float] = spec(None, lo=0.0, hi=MAX_US, doc="lowest programmable conductance")
    g_max_uS: Optional[float] = spec(None, lo=0.0, lo_open=True, hi=MAX_US, doc="highest programmable conductance")
    log_min_uS: Optional[float] = spec(None, lo=0.0, lo_open=True, hi=MAX_US,
                                       doc="lowest level of log spacing (default g_min; must be > 0)")
    levels_uS: Optional[list[float]] = spec(None, doc="the device's own measured levels (ascending)")
    n_levels: Optional[int] = spec(None, lo=2, hi=1 << 16, doc="published number of programmable levels")
    clip: str = spec("range", choices=("range", "nonnegative"),
                     doc="range: clip programmed/read values to [g_min, g_max]; nonnegative: to [0, inf) "
                         "(aihwkit PCM convention)")

    def validate(self):
        if self.levels_uS is not None:
            if len(self.levels_uS) < 2:
                raise ConfigError(f"needs at least 2 levels, got {len(self.levels_uS)}", key="levels_uS")
            if any(b <= a for a, b in zip(self.levels_uS, self.levels_uS[1:])):
                raise ConfigError("levels must be strictly ascending", key="levels_uS")


@dataclass(frozen=True)
class ProgrammingSpec:
    """Programming (cycle-to-cycle) noise: none, polynomial sigma(G) or a measured table."""
    model: Literal["none", "polynomial", "table"] = "none"
    coeffs_uS: list[float] = spec([], doc="sigma = max(sum_k c_k (G/g_max)^k, 0) uS")
    file: Optional[str] = spec(None, doc="CSV (target_uS,mean_uS,std_uS or target_uS,sample_uS), "
                                         "relative to the card")

    def validate(self):
        if self.model == "polynomial" and not self.coeffs_uS:
            raise ConfigError("polynomial programming noise needs coeffs_uS", key="coeffs_uS")
        _check_coeffs(self.coeffs_uS)
        if self.model == "table" and not self.file:
            raise ConfigError("table programming noise needs file", key="file")


@dataclass(frozen=True)
class ReadSpec:
    """Read noise: none, polynomial sigma(G) (constant in time) or PCM 1/f growing with log time."""
    model: Literal["none", "polynomial", "pcm"] = "none"
    coeffs_uS: list[float] = spec([], doc="sigma = max(sum_k c_k (G/g_max)^k, 0) uS")
    q_coeff: float = spec(0.0088, lo=0.0, hi=10.0,
                          doc="pcm: q_s = min(q_coeff / max((G/g_max)^q_exponent, 1e-3), q_max)")
    q_exponent: float = spec(0.65, lo=0.0, hi=10.0)
    q_max: float = spec(0.2, lo=0.0, hi=10.0)
    t_pulse_s: float = spec(250e-9, lo=0.0, lo_open=True, hi=1.0, doc="pcm: read duration of the 1/f fit, s")
    t0_s: float = spec(20.0, lo=0.0, hi=1e10, doc="pcm: time between programming and first read, s")

    def validate(self):
        if self.model == "polynomial" and not self.coeffs_uS:
            raise ConfigError("polynomial read noise needs coeffs_uS", key="coeffs_uS")
        _check_coeffs(self.coeffs_uS)


@dataclass(frozen=True)
class DriftSpec:
    """Drift G(t) = G_prog ((t + t0)/t0)^-nu with a per-cell exponent nu."""
    model: Literal["none", "power_law", "pcm"] = "none"
    nu: float = spec(0.0, lo=0.0, hi=1.0, doc="power_law: mean drift exponent")
    nu_std: float = spec(0.0, lo=0.0, hi=1.0, doc="power_law: device-to-device std of nu")
    t0_s: float = spec(20.0, lo=0.0, lo_open=True, hi=1e10, doc="time of the first read after programming, s")


@dataclass(frozen=True)
class FaultSpec:
    """Stuck-at faults: fractions of cells stuck at g_min and at g_max (fixed per cell)."""
    stuck_at_gmin: float = spec(0.0, lo=0.0, hi=1.0)
    stuck_at_gmax: float = spec(0.0, lo=0.0, hi=1.0)

    def validate(self):
        if self.stuck_at_gmin + self.stuck_at_gmax > 1.0:
            raise ConfigError("stuck_at_gmin + stuck_at_gmax must not exceed 1", key="stuck_at_gmax")


@dataclass(frozen=True)
class D2DSpec:
    """Device-to-device variation, fixed per cell: target -> target*(1 + relative*z1) + absolute_uS*z2."""
    relative: float = spec(0.0, lo=0.0, hi=10.0, doc="relative std of the cell gain")
    absolute_uS: float = spec(0.0, lo=0.0, hi=MAX_US, doc="std of the cell offset, uS")


COMPONENTS = ("range", "programming", "read", "drift", "faults", "d2d")


@dataclass(frozen=True)
class DeviceCard:
    """A device card (YAML) after validation; `path` is the file it came from (None for presets)."""
    name: str
    model: str
    source: str = spec("", doc="literature source of the numbers")
    description: str = ""
    range: RangeSpec = field(default_factory=RangeSpec)
    programming: ProgrammingSpec = field(default_factory=ProgrammingSpec)
    read: ReadSpec = field(default_factory=ReadSpec)
    drift: DriftSpec = field(default_factory=DriftSpec)
    faults: FaultSpec = field(default_factory=FaultSpec)
    d2d: D2DSpec = field(default_factory=D2DSpec)
    effects: list[str] = spec([], doc="effects the card models (informational)")
    sources: dict[str, str] = spec({}, doc="dotted key -> citation (paper, table/figure)")
    assumptions: list[str] = spec([], doc="dotted keys whose numbers are assumptions, not sourced")
    params: dict[str, Any] = spec({}, doc="keyword arguments of a plug-in model")
    path: Optional[str] = field(default=None, init=False, compare=False)  # the card file, set by load_card

    def validate(self):
        if not self.name.strip():
            raise ConfigError("must not be empty", key="name")


def _merge(preset: dict, card: dict, section: str, source: str) -> dict:
    """Merge one component section of a card onto the preset's."""
    base = preset.get(section, {})
    over = card.get(section)
    if over is None:
        return copy.deepcopy(base)
    if not isinstance(over, dict):
        raise ConfigError(f"expected a mapping, got {type(over).__name__} {over!r}", source, section)
    if "model" in over and over["model"] != base.get("model", over["model"]):
        return dict(over)
    return {**copy.deepcopy(base), **over}


def build_card(data: dict, source: str = "<dict>", presets: dict | None = None) -> DeviceCard:
    """Validate a card mapping into a `DeviceCard` (presets: built-in compositions by model name)."""
    from bayesim.devices.composed import PRESETS

    presets = PRESETS if presets is None else presets
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping, got {type(data).__name__}", source)
    model = data.get("model")
    if model is None:
        raise ConfigError("required key is missing (a built-in name, path/file.py:Class or entry point)",
                          source, "model")
    if not isinstance(model, str):
        raise ConfigError(f"expected a string, got {model!r}", source, "model")
    merged = dict(data)
    if model in presets:
        for sec in COMPONENTS:
            merged[sec] = _merge(presets[model], data, sec, source)
        if "params" in data and data["params"]:
            raise ConfigError(f"built-in model {model!r} takes no params; set its components "
                              f"({', '.join(COMPONENTS)})", source, "params")
    else:
        present = [s for s in COMPONENTS if s in data]
        if present:
            from bayesim.devices.registry import is_plugin_ref, unknown_model

            if not is_plugin_ref(model):  # most likely a misspelt built-in
                raise unknown_model(model, source)
            raise ConfigError(f"model {model!r} is a plug-in: pass its parameters under params, not "
                              f"{present[0]!r}", source, present[0])
    card = build(DeviceCard, merged, source=source)
    if model in presets:
        _check_physics(card, source)
    return card


def _check_physics(card: DeviceCard, source: str) -> None:
    """Checks that need several sections: range order, sigma >= 0 over the range, table files."""
    r = card.range
    table = None
    if card.programming.model == "table":
        table = load_table(resolve_file(card.programming.file, source), source, "programming.file")
    g_min = r.g_min_uS if r.g_min_uS is not None else (float(table.levels[0]) if table else None)
    g_max = r.g_max_uS if r.g_max_uS is not None else (float(table.levels[-1]) if table else None)
    if g_min is None:
        raise ConfigError("required key is missing (uS)", source, "range.g_min_uS")
    if g_max is None:
        raise ConfigError("required key is missing (uS)", source, "range.g_max_uS")
    if g_min >= g_max:
        raise ConfigError(f"g_min_uS ({g_min}) must be below g_max_uS ({g_max})", source, "range.g_min_uS")
    if r.log_min_uS is not None and not r.log_min_uS < g_max:
        raise ConfigError(f"log_min_uS ({r.log_min_uS}) must be below g_max_uS ({g_max})", source,
                          "range.log_min_uS")
    if table is not None and (table.levels[0] < g_min or table.levels[-1] > g_max):
        raise ConfigError(f"the table's targets [{table.levels[0]}, {table.levels[-1]}] uS must lie in [g_min_uS, "
                          f"g_max_uS] = [{g_min}, {g_max}]", source, "programming.file")
    if table is not None:
        _check_table_values(table, g_min, g_max, card.programming.file, source)
    if r.levels_uS is not None and (r.levels_uS[0] < g_min or r.levels_uS[-1] > g_max):
        raise ConfigError(f"levels must lie in [g_min_uS, g_max_uS] = [{g_min}, {g_max}]", source,
                          "range.levels_uS")
    g_rel = np.linspace(g_min / g_max, 1.0, 1001)
    for sec in ("programming", "read"):
        comp = getattr(card, sec)
        if comp.model == "polynomial":
            s = np.zeros_like(g_rel)
            p = np.ones_like(g_rel)
            for c in comp.coeffs_uS:
                s, p = s + c * p, p * g_rel
            if np.any(s < 0):
                bad = g_rel[np.argmax(s < 0)] * g_max
                raise ConfigError(f"sigma is negative ({s.min():.4g} uS) at G = {bad:.4g} uS; sigma must be "
                                  f">= 0 over [g_min_uS, g_max_uS]", source, f"{sec}.coeffs_uS")


def _check_table_values(table: "MeasuredTable", g_min: float, g_max: float, name: str, source: str) -> None:
    """Measured values a device could have given: a slipped unit (nS for uS) is refused, not simulated. Every
    level's mean lies within g_max of its target, every raw sample within g_max of the range [g_min, g_max]
    (a stuck cell may read anywhere in it, an instrument offset a little outside; the card's clip then
    applies), and every std is at most g_max: never more than the device's whole conductance scale."""
    key = "programming.file"
    targets, means = table.levels, table.levels + table.offset
    bad = np.flatnonzero(np.abs(means - targets) > g_max)
    if bad.size:
        i = int(bad[0])
        raise ConfigError(f"{name}: the measured mean at target {float(targets[i]):g} uS is {float(means[i]):g} uS, "
                          f"further from its target than the whole scale g_max_uS = {g_max:g} (wrong units?)",
                          source, key)
    if table.has_samples:
        vals = table.levels[np.repeat(np.arange(table.levels.size), table.count)] + table.dev_sorted
        out = np.flatnonzero((vals < g_min - g_max) | (vals > 2 * g_max))
        if out.size:
            raise ConfigError(f"{name}: a measured sample of {float(vals[out[0]]):g} uS lies further than the whole "
                              f"scale g_max_uS = {g_max:g} outside [{g_min:g}, {g_max:g}] uS (wrong units?)", source, key)
    wide = np.flatnonzero(table.std > g_max)
    if wide.size:
        i = int(wide[0])
        raise ConfigError(f"{name}: the std at target {table.levels[i]:g} uS is {table.std[i]:g} uS, more than the "
                          f"whole scale g_max_uS = {g_max:g} (wrong units?)", source, key)


def resolve_file(name: str, card_source: str) -> Path:
    """A file named in a card, relative to the card's folder."""
    p = Path(name).expanduser()
    if not p.is_absolute() and card_source not in ("<dict>", "") and not card_source.startswith("<"):
        p = Path(card_source).parent / p
    return p


@dataclass(frozen=True)
class MeasuredTable:
    """A measured programming table: levels (uS) with offset (mean - target) and std, or raw samples."""
    levels: np.ndarray           # float64 [L] ascending
    offset: np.ndarray           # float64 [L] mean - target, uS
    std: np.ndarray              # float64 [L] uS
    dev_sorted: Optional[np.ndarray] = None  # float64 flat sorted deviations (sample - target) per level
    start: Optional[np.ndarray] = None       # int64 [L] offset of each level's block in dev_sorted
    count: Optional[np.ndarray] = None       # int64 [L]

    @property
    def has_samples(self) -> bool:
        return self.dev_sorted is not None


def load_table(path: Path, card_source: str = "<dict>", key: str = "programming.file") -> MeasuredTable:
    """Read a CSV with header `target_uS,mean_uS,std_uS` (one row per level) or `target_uS,sample_uS`
    (many rows per level). Errors name the CSV and the row."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"table file {path} is a folder, not a file", card_source, key)
    if not path.is_file():
        raise ConfigError(f"table file {path} not found", card_source, key)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a spreadsheet's byte-order mark is not part of the header
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file", card_source, key) from None
    numbered = [(i, ln.strip()) for i, ln in enumerate(text.splitlines(), start=1)]
    numbered = [(i, ln) for i, ln in numbered if ln and not ln.startswith("#")]
    lines = [ln for _, ln in numbered]
    if not lines:
        raise ConfigError(f"{path}: empty table", card_source, key)
    header = [h.strip() for h in lines[0].split(",")]
    kinds = {("target_uS", "mean_uS", "std_uS"): "meanstd", ("target_uS", "sample_uS"): "samples"}
    kind = kinds.get(tuple(header))
    if kind is None:
        raise ConfigError(f"{path}: header must be 'target_uS,mean_uS,std_uS' or 'target_uS,sample_uS', "
                          f"got {lines[0]!r}", card_source, key)
    rows = []
    for i, ln in numbered[1:]:
        parts = ln.split(",")
        try:
            vals = [float(x) for x in parts]
        except ValueError:
            raise ConfigError(f"{path}: line {i}: not a number in {ln!r}", card_source, key) from None
        if len(vals) != len(header) or not all(np.isfinite(vals)):
            raise ConfigError(f"{path}: line {i}: expected {len(header)} finite numbers, got {ln!r}",
                              card_source, key)
        if max(abs(v) for v in vals) > MAX_US:
            raise ConfigError(f"{path}: line {i}: {ln!r} is out of range; conductances and stds are at most "
                              f"{MAX_US:g} uS", card_source, key)
        if kind == "meanstd" and vals[2] < 0:
            raise ConfigError(f"{path}: line {i}: negative std_uS {vals[2]}", card_source, key)
        rows.append(vals)
    a = np.asarray(rows, np.float64).reshape(-1, len(header))
    if kind == "meanstd":
        order = np.argsort(a[:, 0], kind="stable")
        a = a[order]
        if np.any(np.diff(a[:, 0]) <= 0):
            raise ConfigError(f"{path}: target_uS values must be distinct", card_source, key)
        levels, offset, std = a[:, 0], a[:, 1] - a[:, 0], a[:, 2]
        tab = MeasuredTable(levels, offset, std)
    else:
        levels, inv, count = np.unique(a[:, 0], return_inverse=True, return_counts=True)
        if np.any(count < 2):
            raise ConfigError(f"{path}: every target needs at least 2 samples", card_source, key)
        order = np.lexsort((a[:, 1], inv))
        dev = (a[order, 1] - a[order, 0])
        start = np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64)
        offset = np.array([dev[s:s + c].mean() for s, c in zip(start, count)])
        std = np.array([dev[s:s + c].std(ddof=0) for s, c in zip(start, count)])
        tab = MeasuredTable(levels, offset, std, dev, start, count.astype(np.int64))
    if tab.levels.size < 2:
        raise ConfigError(f"{path}: needs at least 2 levels, got {tab.levels.size}", card_source, key)
    if tab.levels[0] < 0:
        raise ConfigError(f"{path}: negative target conductance {tab.levels[0]}", card_source, key)
    return tab


def load_card(path) -> DeviceCard:
    """Read and validate a card file."""
    p = Path(path)
    data = load_yaml(p, cls=DeviceCard)
    card = build_card(data, source=str(p))
    return with_path(card, str(p))
