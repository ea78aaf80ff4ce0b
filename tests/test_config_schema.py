"""The YAML -> dataclass validator every card and config goes through."""
from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from bayesim.config import apply_overrides, build, load_yaml, spec
from bayesim.errors import ConfigError


@dataclass(frozen=True)
class _Adc:
    bits: int = spec(8, lo=1, hi=16)
    mode: Literal["max", "percentile"] = "max"
    range_v: Optional[float] = spec(None, lo=0, lo_open=True)


@dataclass(frozen=True)
class _Card:
    name: str = spec()
    adc: _Adc = field(default_factory=_Adc)
    gains: list[float] = spec(default_factory=list)


def test_builds_nested_with_defaults():
    c = build(_Card, {"name": "x", "adc": {"bits": 6}, "gains": [1, 2.5]})
    assert c == _Card("x", _Adc(6, "max", None), [1.0, 2.5])


@pytest.mark.parametrize("data, text", [
    ({"name": "x", "adc": {"bitz": 6}}, "card.yaml: adc.bitz: unknown key; allowed: bits, mode, range_v (did you mean 'bits'?)"),
    ({"name": "x", "adc": {"bits": 17}}, "card.yaml: adc.bits: 17 is out of range; allowed [1, 16]"),
    ({"name": "x", "adc": {"bits": "8"}}, "adc.bits: expected an integer"),
    ({"adc": {}}, "card.yaml: name: required key is missing"),
    ({"name": "x", "adc": {"mode": "maxx"}}, "did you mean 'max'?"),
    ({"name": "x", "adc": {"range_v": 0}}, "adc.range_v: 0.0 is out of range; allowed (0, inf]"),
    ({"name": "x", "gains": [1, "a"]}, "gains[1]: expected a number"),
    ({"name": "x", "adc": {"range_v": float("nan")}}, "finite"),
])
def test_errors_name_file_key_and_allowed(data, text):
    with pytest.raises(ConfigError) as e:
        build(_Card, data, source="card.yaml")
    assert text in str(e.value)


def test_load_yaml_reports_malformed_file_with_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("a: [1, 2\nb: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: malformed YAML at line"):
        load_yaml(p)
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_yaml(p)
    with pytest.raises(ConfigError, match="file not found"):
        load_yaml(tmp_path / "missing.yaml")


def test_overrides_parse_yaml_values_and_do_not_mutate():
    base = {"hardware": {"bits": {"w": 4}}, "samples": 32}
    out = apply_overrides(base, ["hardware.bits.w=3", "samples=8", "hardware.device=pcm"])
    assert out == {"hardware": {"bits": {"w": 3}, "device": "pcm"}, "samples": 8}
    assert base["hardware"]["bits"]["w"] == 4
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides(base, ["samples"])
