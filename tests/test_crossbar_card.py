"""Crossbar cards: the shipped cards load; bad values give errors naming file, key and what is allowed."""
from pathlib import Path

import pytest

from bayesim.crossbar import crossbar_from_dict, load_crossbar
from bayesim.errors import ConfigError

CARDS = Path(__file__).resolve().parents[1] / "crossbars"


@pytest.mark.parametrize("name", ["default", "ideal", "irdrop"])
def test_shipped_cards_load(name):
    card = load_crossbar(CARDS / f"{name}.yaml")
    assert card.name == name and card.tile.rows > 0
    assert card.ideal_periphery == (name == "ideal")
    if name != "ideal":
        assert card.dac.bits == 8 and card.adc.bits == 8 and card.energy.adc_J > 0 and card.source


@pytest.mark.parametrize("data, text", [
    ({"name": "x", "tile": {"rows": 0}}, "x.yaml: tile.rows: 0 is out of range; allowed [1, 65536]"),
    ({"name": "x", "adc": {"bitz": 6}}, "x.yaml: adc.bitz: unknown key; allowed: bits, full_scale, percentile, range"),
    ({"name": "x", "adc": {"range": "maxx"}}, "adc.range: 'maxx' is not allowed; choose one of 'fixed', 'max', 'percentile'"),
    ({"name": "x", "mapping": {"kind": "diff"}}, "mapping.kind: 'diff' is not allowed"),
    ({"name": "x", "dac": {"bits": 0}}, "dac.bits: 0 is out of range"),
    ({"name": "x", "energy": {"adc_J": -1}}, "energy.adc_J: -1.0 is out of range"),
    ({"name": "x", "tile": {"rows": 256, "cols": 256}, "ir_drop": {"model": "exact"}},
     "x.yaml: ir_drop.model: the exact nodal IR-drop solve is for small tiles"),
    ({"name": "x", "mapping": {"kind": "offset"}, "ir_drop": {"model": "first_order"}},
     "ir_drop.model: IR drop is modelled for the differential mapping only"),
    ({"tile": {"rows": 8}}, "x.yaml: name: required key is missing"),
    # in float32's range but physically nonsense: sanity bounds
    ({"name": "x", "ir_drop": {"model": "first_order", "r_wire_ohm": 1e30}},
     "x.yaml: ir_drop.r_wire_ohm: 1e+30 is out of range; allowed [0, 1000.0]"),
    ({"name": "x", "energy": {"adc_J": 5.0}}, "x.yaml: energy.adc_J: 5.0 is out of range; allowed [0, 0.001]"),
])
def test_card_errors(data, text):
    with pytest.raises(ConfigError) as e:
        crossbar_from_dict(data, source="x.yaml")
    assert text in str(e.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_crossbar(tmp_path / "nope.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: malformed YAML"):
        load_crossbar(p)


# ------------------------------------------------------------------ bad-input audit
@pytest.mark.parametrize("data, text", [
    ({"name": "x", "adc": {"bits": 1}}, "x.yaml: adc.bits: 1 is out of range; allowed [2, 24]"),
    ({"name": "x", "dac": {"bits": 1, "signed": True}}, "x.yaml: dac.bits: a signed DAC needs >= 2 bits"),
    ({"name": "x", "adc": {"range": "fixed", "full_scale": 1e-300}},
     "x.yaml: adc.full_scale: 1e-300 is not representable in float32"),
    ({"name": "x", "dac": {"scaling": "fixed", "range": 1e-300}}, "x.yaml: dac.range: 1e-300 is not representable"),
    ({"name": "x", "ir_drop": {"model": "first_order", "r_wire_ohm": 1e300}},
     "x.yaml: ir_drop.r_wire_ohm: 1e+300 is out of range; allowed [0, 1000.0]"),
])
def test_card_audit_errors(data, text):
    with pytest.raises(ConfigError) as e:
        crossbar_from_dict(data, source="x.yaml")
    assert text in str(e.value)


def test_low_bit_widths_that_work():
    assert crossbar_from_dict({"name": "x", "dac": {"bits": 1, "signed": False}, "adc": {"bits": 2}}).dac.bits == 1
    assert crossbar_from_dict({"name": "x", "dac": {"bits": 2, "signed": True}}).dac.bits == 2


def test_config_bit_overrides():
    from bayesim.crossbar.card import override_bits

    card = load_crossbar(CARDS / "default.yaml")
    assert card.dac.signed
    assert override_bits(card, "d.yaml") is card
    c = override_bits(card, "d.yaml", dac=3, adc=5)
    assert (c.dac.bits, c.adc.bits) == (3, 5)
    # energy per conversion at a fixed figure of merit per step: 2^(bits - card bits) of the card's (8-bit) value
    assert c.energy.adc_J == pytest.approx(card.energy.adc_J / 8) and c.energy.dac_J == pytest.approx(card.energy.dac_J / 32)
    assert override_bits(card, "d.yaml", adc=10).energy.adc_J == pytest.approx(4 * card.energy.adc_J)
    assert override_bits(card, "d.yaml", adc=8).energy == card.energy
    ideal = load_crossbar(CARDS / "ideal.yaml")  # ideal converters (bits null): bits set, nothing to scale
    assert override_bits(ideal, "i.yaml", adc=6, dac=6).adc.bits == 6
    costly = crossbar_from_dict({"name": "c", "energy": {"adc_J": 1e-5}})
    with pytest.raises(ConfigError) as e:
        override_bits(costly, "c.yaml", adc=16)
    assert e.value.key == "hardware.bits.adc" and "scale crossbar card c.yaml's adc_J = 1e-05 J (at 8 bits) by 2^8 " \
        "to 0.00256 J per conversion, beyond 0.001 J" in str(e.value)
    with pytest.raises(ConfigError) as e:
        override_bits(card, "d.yaml", dac=1)
    assert e.value.source is None and e.value.key == "hardware.bits.dac"
    assert "a signed DAC needs >= 2 bits" in str(e.value) and "d.yaml" in str(e.value)
    with pytest.raises(ConfigError) as e:
        override_bits(card, "d.yaml", adc=1)
    assert e.value.key == "hardware.bits.adc" and ">= 2 bits" in str(e.value)
    unsigned = crossbar_from_dict({"name": "u", "dac": {"signed": False}})
    assert override_bits(unsigned, "u.yaml", dac=1).dac.bits == 1


def test_duplicate_keys_and_empty_card_files(tmp_path):
    p = tmp_path / "dup.yaml"
    p.write_text("name: x\ntile:\n  rows: 8\n  cols: 8\n  rows: 9\n")
    with pytest.raises(ConfigError, match=r"dup.yaml: tile.rows: duplicate key at line 5 \(first given at line 3\)"):
        load_crossbar(p)
    p.write_text("# nothing here\n")
    with pytest.raises(ConfigError, match=r"dup.yaml: empty; expected a mapping with keys name, source, tile"):
        load_crossbar(p)
    with pytest.raises(ConfigError, match="is a folder, not a file"):
        load_crossbar(tmp_path)
