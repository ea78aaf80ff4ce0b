"""Typed dataclass <- YAML mapping with validation and did-you-mean suggestions.

Declare a config as a dataclass; constrain fields with `spec(...)`:

    @dataclass(frozen=True)
    class Adc:
        bits: int = spec(8, lo=1, hi=16, doc="ADC resolution")
        mode: str = spec("max", choices=("max", "percentile"))

`build(Adc, {"bits": 6}, source="crossbars/x.yaml", key="adc")` validates and returns `Adc(6, "max")`.
Errors are `ConfigError` naming the file, the dotted key and what is allowed.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from bayesim._io import not_regular
from bayesim.errors import BayesimError, ConfigError

_MISSING = dataclasses.MISSING


#: Every float the simulation uses is float32: a nonzero float must lie in its normal range.
FLOAT32_TINY = 1.1754943508222875e-38   # numpy.finfo(numpy.float32).tiny
FLOAT32_MAX = 3.4028234663852886e+38    # numpy.finfo(numpy.float32).max
_TINY_TEXT, _MAX_TEXT = "1.1755e-38", "3.4028e+38"  # rounded inward, so the printed bounds are accepted
INT64_MAX = 2**63 - 1


def spec(default=_MISSING, *, lo=None, hi=None, lo_open=False, hi_open=False, choices=None, doc="",
         default_factory=_MISSING, pattern=None, pattern_doc=""):
    """A dataclass field with validation metadata (range [lo, hi], open ends, allowed choices, and for
    strings a regular expression `pattern` the whole value must match, described by `pattern_doc`)."""
    md = {"lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open, "choices": choices, "doc": doc,
          "pattern": pattern, "pattern_doc": pattern_doc}
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=md)
    if default is _MISSING:
        return dataclasses.field(metadata=md)
    if isinstance(default, (list, dict, set)):
        d = default
        return dataclasses.field(default_factory=lambda: type(d)(d), metadata=md)
    return dataclasses.field(default=default, metadata=md)


class _DuplicateKey(yaml.YAMLError):
    """Raised by `_UniqueKeyLoader`; `load_yaml` turns it into a ConfigError naming the file."""

    def __init__(self, key: str, mark, first_mark):
        self.key = key
        self.where, self.first = f"line {mark.line + 1}", f"line {first_mark.line + 1}"
        if mark.line == first_mark.line:  # a flow mapping on one line: the columns tell them apart
            self.where += f", column {mark.column + 1}"
            self.first += f", column {first_mark.column + 1}"
        super().__init__(f"{key}: duplicate key at {self.where} (first given at {self.first})")


#: Limits of a YAML document: nesting depth (aliases included), values once aliases are expanded (a few
#: nested aliases can stand for billions of values: the "billion laughs"), characters of one scalar (PyYAML
#: reads a long sexagesimal number in quadratic time). Cards and configs are far below all three.
YAML_MAX_DEPTH = 64
YAML_MAX_VALUES = 1_000_000
YAML_MAX_SCALAR = 65_536
YAML_MAX_BYTES = 1 << 20  # a card or config is a few KB; PyYAML takes ~20 s for 10 MB before any check


class _TooLarge(yaml.YAMLError):
    """A document beyond the YAML_MAX_* limits; `load_yaml` names the file."""


def _children(node) -> list:
    if isinstance(node, yaml.MappingNode):
        return [c for kv in node.value for c in kv]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_size(root) -> None:
    """Refuse a node graph deeper than YAML_MAX_DEPTH, expanding (aliases counted at every use) to more than
    YAML_MAX_VALUES values, with a scalar longer than YAML_MAX_SCALAR characters, or with an alias inside
    the node it names (a recursive structure), before anything is constructed. Iterative depth-first
    search: each node's height and expanded size once, from its children's."""
    done: dict[int, tuple[int, int]] = {}  # id -> (height, values)
    path: set[int] = set()  # the nodes being visited: an alias to one of them is a cycle
    stack = [(root, False)]
    while stack:
        node, finish = stack.pop()
        nid = id(node)
        kids = _children(node)
        if finish:
            path.discard(nid)
            height = 1 + max((done[id(c)][0] for c in kids), default=0)
            values = 1 + sum(done[id(c)][1] for c in kids)
            if height > YAML_MAX_DEPTH:
                raise _TooLarge(f"nested deeper than {YAML_MAX_DEPTH} levels")
            if values > YAML_MAX_VALUES:
                raise _TooLarge(f"more than {YAML_MAX_VALUES:,} values once its aliases (*name) are expanded")
            done[nid] = (height, values)
            continue
        if nid in done:
            continue
        if isinstance(node, yaml.ScalarNode) and len(node.value) > YAML_MAX_SCALAR:
            raise _TooLarge(f"a value of {len(node.value):,} characters (at most {YAML_MAX_SCALAR:,})")
        path.add(nid)
        stack.append((node, True))
        for c in kids:
            if id(c) in path:
                raise _TooLarge("an alias (*name) inside the node it names: a recursive structure")
            if id(c) not in done:
                stack.append((c, False))


def _show(value, limit: int = 80) -> str:
    """repr(value) for a message, cut to `limit` characters (a value can be huge)."""
    try:
        r = repr(value)
    except ValueError:  # an int beyond Python's digit limit for str()
        return f"an integer of {int(value.bit_length() * 0.30103) + 1} digits"
    except RecursionError:
        return "a deeply nested value"
    return r if len(r) <= limit else r[:limit - 4] + " ..."


class _UniqueKeyLoader(yaml.SafeLoader):
    """The safe loader, but a key repeated in one mapping is an error (PyYAML lets the last one win)."""

    def construct_document(self, node):
        _check_size(node)
        self._key_paths = {}
        self._index_paths(node)
        return super().construct_document(node)

    def _index_paths(self, root) -> None:
        """id(mapping node) -> its dotted key path, for the error message (anchors: first path wins)."""
        stack = [(root, "")]
        while stack:
            node, path = stack.pop()
            if id(node) in self._key_paths:
                continue
            self._key_paths[id(node)] = path
            children = []
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    sub = k.value if isinstance(k, yaml.ScalarNode) else "?"
                    children.append((v, _join(path, str(sub))))
            elif isinstance(node, yaml.SequenceNode):
                children = [(v, _join(path, i)) for i, v in enumerate(node.value)]
            stack.extend(reversed(children))  # depth first in document order

    def compose_scalar_node(self, anchor):
        """PyYAML's, marking a scalar that was resolved from its plain text (no explicit tag such as `!!str`):
        only such a scalar can be a YAML 1.2 number that YAML 1.1 read as a string (see PlainExponent)."""
        event = self.peek_event()
        node = super().compose_scalar_node(anchor)
        node.resolved = event.tag in (None, "!")
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` merges; explicit keys override
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: the base constructor reports it
                    continue
                if first is not key_node:
                    path = _join(getattr(self, "_key_paths", {}).get(id(node), ""), str(key))
                    raise _DuplicateKey(path, key_node.start_mark, first.start_mark)
        return super().construct_mapping(node, deep=deep)


#: A YAML 1.2 float in exponent notation (2e1, 1.5e3, .5E-2): YAML 1.1, which PyYAML reads, needs a dot and a
#: signed exponent (2.0e+1), so it gives these as strings.
_EXPONENT_NUMBER = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+")


class PlainExponent(str):
    """A plain (unquoted) YAML scalar written as a number in exponent notation that YAML 1.1 reads as a string
    (`2e1`). It is the str it always was everywhere; a plug-in's params take it as the number it is written as,
    while a quoted '2e1' or a tagged `!!str 2e1` stays a plain str, so they can be told apart after loading."""


def _construct_str(loader, node):
    value = loader.construct_scalar(node)
    if node.style is None and getattr(node, "resolved", False) and _EXPONENT_NUMBER.fullmatch(value.strip()):
        return PlainExponent(value)
    return value


_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:str", _construct_str)

#: Plain numbers YAML 1.1 (PyYAML) reads otherwise than a reader expects: 010 is octal 8, 1:00 is base 60 (60).
#: _OCTAL is YAML 1.1's octal int (its int regex's `[-+]?0[0-7_]+`; 08 is no int but a string there).
_OCTAL = re.compile(r"[-+]?0[0-7_]+")
_SEXAGESIMAL = re.compile(r"[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?")


class _AmbiguousNumber(yaml.YAMLError):
    """A plain number whose YAML 1.1 value is not the one it looks like (see _construct_number); `key` is its
    dotted key path in the document (None for a top-level value or a mapping key)."""

    def __init__(self, message: str, mark, key: str | None = None):
        super().__init__(message)
        self.message, self.mark, self.key = message, mark, key


def _construct_number(loader, node):
    """int / float as PyYAML reads them, but a plain 010 (YAML 1.1: octal 8) or 1:00 (YAML 1.1: base 60, 60) is
    refused rather than silently read as a number the user did not write; hex 0x10 and 1_000 stay allowed.

    An octal of value 0 (00, 0_, -0_0) is allowed: YAML 1.1's `_` is a digit separator (as in 1_000), PyYAML
    reads it as 0, and zero is zero in any base, so it is the number it looks like."""
    text = str(node.value).strip()
    base = yaml.constructor.SafeConstructor
    read = base.construct_yaml_int if node.tag.endswith(":int") else base.construct_yaml_float
    value = read(loader, node)
    if node.style is None and getattr(node, "resolved", False):
        key = getattr(loader, "_key_paths", {}).get(id(node)) or None
        if _SEXAGESIMAL.fullmatch(text):
            raise _AmbiguousNumber(f"{text} is a base-60 number in YAML 1.1 (= {value}); write the value as a plain "
                                   "number (or quote it for a string)", node.start_mark, key)
        if _OCTAL.fullmatch(text) and value != 0:
            raise _AmbiguousNumber(f"{text} is an octal number in YAML 1.1 (= {value}); write it without the leading "
                                   "zero (or quote it for a string)", node.start_mark, key)
    return value


_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:int", _construct_number)
_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:float", _construct_number)


def safe_load(text: str):
    """`yaml.safe_load` that refuses duplicate keys (a `yaml.YAMLError` naming the key path and lines)."""
    loader = _UniqueKeyLoader(text)
    try:
        return loader.get_single_data()
    except RecursionError:  # PyYAML composes nested nodes recursively
        raise _TooLarge(f"nested deeper than {YAML_MAX_DEPTH} levels") from None
    except ValueError as e:  # e.g. an integer beyond Python's 4300-digit conversion limit
        raise _TooLarge(f"a value cannot be read ({str(e).split(';')[0]})") from None
    finally:
        loader.dispose()


def _allowed_keys(cls) -> str:
    return ", ".join(f.name for f in dataclasses.fields(cls) if f.init)


def load_yaml(path: str | os.PathLike, cls=None) -> dict:
    """Read a YAML file (safe loader) whose top level must be a non-empty mapping without repeated keys.

    `cls` (a config dataclass) only improves the message for an empty file (it lists its keys).
    """
    p = Path(path)
    if p.is_dir():
        raise ConfigError("is a folder, not a file", source=str(p))
    if (odd := not_regular(p)):
        raise ConfigError(f"{odd}; expected a YAML file", source=str(p))
    if not p.is_file():
        raise ConfigError("file not found", source=str(p))
    try:
        size = p.stat().st_size
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror or e}", source=str(p)) from None
    if size > YAML_MAX_BYTES:
        raise ConfigError(f"refused: {size:,} bytes; a card or config is at most {YAML_MAX_BYTES:,}", source=str(p))
    try:
        data = safe_load(p.read_text(encoding="utf-8"))
    except _DuplicateKey as e:
        raise ConfigError(f"duplicate key at {e.where} (first given at {e.first}); "
                          "each key may appear once", source=str(p), key=e.key) from None
    except _AmbiguousNumber as e:
        raise ConfigError(f"at line {e.mark.line + 1}, column {e.mark.column + 1}: {e.message}",
                          source=str(p), key=e.key) from None
    except _TooLarge as e:
        raise ConfigError(f"refused: {e}", source=str(p)) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"malformed YAML{where}: {problem}", source=str(p)) from None
    except UnicodeDecodeError:
        raise ConfigError("not a UTF-8 text file", source=str(p)) from None
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror or e}", source=str(p)) from None
    if data is None or data == {}:
        keys = f"with keys {_allowed_keys(cls)}" if cls is not None and dataclasses.is_dataclass(cls) \
            else "of keys (key: value lines)"
        raise ConfigError(f"empty; expected a mapping {keys}", source=str(p))
    if not isinstance(data, dict):
        raise ConfigError(f"top level must be a mapping of keys, got {type(data).__name__}", source=str(p))
    return data


def card_files(folder: str | os.PathLike) -> list[Path]:
    """The card files of one folder: its *.yaml / *.yml entries that are regular files (a link to one counts),
    sorted. A folder, a dangling link or another non-file of such a name is no card: it is skipped with a
    one-line warning (once per entry and process), so that it neither takes a card's name nor hides one."""
    d = Path(folder)
    if not d.is_dir():
        return []
    out = []
    for p in sorted([*d.glob("*.yaml"), *d.glob("*.yml")]):
        if p.is_file():
            out.append(p)
            continue
        what = ("a folder" if p.is_dir() else "a link to nothing" if p.is_symlink() and not p.exists()
                else "not a regular file")
        _warn_once(("skipped", str(p)), f"{p}: skipped: {what}, not a card (a card is a .yaml / .yml file)")
    return out


