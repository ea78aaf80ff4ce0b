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
    ({"name": "x", "adc": {"range_v": 0}}, "adc.range_v: 0.0 is out of range; allowed (0, inf)"),
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


# ------------------------------------------------------------------ bad-input audit
def test_duplicate_keys_name_file_key_path_and_line(tmp_path):
    p = tmp_path / "dup.yaml"
    p.write_text("name: a\nhardware:\n  bits: {w: 3}\n  strategy: jq\n  bits: {w: 4}\n")
    with pytest.raises(ConfigError) as e:
        load_yaml(p)
    assert str(e.value).startswith(f"{p}: hardware.bits: duplicate key at line 5 (first given at line 3)")
    p.write_text("l:\n  - {m: 1}\n  - m: 1\n    m: 2\n")
    with pytest.raises(ConfigError, match=r"l\[1\]\.m: duplicate key at line 4"):
        load_yaml(p)
    p.write_text("a: {c: 1, c: 2}\n")  # one line: the columns tell them apart
    with pytest.raises(ConfigError,
                       match=r"a\.c: duplicate key at line 1, column 11 \(first given at line 1, column 5\)"):
        load_yaml(p)
    p.write_text("x: &A {p: 1, q: 2}\ny:\n  <<: *A\n  p: 3\n")  # a merge key is not a duplicate
    assert load_yaml(p) == {"x": {"p": 1, "q": 2}, "y": {"p": 3, "q": 2}}
    p.write_text("a: !!python/object/apply:os.system [echo]\n")  # still the safe loader
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_yaml(p)
    with pytest.raises(ConfigError, match=r"--set: a: duplicate key 'w'"):
        apply_overrides({}, ["a={w: 3, w: 4}"])


@pytest.mark.parametrize("text", ["", "# only a comment\n", "\n\n", "{}\n", "---\n"])
def test_empty_yaml_is_an_error(tmp_path, text):
    p = tmp_path / "empty.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_yaml(p, cls=_Card)
    assert str(e.value) == f"{p}: empty; expected a mapping with keys name, adc, gains"
    with pytest.raises(ConfigError, match="empty; expected a mapping"):
        load_yaml(p)


def test_load_yaml_folder_is_not_a_file(tmp_path):
    with pytest.raises(ConfigError, match="is a folder, not a file"):
        load_yaml(tmp_path)


@pytest.mark.parametrize("item", ["hardware..bits.w=3", ".samples=3", "samples.=3", "=3", "a. .b=1", "samples"])
def test_overrides_reject_empty_key_segments(item):
    with pytest.raises(ConfigError, match="empty key segment|key.path=value"):
        apply_overrides({}, [item])


@pytest.mark.parametrize("value", [1e-300, -1e-300, 1e300, -1e39, 1e-39, 10**400])
def test_floats_must_be_float32_normal(value):
    with pytest.raises(ConfigError) as e:
        build(_Card, {"name": "x", "gains": [1.0, value]}, source="card.yaml")
    msg = str(e.value)
    assert msg.startswith("card.yaml: gains[1]: ")
    assert ("not representable in float32" in msg and ("magnitude >= 1.1755e-38" in msg or "magnitude <= 3.4028e+38"
                                                        in msg)) or "finite" in msg


def test_float32_rule_keeps_zero_and_normal_values():
    c = build(_Card, {"name": "x", "gains": [0.0, 1.2e-38, -3.4e38, 1e-12]})
    assert c.gains == [0.0, 1.2e-38, -3.4e38, 1e-12]


def test_integers_must_fit_64_bits():
    with pytest.raises(ConfigError, match="adc.bits: .* integers must fit in 64 bits"):
        build(_Card, {"name": "x", "adc": {"bits": 10**30}}, source="card.yaml")


