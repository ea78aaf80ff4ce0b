"""Finding devices: built-in models, cards (YAML), plug-ins by path and by entry point.

`load_device(name_or_path)` resolves, in order: a card file path (a reference ending in .yaml / .yml, with a
folder separator or starting with ~, `bayesim.paths.is_card_path`); a name registered with `register` (the
built-ins ideal, gaussian, pcm, rram); a card whose `name` matches in the card folders (`cards_dirs` first,
then `devices/` of the working directory, then the repository's: a user's card of a shipped card's name takes
its place), else a card whose file stem matches where no card gives that name; an installed plug-in of the
entry-point group `bayesim.devices`.

A card's `model` is a built-in name, `path/to/file.py:ClassName` (relative to the card) or an entry-point
name; plug-in classes are called with the card's `params` as keyword arguments and must provide the
`DeviceModel` protocol.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from bayesim.config.schema import CardIndex, PlainExponent, card_files, find_named_cards
from bayesim.devices.base import is_device
from bayesim.errors import BayesimError, ConfigError

ENTRY_POINT_GROUP = "bayesim.devices"
_REGISTRY: dict[str, Callable] = {}
_REPO_DEVICES = Path(__file__).resolve().parents[2] / "devices"


def register(name: str, factory: Callable) -> None:
    """Register a device class or factory (called with keyword parameters) under `name`."""
    if not isinstance(name, str) or not name:
        raise BayesimError("device name must be a non-empty string")
    _REGISTRY[name] = factory


def _builtin(model: str):
    def make(**params):
        from bayesim.devices.composed import preset_device

        if params:
            raise ConfigError(f"built-in model {model!r} takes no params; write a card to change it")
        return preset_device(model)
    return make


for _m in ("ideal", "gaussian", "pcm", "rram"):
    register(_m, _builtin(_m))


def card_dirs(extra=()) -> list[Path]:
    """Folders searched for cards, first match first: `extra`, ./devices, then the repository's devices/."""
    out = []
    for d in [*[Path(e) for e in (extra or ())], Path.cwd() / "devices", _REPO_DEVICES]:
        d = d.resolve()
        if d not in out:
            out.append(d)
    for e in extra or ():
        if not Path(e).is_dir():
            raise BayesimError(f"card folder {e} does not exist (or is not a folder)")
    return out


def find_cards(extra=()) -> CardIndex:
    """Card name -> file for every *.yaml / *.yml card file in the card folders (`find_named_cards`): a card's
    own name first, the first folder of `card_dirs` that has it winning; a file stem names its card only where
    no card of any folder gives that name."""
    return find_named_cards(card_dirs(extra))


def _entry_points() -> dict:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _load_entry_point(ep):
    try:
        return ep.load()
    except (Exception, SystemExit) as e:  # a plug-in's sys.exit is its failure, not the command's exit
        raise BayesimError(f"device plug-in {ep.name!r} (entry point {ep.value}) failed to load: "
                           f"{type(e).__name__}: {e}") from e


#: Prefix of the module name a plug-in file is imported under (`load_class_from_path`).
_PLUGIN_MODULE = "bayesim_plugin_"


def load_class_from_path(ref: str, base: str | None = None):
    """`path/to/file.py:ClassName` (relative to folder `base`) -> the class, imported without installing."""
    file, _, cls_name = ref.rpartition(":")
    p = Path(file).expanduser()
    if not p.is_absolute() and base:
        p = Path(base) / p
    if not p.is_file():
        raise BayesimError(f"plug-in file {p} not found")
    mod_name = f"{_PLUGIN_MODULE}{p.stem}_{abs(hash(str(p.resolve())))}"
    mod = sys.modules.get(mod_name)
    if mod is None:
        spec = importlib.util.spec_from_file_location(mod_name, p)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = mod
        try:
            spec.loader.exec_module(mod)
        except (Exception, SystemExit) as e:
            del sys.modules[mod_name]
            raise BayesimError(f"plug-in file {p} failed to import: {type(e).__name__}: {e}") from e
    cls = getattr(mod, cls_name, None)
    if cls is None:
        raise BayesimError(f"plug-in file {p} has no {cls_name!r}")
    if not callable(cls):
        raise BayesimError(f"plug-in file {p}: {cls_name!r} is a {type(cls).__name__}, not a class or factory")
    return cls