_WARNED: set = set()


def _warn_once(key, message: str) -> None:
    """warnings.warn(message) the first time `key` is seen in this process: the card folders are searched again
    by every lookup and listing, and the user needs to read a warning once."""
    import warnings

    if key in _WARNED:
        return
    _WARNED.add(key)
    warnings.warn(message, UserWarning, stacklevel=3)


def _own_name(p: Path) -> str | None:
    """The `name:` a card file gives itself, or None where it cannot be read (loading it reports why)."""
    try:
        name = load_yaml(p).get("name")
    except ConfigError:
        return None
    return name if isinstance(name, str) and 0 < len(name) <= 128 else None


class CardIndex(dict):
    """Card name -> file (`find_named_cards`), with what the choice passed over:

    shadowed: name -> the files of the same name in folders searched later (a user's card takes a shipped card's
    place: intended, and listed by `bayesim devices`);
    ambiguous: name -> (the file chosen, another file the name could mean, how that one has it: "name" for two
    cards of one folder that give the same name, "stem" for a card whose file stem is another card's own name,
    which wins).
    """

    def __init__(self):
        super().__init__()
        self.shadowed: dict[str, list[Path]] = {}
        self.ambiguous: dict[str, tuple[Path, Path, str]] = {}

    def warn_ambiguous(self, name: str) -> None:
        """Warn (once per process) when `name` could mean two files, naming both and the one taken."""
        if name not in self.ambiguous:
            return
        chosen, other, how = self.ambiguous[name]
        if how == "stem":
            why = (f"it is the name of {chosen} and the file stem of {other} (a card named {_own_name(other)!r}); a "
                   "card's own name wins over a file stem")
        else:
            why = f"{chosen} and {other} both give it as their name; the first file (sorted) wins"
        _warn_once(("ambiguous", name, str(chosen), str(other)),
                   f"card name {name!r} is ambiguous: {why}: using {chosen} (give the other by its path)")

    def with_shadow_note(self, error: BayesimError, name: str, shipped: str | os.PathLike | None = None):
        """`error` (loading the card file `name` gives) with `shadow_note` added, of the same kind (a
        ConfigError keeps its source and key); None where there is no note to add."""
        note = self.shadow_note(name, shipped)
        if not note:
            return None
        if isinstance(error, ConfigError):
            return ConfigError(error.message + note, error.source, error.key)
        return BayesimError(f"{error}{note}")

    def shadow_note(self, name: str, shipped: str | os.PathLike | None = None) -> str:
        """'; F.yaml takes the place of the shipped card NAME (FILE) ...' for a message about the card file `name`
        gives, when that file replaces a card of the same name in a folder searched later (the `shipped` folder:
        said so), else ''."""
        if name not in self or name not in self.shadowed:
            return ""
        other = self.shadowed[name][0]
        whose = "shipped " if shipped is not None and Path(shipped).resolve() in other.resolve().parents else ""
        return (f"; {self[name].name} takes the place of the {whose}card {name!r} ({other}), as a card of that "
                f"name in a folder searched first: fix it, or rename or move it to use the {whose}card")


