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