def _short(e: BaseException, limit: int = 300) -> str:
    try:
        text = " ".join(str(e).split())
    except Exception:  # noqa: BLE001 - an exception that cannot print itself
        return "(its message cannot be printed)"
    return text if len(text) <= limit else text[:limit - 4] + " ..."


def _param_value(v):
    """A plug-in parameter as written: YAML 1.1 reads an unquoted 2e1 or 1.5e3 (no dot or no exponent sign) as a
    string; it reaches the plug-in as the number it is, as built-in card fields do, inside lists and mappings too.
    A quoted '2e1' or a tagged `!!str 2e1` stays a string."""
    if isinstance(v, PlainExponent):
        f = float(v)
        return f if math.isfinite(f) else str(v)
    if isinstance(v, list):
        return [_param_value(x) for x in v]
    if isinstance(v, dict):
        return {k: _param_value(x) for k, x in v.items()}
    return v


def _check_params(v, key: str, source: str) -> None:
    """No NaN among a plug-in's parameters (inside lists and mappings too): a NaN is a typo or a failed
    computation, never a device property, and a plug-in would carry it into its conductances unnoticed."""
    if isinstance(v, float) and math.isnan(v):
        raise ConfigError("is NaN; a plug-in parameter must be a number, a string, a list or a mapping of "
                          "those, without NaN", source, key)
    if isinstance(v, list):
        for i, x in enumerate(v):
            _check_params(x, f"{key}[{i}]", source)
    elif isinstance(v, dict):
        for k, x in v.items():
            _check_params(x, f"{key}.{k}", source)


def _check_range(dev, source: str) -> None:
    """A device's g_min and g_max: finite numbers of uS with 0 <= g_min < g_max <= MAX_US (a card's bounds)."""
    from bayesim.devices.card import MAX_US

    cls = type(dev).__name__
    vals = {}
    for attr in ("g_min", "g_max"):
        v = getattr(dev, attr)
        ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
        if not ok or not math.isfinite(float(v)) or not 0.0 <= float(v) <= MAX_US:
            raise ConfigError(f"plug-in {cls}.{attr} is {v!r}; it must be a finite number of uS in "
                              f"[0, {MAX_US:g}]", source, "model")
        vals[attr] = float(v)
    if not vals["g_max"] > vals["g_min"]:
        raise ConfigError(f"plug-in {cls}: g_max ({vals['g_max']:g} uS) must exceed g_min ({vals['g_min']:g} uS)",
                          source, "model")


def _instantiate(factory, params: dict, source: str, name: str | None):
    params = {k: _param_value(v) for k, v in params.items()}
    for k, v in params.items():
        _check_params(v, f"params.{k}", source)
    try:
        dev = factory(**params)
    except (TypeError, ValueError) as e:  # a missing/unknown parameter, or a value the plug-in refuses
        raise ConfigError(f"plug-in rejected its parameters: {_short(e)}", source, "params") from None
    except (Exception, SystemExit) as e:  # noqa: BLE001 - any failure of the plug-in's own code, sys.exit too
        raise ConfigError(f"plug-in failed to construct the device: {type(e).__name__}: {_short(e)}", source,
                          "model") from e  # chained: `bayesim --debug` shows the plug-in's own line
    try:
        ok = is_device(dev)
    except (Exception, SystemExit) as e:  # noqa: BLE001 - a property of the plug-in raised
        raise ConfigError(f"plug-in {type(dev).__name__} failed: {type(e).__name__}: {_short(e)}", source,
                          "model") from e
    if not ok:
        def problem(m):
            try:
                v = getattr(dev, m)
            except AttributeError:
                return m
            except (Exception, SystemExit) as e:  # noqa: BLE001 - a raising property
                return f"{m} (raises {type(e).__name__})"
            if m in ("levels", "program", "read", "program_sigma", "read_sigma") and not callable(v):
                return f"{m} (not callable)"
            return None

        missing = [w for w in map(problem, ("name", "g_min", "g_max", "levels", "program", "read", "program_sigma",
                                            "read_sigma")) if w]
        raise ConfigError(f"{type(dev).__name__} does not provide the DeviceModel protocol "
                          f"(missing or broken: {', '.join(missing) or '?'})", source, "model")
    try:
        _check_range(dev, source)
    except ConfigError:
        raise
    except (Exception, SystemExit) as e:  # noqa: BLE001 - a raising g_min / g_max property
        raise ConfigError(f"plug-in {type(dev).__name__} failed: {type(e).__name__}: {_short(e)}", source,
                          "model") from e
    if name:
        try:
            dev.name = name
        except AttributeError:
            pass
    if _kind(factory) != "built-in":
        dev = _check_outputs(dev, source)
    return dev