def find_named_cards(folders) -> CardIndex:
    """Card name -> file over several folders (`card_files` of each; a folder listed twice counts once).

    A card's own `name:` names it first, over all the folders: the first folder with a card of that name wins
    (a user's folder listed before the shipped one overrides a shipped card of the same name). A file stem is
    only a fallback name: it names its card where no card of any folder gives that name. A card whose `name:`
    cannot be read (malformed, or no name) is named by its stem, as its own name (loading it reports what is
    wrong; a broken user card of a shipped card's file name then says so rather than silently vanishing).
    """
    found = CardIndex()
    seen: list[Path] = []
    entries = []  # (folder number, file, its own name or None)
    for d in folders:
        d = Path(d).resolve()
        if d in seen:
            continue
        seen.append(d)
        entries += [(len(seen), p, _own_name(p)) for p in card_files(d)]
    where: dict[str, int] = {}
    for i, p, own in entries:
        name = own or p.stem
        if name not in found:
            found[name], where[name] = p, i
        elif where[name] == i:  # two cards of one folder give the same name: the first file (sorted) wins
            found.ambiguous.setdefault(name, (found[name], p, "name"))
        else:
            found.shadowed.setdefault(name, []).append(p)
    for i, p, own in entries:  # file stems, where no card gives the name
        if own is None or p.stem == own:
            continue
        if p.stem not in found:
            found[p.stem], where[p.stem] = p, i
        elif i <= where[p.stem] and found[p.stem] != p:  # the stem's card would have come first by folder order
            found.ambiguous.setdefault(p.stem, (found[p.stem], p, "stem"))
    return found