def test_string_pattern():
    @dataclass(frozen=True)
    class _Named:
        name: str = spec("a", pattern=r"[a-z]+", pattern_doc="use lowercase letters")

    assert build(_Named, {"name": "abc"}).name == "abc"
    with pytest.raises(ConfigError, match=r"f.yaml: name: 'A1' is not allowed; use lowercase letters"):
        build(_Named, {"name": "A1"}, source="f.yaml")


def test_bare_on_off_in_yaml_mean_the_words_where_the_choices_are_words(tmp_path):
    """YAML 1.1 reads a bare `off` as false: a Literal of "on"/"off" takes it as the word it was written as;
    elsewhere a boolean stays refused."""
    from bayesim.experiment import load_experiment

    (tmp_path / "c.yaml").write_text("name: q\nhardware: {lumped: off}\n")
    assert load_experiment(tmp_path / "c.yaml").hardware.lumped == "off"
    assert load_experiment(tmp_path / "c.yaml", overrides=["hardware.lumped=on"]).hardware.lumped == "on"
    with pytest.raises(ConfigError, match=r"adc.mode: true \(a bare yes/no/on/off/true/false is a boolean in YAML\) "
                                          r"is not allowed; choose one of 'max', 'percentile'"):
        build(_Card, {"name": "x", "adc": {"mode": True}}, source="card.yaml")


def test_float32_message_offers_zero_only_where_the_range_allows_it():
    from bayesim.bnn.train import TrainConfig

    with pytest.raises(ConfigError) as e:
        build(TrainConfig, {"lr": 1e-300}, source="t.yaml")
    assert str(e.value) == ("t.yaml: lr: 1e-300 is not representable in float32 (the simulation's precision); "
                            "allowed: a value in (0.0, inf) of magnitude >= 1.1755e-38")
    with pytest.raises(ConfigError, match=r"allowed: 0 or a value in \(-inf, inf\) of magnitude >= 1.1755e-38$"):
        build(_Card, {"name": "x", "gains": [1e-300]}, source="card.yaml")
    # the printed bounds are accepted: they are rounded inward
    assert build(_Card, {"name": "x", "gains": [1.1755e-38, -3.4028e+38]}).gains == [1.1755e-38, -3.4028e+38]
    # a value outside the field's own range gets that range, not the float32 one
    for mapping, key, value, allowed in (({"lr": -1e-300}, "lr", -1e-300, "(0.0, inf)"),
                                         ({"model": {"prior_sigma": 1e-300}}, "model.prior_sigma", 1e-300,
                                          "[0.0001, 10000.0]")):
        with pytest.raises(ConfigError) as e:
            build(TrainConfig, mapping, source="t.yaml")
        assert str(e.value) == f"t.yaml: {key}: {value!r} is out of range; allowed {allowed}"