#: What a plug-in method returns: conductances or stds shaped like argument 0 (levels: [n]), all finite.
_CHECKED = {"program": "conductances", "read": "conductances", "program_sigma": "stds", "read_sigma": "stds",
            "levels": "levels"}


def _output_problem(dev, method: str, what: str, out, want) -> str | None:
    """What is wrong with a plug-in method's return value `out` (a numpy array), or None."""
    from bayesim.devices.card import MAX_US

    got = np.shape(out)
    if got != want:
        return f"shape {got} for an input of shape {want}"
    if not np.issubdtype(out.dtype, np.number) or np.iscomplexobj(out):
        return f"dtype {out.dtype}"
    if not np.isfinite(out).all():
        return f"{int(np.size(out) - np.isfinite(out).sum())} NaN or Inf values"
    if what == "stds" and (out < 0).any():
        return f"{int((out < 0).sum())} negative stds (min {float(np.min(out)):.4g})"
    if what in ("conductances", "levels") and out.size and ((out < 0).any() or (out > MAX_US).any()):
        bad = int(((out < 0) | (out > MAX_US)).sum())
        return (f"{bad} conductances outside [0, {MAX_US:.0e}] uS (min {float(out.min()):.4g}, "
                f"max {float(out.max()):.4g})")
    if method == "levels" and out.size:
        v = out.astype(np.float64)
        if v.size > 1 and (np.diff(v) <= 0).any():
            return "levels that do not strictly ascend"
        lo, hi = float(dev.g_min), float(dev.g_max)
        tol = 1e-6 * max(abs(hi), 1.0)  # a float32 level of a float64 range end
        if v[0] < lo - tol or v[-1] > hi + tol:
            return f"levels {v[0]:.6g} .. {v[-1]:.6g} uS outside its range g_min .. g_max = {lo:g} .. {hi:g} uS"
    return None


_RULE = {"stds": "finite stds >= 0 (uS)", "levels": "strictly ascending levels in [g_min, g_max] (uS)",
         "conductances": "finite conductances in [0, 1e5] uS"}


def _check_outputs(dev, source: str):
    """The plug-in with its methods wrapped, so that a wrong shape, a NaN or an impossible conductance it
    returns stops the run with a message naming the card, instead of a numpy traceback deep in the crossbar or
    NaN predictions; lists come back as numpy arrays. The methods are wrapped on the instance (its class stays
    what it is); a class whose instances take no new attributes (__slots__) is wrapped in a forwarding proxy."""
    def wrap(method: str, what: str, fn):
        def checked(*args, **kwargs):
            try:
                out = fn(*args, **kwargs)
            except BayesimError:
                raise
            except (Exception, SystemExit) as e:  # noqa: BLE001 - the plug-in's own code failed: name it, the card
                raise BayesimError(f"{source}: plug-in {type(dev).__name__}.{method}() failed: "
                                   f"{type(e).__name__}: {_short(e)}") from e
            first = args[0] if args else next(iter(kwargs.values()))
            want = (int(first),) if method == "levels" else np.shape(first)
            try:
                arr = np.asarray(out)
            except (Exception, SystemExit):  # noqa: BLE001 - ragged lists and the like
                arr = np.asarray(None)
            problem = _output_problem(dev, method, what, arr, want)
            if problem:
                raise BayesimError(f"{source}: plug-in {type(dev).__name__}.{method}() returned {problem}; it must "
                                   f"return {_RULE[what]} of its input's shape")
            return arr
        return checked

    methods = {m: wrap(m, what, getattr(dev, m)) for m, what in _CHECKED.items()}
    try:
        for m, fn in methods.items():
            setattr(dev, m, fn)
        return dev
    except AttributeError:  # __slots__ or a read-only attribute
        return _CheckedDevice(dev, methods)