def _join(key: str, sub: str | int) -> str:
    if isinstance(sub, int):
        return f"{key}[{sub}]"
    return f"{key}.{sub}" if key else str(sub)


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp, source: str, key: str, md: dict | None = None):
    md = md or {}
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"must not be empty; expected {_type_name(tp)}", source, key)
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, source, key, md)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(f"expected {_type_name(tp)}, got {_show(value)}", source, key)
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if isinstance(value, bool):  # YAML 1.1 reads a bare on/off (yes/no) as true/false
            value = next((w for w in (("on", "yes", "true") if value else ("off", "no", "false")) if w in allowed),
                         value)
        if value not in allowed:
            shown = (f"{str(value).lower()} (a bare yes/no/on/off/true/false is a boolean in YAML)"
                     if isinstance(value, bool) else _show(value))
            raise ConfigError(f"{shown} is not allowed; choose one of {', '.join(map(repr, allowed))}"
                              + _suggest(value, allowed), source, key)
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value, source=source, key=key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"expected a list, got {type(value).__name__} {_show(value)}", source, key)
        (item_tp, *rest) = typing.get_args(tp) or (Any,)
        out = [_convert(v, item_tp, source, _join(key, i), md.get("item_md")) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"expected a mapping, got {type(value).__name__}", source, key)
        _kt, vt = typing.get_args(tp) or (str, Any)
        return {str(k): _convert(v, vt, source, _join(key, str(k))) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"expected true or false, got {_show(value)}", source, key)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise ConfigError(f"expected an integer, got {_show(value)}", source, key)
        if not -INT64_MAX - 1 <= value <= INT64_MAX:
            raise ConfigError(f"{_show(value)} is out of range; integers must fit in 64 bits", source, key)
        _check_range(value, md, source, key)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, str):
                try:
                    value = float(value)  # YAML 1.1 reads "1e-6" as a string
                except ValueError:
                    raise ConfigError(f"expected a number, got {_show(value)}", source, key) from None
            else:
                raise ConfigError(f"expected a number, got {_show(value)}", source, key)
        try:
            value = float(value)
        except OverflowError:  # an integer beyond any float
            raise ConfigError(f"must be a finite number, got {_show(value)}", source, key) from None
        if not math.isfinite(value):
            raise ConfigError(f"must be a finite number, got {_show(value)}", source, key)
        _check_range(value, md, source, key)  # first: the field's own range is the more precise message
        if value != 0.0 and not FLOAT32_TINY <= abs(value) <= FLOAT32_MAX:
            limit = f">= {_TINY_TEXT}" if abs(value) < FLOAT32_TINY else f"<= {_MAX_TEXT}"
            raise ConfigError(f"{_show(value)} is not representable in float32 (the simulation's precision); allowed: "
                              f"{'0 or ' if _in_range(0.0, md) else ''}a value in {_range_text(md)} of magnitude "
                              f"{limit}", source, key)
        return value
    if tp is str:
        if isinstance(value, bool):
            raise ConfigError(f"expected a string, got {str(value).lower()} (a bare yes/no/on/off/true/false is a "
                              "boolean in YAML; quote it)", source, key)
        if not isinstance(value, str):
            raise ConfigError(f"expected a string, got {_show(value)}", source, key)
        ch = md.get("choices")
        if ch and value not in ch:
            raise ConfigError(f"{_show(value)} is not allowed; choose one of {', '.join(map(repr, ch))}"
                              + _suggest(value, ch), source, key)
        pat = md.get("pattern")
        if pat and not re.fullmatch(pat, value):
            raise ConfigError(f"{_show(value)} is not allowed; {md.get('pattern_doc') or f'must match {pat}'}",
                              source, key)
        return value
    return value