def _alias_bomb(levels: int) -> str:
    """`levels` nested aliases, each a list of 10 of the one before: 10**levels values once expanded."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return "\n".join(lines) + f"\nsamples: *a{levels}\n"


def test_alias_bombs_and_deep_nesting_are_refused_before_construction(tmp_path):
    """A 1 KB file of nested aliases stands for 10**9 values: refused with a short message (it took 2 GB
    and printed a 527 MB message before). Deep nesting is refused rather than a RecursionError."""
    import time

    from bayesim.config.schema import YAML_MAX_DEPTH, YAML_MAX_VALUES

    p = tmp_path / "bomb.yaml"
    p.write_text(_alias_bomb(9))
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        load_yaml(p)
    assert str(e.value) == f"{p}: refused: more than {YAML_MAX_VALUES:,} values once its aliases (*name) are expanded"
    assert time.perf_counter() - t0 < 5  # refused from the node graph, not by expanding it
    small = tmp_path / "small.yaml"  # aliases are fine where they stay small
    small.write_text(_alias_bomb(3))
    assert len(load_yaml(small)["samples"]) == 10
    for depth, ok in ((YAML_MAX_DEPTH - 1, True), (YAML_MAX_DEPTH + 1, False), (5000, False)):
        d = tmp_path / f"deep{depth}.yaml"
        d.write_text("samples: " + "[" * depth + "]" * depth + "\n")
        if ok:
            assert "samples" in load_yaml(d)
        else:
            with pytest.raises(ConfigError, match=rf"deep{depth}\.yaml: refused: nested deeper than 64 levels"):
                load_yaml(d)
    with pytest.raises(ConfigError, match=r"c\.yaml: samples: refused value '\[\[.* \.\.\.: nested deeper"):
        apply_overrides({}, ["samples=" + "[" * 500 + "]" * 500], "c.yaml")


def test_aliases_cannot_hide_depth_and_other_unreadable_values_are_refused(tmp_path):
    """Anchors nested 40 deep, each used at the top level before its own anchor is reached: the depth is
    the node's height, whatever order the aliases come in (a 40 x 60-deep chain passed before and crashed
    in repr). Also: a recursive alias, a 5000-digit integer, an 800 KB sexagesimal number."""
    from bayesim.config.schema import YAML_MAX_SCALAR

    lines, inner = [], "[1]"
    for i in range(40):  # a{i} holds a{i-1} one level down, 60 levels deep each: 2400 in all
        inner = "[" * 59 + (f"*a{i - 1}" if i else "1") + "]" * 59
        lines.append(f"d{i}: &a{i} [{inner}]")
    cases = {
        "chain": "\n".join(lines) + "\nsamples: *a39\n",
        "shallow_first": "\n".join(lines) + "\nu: [*a0, *a1, *a2]\nsamples: *a39\n",
        "recursive": "samples: &a [1, *a]\n",
        "bigint": "samples: " + "1" * 5000 + "\n",
        "sexagesimal": "samples: " + ":".join(["1"] * 400_000) + "\n",
    }
    for name, text in cases.items():
        p = tmp_path / f"{name}.yaml"
        p.write_text(text)
        with pytest.raises(ConfigError) as e:
            load_yaml(p)
        msg = str(e.value)
        assert msg.startswith(f"{p}: refused: ") and len(msg) < 300, msg
        assert {"chain": "nested deeper than 64", "shallow_first": "nested deeper than 64",
                "recursive": "recursive structure", "bigint": "4300 digits",
                "sexagesimal": f"at most {YAML_MAX_SCALAR:,}"}[name] in msg, msg
    (tmp_path / "name.yaml").write_text("name: 1e5\n")  # YAML 1.1: a string, as the user meant
    assert load_yaml(tmp_path / "name.yaml") == {"name": "1e5"}


def test_a_huge_value_is_cut_short_in_the_message():
    @dataclass
    class C:
        samples: int = spec(1, lo=1, hi=10)

    with pytest.raises(ConfigError) as e:
        build(C, {"samples": list(range(100000))}, "c.yaml")
    assert len(str(e.value)) < 200 and str(e.value).endswith("...")


def test_a_big_yaml_file_and_a_huge_set_key_are_refused_before_parsing(tmp_path):
    """10 MB of YAML took PyYAML ~20 s and 1.2 GB before any limit could look at it."""
    from bayesim.config.schema import YAML_MAX_BYTES

    p = tmp_path / "big.yaml"
    p.write_text("x: [" + ",".join(["0"] * (YAML_MAX_BYTES // 2 + 1)) + "]\n")
    with pytest.raises(ConfigError, match=rf"big\.yaml: refused: [0-9,]+ bytes; a card or config is at most "
                                          rf"{YAML_MAX_BYTES:,}"):
        load_yaml(p)
    with pytest.raises(ConfigError) as e:
        apply_overrides({}, ["a" * 100000 + "=1"], "c.yaml")
    assert "key of 100,000 characters" in str(e.value) and len(str(e.value)) < 200


@pytest.mark.parametrize("text, problem", [
    ("010", "010 is an octal number in YAML 1.1 (= 8); write it without the leading zero"),
    ("-007", "-007 is an octal number in YAML 1.1 (= -7)"),
    ("1:00", "1:00 is a base-60 number in YAML 1.1 (= 60); write the value as a plain number"),
    ("1:30.5", "1:30.5 is a base-60 number in YAML 1.1 (= 90.5)"),
])
def test_numbers_yaml_1_1_reads_otherwise_than_they_look_are_refused(tmp_path, text, problem):
    """PyYAML reads a plain 010 as octal 8 and 1:00 as base 60: a config that says samples: 010 would run 8.
    Refused in files (line and column named) and in --set values (key named); quoted they stay strings."""
    p = tmp_path / "c.yaml"
    p.write_text(f"name: q\nvalue: {text}\n")
    with pytest.raises(ConfigError, match=rf"c.yaml: value: at line 2, column 8: {__import__('re').escape(problem)}"):
        load_yaml(p)
    with pytest.raises(ConfigError, match=rf"--set: samples: {__import__('re').escape(problem)}"):
        apply_overrides({}, [f"samples={text}"])
    assert apply_overrides({}, [f"a='{text}'"]) == {"a": text}


def test_unambiguous_numbers_keep_their_yaml_values():
    got = apply_overrides({}, ["a=0", "b=-0", "c=0.5", "d=1_000", "e=0x1F", "f=12", "g=0.0", "h=-1.5e+3", "i=.inf"])
    assert got == {"a": 0, "b": 0, "c": 0.5, "d": 1000, "e": 31, "f": 12, "g": 0.0, "h": -1500.0, "i": float("inf")}


def test_an_ambiguous_number_in_a_file_names_its_key(tmp_path):
    """`samples: 010` in a config file: the message names the key path, as a --set value's does (it gave only the
    line and column), inside flow mappings and lists too; a --set value's inner key is added to the --set key."""
    import re

    p = tmp_path / "cfg.yaml"
    for text, want in (("name: q\nsamples: 010\n", "samples: at line 2, column 10: 010 is an octal number"),
                       ("hardware:\n  bits: {w: 0_10}\n", "hardware.bits.w: at line 2, column 13: 0_10 is an octal"),
                       ("a: [1, 1:00]\n", "a[1]: at line 1, column 8: 1:00 is a base-60 number"),
                       ("010\n", "at line 1, column 1: 010 is an octal number")):
        p.write_text(text)
        with pytest.raises(ConfigError, match=rf"^{re.escape(f'{p}: {want}')}"):
            load_yaml(p)
    with pytest.raises(ConfigError, match=r"^--set: hardware.bits.w: 010 is an octal number in YAML 1.1 \(= 8\)"):
        apply_overrides({}, ["hardware.bits={w: 010}"])
    with pytest.raises(ConfigError, match=r"^--set: x\[1\]: 07 is an octal number in YAML 1.1 \(= 7\)"):
        apply_overrides({}, ["x=[1, 07]"])


def test_a_zero_with_underscores_or_zeros_is_zero_not_an_octal(tmp_path):
    """YAML 1.1's octal is `[-+]?0[0-7_]+`, and its `_` is a digit separator (as in 1_000): PyYAML reads 0_ as 0
    (underscores dropped, "0" is zero) and 00 or 0_0 as octal 0. Zero in any base is the number it looks like, so
    these are accepted as 0 (`--set seed=0_` was refused as "an octal number (= 0)" and told to drop the leading
    zero); an octal with a digit other than 0 is still refused."""
    assert apply_overrides({}, ["a=0_", "b=00", "c=-0_0", "d=+000"]) == {"a": 0, "b": 0, "c": 0, "d": 0}
    p = tmp_path / "c.yaml"
    p.write_text("seed: 0_\n")
    assert load_yaml(p) == {"seed": 0}
    with pytest.raises(ConfigError, match=r"^--set: seed: 0_1 is an octal number in YAML 1.1 \(= 1\)"):
        apply_overrides({}, ["seed=0_1"])