class _CheckedDevice:
    """A plug-in device whose methods cannot be replaced on the instance: every attribute is the device's, but
    the DeviceModel methods are the checked wrappers."""

    def __init__(self, device, methods: dict):
        object.__setattr__(self, "_device", device)
        for m, fn in methods.items():
            object.__setattr__(self, m, fn)

    def __getattr__(self, attr):
        return getattr(object.__getattribute__(self, "_device"), attr)

    def __setattr__(self, attr, value):
        setattr(object.__getattribute__(self, "_device"), attr, value)


def device_class(dev) -> str:
    """`module:qualname` of a device's own class, for a person to read: a plug-in checked through a proxy
    (`_CheckedDevice`, a __slots__ class) is its device's class; a class from a plug-in file is `file.py:qualname`
    (its module name is made up at import, see `load_class_from_path`)."""
    if isinstance(dev, _CheckedDevice):
        dev = object.__getattribute__(dev, "_device")
    cls = type(dev)
    mod = cls.__module__
    if mod.startswith(_PLUGIN_MODULE):
        f = getattr(sys.modules.get(mod), "__file__", None)
        if f:
            return f"{f}:{cls.__qualname__}"
    return f"{mod}:{cls.__qualname__}"


def device_from_card(card) -> object:
    """Build the device a validated `DeviceCard` describes."""
    from bayesim.devices.composed import PRESETS, ComposedDevice

    src = card.path or "<dict>"
    if card.model in PRESETS:
        return ComposedDevice(card)
    if _is_path_ref(card.model):
        base = str(Path(card.path).parent) if card.path else None
        try:
            cls = load_class_from_path(card.model, base)
        except BayesimError as e:
            raise ConfigError(str(e), src, "model") from None
        return _instantiate(cls, dict(card.params), src, card.name)
    if card.model in _REGISTRY:
        return _instantiate(_REGISTRY[card.model], dict(card.params), src, card.name)
    eps = _entry_points()
    if card.model in eps:
        try:
            factory = _load_entry_point(eps[card.model])
        except BayesimError as e:
            raise ConfigError(str(e), src, "model") from e.__cause__
        return _instantiate(factory, dict(card.params), src, card.name)
    raise unknown_model(card.model, src)


def _is_path_ref(model: str) -> bool:
    """`path/to/file.py:ClassName`?"""
    return ":" in model and model.rsplit(":", 1)[0].endswith(".py")


def is_plugin_ref(model: str) -> bool:
    """True when `model` names a plug-in: path/file.py:Class, a registered factory or an entry point."""
    return _is_path_ref(model) or model in _REGISTRY or model in _entry_points()


def unknown_model(model: str, src: str) -> ConfigError:
    """The error for a card whose `model` is neither a built-in nor a plug-in (with a did-you-mean)."""
    import difflib

    from bayesim.devices.composed import PRESETS

    known = [*PRESETS, *_REGISTRY, *_entry_points()]
    m = difflib.get_close_matches(model, known, n=1, cutoff=0.6)
    return ConfigError(f"unknown model {model!r}; use a built-in ({', '.join(PRESETS)}), "
                       f"path/to/file.py:ClassName or an installed entry point"
                       + (f" (did you mean {m[0]!r}?)" if m else ""), src, "model")


def load_device(name_or_card_path, cards_dirs=()) -> object:
    """A `DeviceModel` from a card path, a registered/built-in name, a card name or an entry point."""
    return resolve_device(name_or_card_path, cards_dirs)[0]