def _in_range(value, md) -> bool:
    """Whether `value` lies in the field's [lo, hi] range (open ends as declared)."""
    lo, hi = md.get("lo"), md.get("hi")
    if lo is not None and (value < lo or (md.get("lo_open") and value == lo)):
        return False
    return not (hi is not None and (value > hi or (md.get("hi_open") and value == hi)))


def _range_text(md) -> str:
    """The field's range as an interval, e.g. "(0.0, inf)" (an open end where the bound is excluded)."""
    lo, hi = md.get("lo"), md.get("hi")
    lb = "(" if lo is None or md.get("lo_open") else "["
    rb = ")" if hi is None or md.get("hi_open") else "]"
    return f"{lb}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{rb}"


def _check_range(value, md, source, key):
    bad = not _in_range(value, md)
    ch = md.get("choices")
    if ch and value not in ch:
        raise ConfigError(f"{_show(value)} is not allowed; choose one of {', '.join(map(repr, ch))}", source, key)
    if bad:
        raise ConfigError(f"{_show(value)} is out of range; allowed {_range_text(md)}", source, key)


def _suggest(word, candidates) -> str:
    if not isinstance(word, str):
        return ""
    m = difflib.get_close_matches(word, [str(c) for c in candidates], n=1, cutoff=0.6)
    return f" (did you mean {m[0]!r}?)" if m else ""


def build(cls, mapping: Any, source: str = "<dict>", key: str = ""):
    """Build dataclass `cls` from a mapping, validating every field; unknown keys are errors."""
    if isinstance(mapping, cls):
        return mapping
    if not isinstance(mapping, dict):
        raise ConfigError(f"expected a mapping of keys, got {type(mapping).__name__} {_show(mapping)}",
                          source, key or None)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in mapping if k not in fields]
    if unknown:
        k = str(unknown[0])
        raise ConfigError(f"unknown key; allowed: {', '.join(sorted(fields))}" + _suggest(k, fields),
                          source, _join(key, k))
    kwargs = {}
    for name, f in fields.items():
        sub = _join(key, name)
        if name in mapping:
            kwargs[name] = _convert(mapping[name], hints[name], source, sub, dict(f.metadata))
        elif f.default is _MISSING and f.default_factory is _MISSING:
            raise ConfigError(f"required key is missing ({_type_name(hints[name])})", source, sub)
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if callable(check):
        try:
            check()
        except ConfigError as e:
            if e.source is None:
                raise ConfigError(e.message, source, _join(key, e.key) if e.key else (key or None)) from None
            raise
    return obj


def with_path(card, path: str | None):
    """`card` (a frozen dataclass with an init=False `path` field) with the file it was read from."""
    object.__setattr__(card, "path", path)
    return card


def to_dict(obj) -> Any:
    """Dataclass -> plain dict (for metrics.json / hashing)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def apply_overrides(mapping: dict, overrides, source: str = "--set") -> dict:
    """Return a copy of `mapping` with `key.path=value` overrides applied (values parsed as YAML)."""
    import copy

    out = copy.deepcopy(mapping)
    for item in overrides or ():
        if "=" not in item:
            raise ConfigError(f"expected key.path=value, got {_show(item)}", source)
        path, raw = item.split("=", 1)
        path = path.strip()
        if len(path) > 256:
            raise ConfigError(f"key of {len(path):,} characters ({_show(path, 40)}); keys are short dotted paths",
                              source)
        if len(raw) > YAML_MAX_BYTES:
            raise ConfigError(f"value of {len(raw):,} characters; at most {YAML_MAX_BYTES:,}", source, path)
        keys = path.split(".")
        if not path or any(not k.strip() for k in keys):
            raise ConfigError(f"empty key segment in {_show(item)}; expected key.path=value with dot-separated "
                              "non-empty keys, e.g. hardware.bits.w=3", source)
        keys = [k.strip() for k in keys]
        try:
            value = safe_load(raw)
        except _DuplicateKey as e:
            raise ConfigError(f"duplicate key {e.key!r} in value {_show(raw)}", source, path) from None
        except _TooLarge as e:
            raise ConfigError(f"refused value {_show(raw)}: {e}", source, path) from None
        except _AmbiguousNumber as e:  # inside a mapping value ({w: 010}): the key path inside it too
            sub = "" if not e.key else e.key if e.key.startswith("[") else "." + e.key
            raise ConfigError(e.message, source, path + sub) from None
        except yaml.YAMLError:
            raise ConfigError(f"cannot parse value {_show(raw)}", source, path) from None
        node = out
        for k in keys[:-1]:
            nxt = node.get(k)
            if nxt is None:
                nxt = node[k] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"{k!r} is not a mapping, cannot set {path}", source, path)
            node = nxt
        node[keys[-1]] = value
    return out