def resolve_device(name_or_card_path, cards_dirs=()):
    """(device, card) for `load_device`'s reference: `card` is the validated `DeviceCard` the device was built
    from (its `path` says which file), or None for a registered model or an entry point given by name."""
    from bayesim.devices.card import load_card
    from bayesim.paths import is_card_path, local_path_hint

    ref = str(name_or_card_path)
    p = Path(ref).expanduser()
    if p.suffix.lower() in (".csv", ".tsv") and (p.is_file() or is_card_path(ref)):
        raise ConfigError("a CSV file is a device's measured programming table (or samples), not a device; name "
                          "it in a device card (programming: {model: table, file: ...}, as "
                          "devices/measured_pcm_drift.yaml does) and give that card", str(p))
    if is_card_path(ref):
        card = load_card(p)
        return device_from_card(card), card
    if ref in _REGISTRY:
        return _instantiate(_REGISTRY[ref], {}, f"<{ref}>", None), None
    cards = find_cards(cards_dirs)
    if ref in cards:
        cards.warn_ambiguous(ref)
        try:
            card = load_card(cards[ref])
            return device_from_card(card), card
        except BayesimError as e:  # a user's card that replaced a shipped one: say so (the shipped one seems broken)
            noted = cards.with_shadow_note(e, ref, _REPO_DEVICES)
            if noted is None:
                raise
            raise noted from e.__cause__
    eps = _entry_points()
    if ref in eps:
        return _instantiate(_load_entry_point(eps[ref]), {}, f"<entry point {ref}>", None), None
    import difflib

    known = sorted({*_REGISTRY, *cards, *eps})
    m = difflib.get_close_matches(ref, known, n=1, cutoff=0.6)
    raise BayesimError(f"unknown device {ref!r}; known: {', '.join(known)}"
                       + (f" (did you mean {m[0]!r}?)" if m else "") + "; or give a device card file (.yaml)"
                       + local_path_hint(ref))


def _kind(factory) -> str:
    return "built-in" if getattr(factory, "__qualname__", "").startswith("_builtin") else "registered"


def list_devices(cards_dirs=()) -> list[dict]:
    """Every device found: {name, kind (built-in | registered | card | plug-in), where, source}, and `note`
    where load_device(name) gives something else: a registered model or a card in a folder searched first."""
    from bayesim.config.schema import load_yaml
    from bayesim.devices.card import build_card

    out = []
    for name, f in _REGISTRY.items():
        out.append({"name": name, "kind": _kind(f), "where": "bayesim", "source": ""})
    cards = find_cards(cards_dirs)
    for name in cards.ambiguous:
        cards.warn_ambiguous(name)
    for p in dict.fromkeys(p for d in card_dirs(cards_dirs) for p in card_files(d)):  # a shadowed card too
        name = p.stem
        try:
            d = load_yaml(p)
            src = str(d.get("source", ""))
            name = str(d.get("name") or p.stem)
            build_card(d, source=str(p))  # the whole card's validation (a plug-in is not imported here)
        except ConfigError as e:
            src = f"(invalid card: {e})"
        row = {"name": name, "kind": "card", "where": str(p), "source": src}
        if name in _REGISTRY:  # load_device(name) finds the registered model first
            row["note"] = f"load it by path: the name {name!r} gives the {_kind(_REGISTRY[name])} model"
        elif cards.get(name, p) != p:  # a card of the same name in a folder searched first
            row["note"] = f"load it by path: the name {name!r} gives the card {cards[name]}"
        out.append(row)
    for name, ep in _entry_points().items():
        row = {"name": name, "kind": "plug-in", "where": ep.value, "source": ""}
        if name in _REGISTRY:  # load_device(name), and a card's model: name, find the registered model first
            row["note"] = (f"unreachable: the name {name!r} gives the {_kind(_REGISTRY[name])} model, in a card's "
                           "model: too; rename the entry point")
        elif name in cards:  # load_device(name) finds the card first; a card's model: name is the plug-in
            row["note"] = f"the name {name!r} gives the card {cards[name]}; a card with model: {name} uses the plug-in"
        out.append(row)
    return out
