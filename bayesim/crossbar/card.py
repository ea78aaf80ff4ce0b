"""Crossbar (tile) cards: array size, weight mapping, DAC/ADC, output noise, IR drop, energy, area.

A card is YAML validated through `bayesim.config.build`; `load_crossbar(path)` returns a `CrossbarCard`.

Units: conductances uS, wire resistance ohm, energies J, area um^2. Inputs are normalised per vector
before the DAC (abs-max, or a fixed range); the ADC sees the *normalised column current*
u_j = sum_k x_k/x_scale * (G+_kj - G-_kj)/(g_max - g_min), i.e. current in units of one fully-on
differential cell driven at full-scale input. ADC ranges are given in those units.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from bayesim.config.schema import build, load_yaml, spec, to_dict, with_path
from bayesim.errors import ConfigError


#: the largest tile (rows x cols) the exact nodal IR-drop solve takes
EXACT_IR_MAX_CELLS = 128 * 128

MAX_CONVERSION_J = 1e-3  #: sanity bound of a converter's energy per conversion (J)


@dataclass(frozen=True)
class Tile:
    """Physical array size: weights of one tile occupy rows x cols cells (x2 for a differential pair)."""
    rows: int = spec(256, lo=1, hi=65536, doc="word lines (inputs) per tile")
    cols: int = spec(256, lo=1, hi=65536, doc="bit lines (outputs) per tile")


@dataclass(frozen=True)
class Mapping:
    """Weight -> conductance mapping.

    differential: w ~ G+ - G- on two paired arrays (the unused side sits at g_min).
    offset: w ~ G - G_ref, one array plus one reference column at (g_min+g_max)/2 per tile.
    scale: the weight that maps to the full conductance swing is chosen per tile or per column.
    """
    kind: Literal["differential", "offset"] = "differential"
    scale: Literal["per_tile", "per_column"] = "per_column"


#: A signed DAC / the ADC use q = 2^(bits-1)-1 levels per side: 1 bit would give q = 0 (no levels).
MIN_SIGNED_BITS = 2


@dataclass(frozen=True)
class Dac:
    bits: Optional[int] = spec(8, lo=1, hi=24, doc="null = ideal (no quantization); signed needs >= 2")
    signed: bool = spec(False, doc="signed DAC (levels -q..q) or unsigned (0..2^bits-1; negatives clip)")
    scaling: Literal["abs_max", "fixed"] = "abs_max"
    range: float = spec(1.0, lo=0, lo_open=True, doc="input full scale when scaling = fixed")

    def validate(self):
        if self.signed and self.bits is not None and self.bits < MIN_SIGNED_BITS:
            raise ConfigError(signed_dac_message(self.bits), key="bits")


def signed_dac_message(bits: int) -> str:
    return (f"a signed DAC needs >= {MIN_SIGNED_BITS} bits (levels -q..q with q = 2^(bits-1)-1, "
            f"which is 0 for {bits} bit); got {bits}")


@dataclass(frozen=True)
class Adc:
    bits: Optional[int] = spec(8, lo=MIN_SIGNED_BITS, hi=24,
                               doc="null = ideal (no quantization); >= 2: q = 2^(bits-1)-1 levels per side")
    range: Literal["fixed", "max", "percentile"] = "max"
    full_scale: float = spec(16.0, lo=0, lo_open=True,
                             doc="fixed range, normalised column-current units (see module doc)")
    percentile: float = spec(99.9, lo=50, hi=100, doc="calibration percentile when range = percentile")


@dataclass(frozen=True)
class IrDrop:
    model: Literal["none", "first_order", "exact"] = "none"
    r_wire_ohm: float = spec(1.0, lo=0, hi=1e3, doc="wire resistance per cell segment, ohm (arrays: ~0.1-10; "
                                                    "the bound only rejects nonsense)")


@dataclass(frozen=True)
class Energy:
    """Energy per event (J). Values are literature-based or marked as assumptions in the card."""
    dac_J: float = spec(0.0, lo=0, hi=MAX_CONVERSION_J, doc="J per conversion at the card's dac.bits")
    adc_J: float = spec(0.0, lo=0, hi=MAX_CONVERSION_J, doc="J per conversion at the card's adc.bits")
    cell_read_J: float = spec(0.0, lo=0, hi=1e-3, doc="J per cell read")
    program_J: float = spec(0.0, lo=0, hi=1e-3, doc="J per programming event")


@dataclass(frozen=True)
class CrossbarCard:
    name: str = spec()
    source: str = spec("", doc="where the numbers come from")
    tile: Tile = field(default_factory=Tile)
    mapping: Mapping = field(default_factory=Mapping)
    dac: Dac = field(default_factory=Dac)
    adc: Adc = field(default_factory=Adc)
    output_noise: float = spec(0.0, lo=0, hi=100.0, doc="additive Gaussian std at the ADC input, normalised current units")
    ir_drop: IrDrop = field(default_factory=IrDrop)
    energy: Energy = field(default_factory=Energy)
    cell_area_um2: float = spec(0.0, lo=0, hi=1e6, doc="area per cell, um^2")
    notes: str = ""
    path: Optional[str] = field(default=None, init=False, compare=False)  # the card file, set by load_crossbar

    def validate(self):
        if self.ir_drop.model == "exact" and self.tile.rows * self.tile.cols > EXACT_IR_MAX_CELLS:
            _fail(f"the exact nodal IR-drop solve is for small tiles (rows*cols <= {EXACT_IR_MAX_CELLS}), "
                  f"got {self.tile.rows}x{self.tile.cols}; use first_order", "ir_drop.model")
        if self.ir_drop.model != "none" and self.mapping.kind == "offset":
            _fail("IR drop is modelled for the differential mapping only; "
                  "use mapping.kind: differential or ir_drop.model: none", "ir_drop.model")

    @property
    def ideal_periphery(self) -> bool:
        """No DAC/ADC quantization, no output noise, no IR drop: the exact software path."""
        return (self.dac.bits is None and self.adc.bits is None and self.output_noise == 0.0
                and self.ir_drop.model == "none")


def _fail(message: str, key: str):
    # build() prefixes file and key itself; set the key after construction so it is not repeated
    err = ConfigError(message)
    err.key = key
    raise err


def crossbar_from_dict(mapping: dict, source: str = "<dict>") -> CrossbarCard:
    """Validated card from a mapping (e.g. an inline `crossbar:` section of an experiment config)."""
    return build(CrossbarCard, mapping, source=source)


#: The shipped crossbar cards (`crossbars/` of the repository).
SHIPPED_CROSSBARS = Path(__file__).resolve().parents[2] / "crossbars"


def find_crossbar_cards():
    """Crossbar card name -> file (a `CardIndex`): ./crossbars first, then the shipped cards (a user's card of a
    shipped card's name takes its place; a file stem names a card only where no card gives that name), as device
    cards are found (`bayesim.config.schema.find_named_cards`)."""
    from bayesim.config.schema import find_named_cards

    return find_named_cards([Path.cwd() / "crossbars", SHIPPED_CROSSBARS])


def load_crossbar(path) -> CrossbarCard:
    """Read and validate a crossbar card YAML file."""
    return with_path(crossbar_from_dict(load_yaml(path, cls=CrossbarCard), source=str(path)), str(path))




def override_bits(card: CrossbarCard, path, dac: Optional[int] = None, adc: Optional[int] = None) -> CrossbarCard:
    """`card` with the experiment config's `hardware.bits.dac` / `hardware.bits.adc` (None: the card's).

    The card's energy per conversion holds at its own bits; at other bits it scales by 2^(bits - card bits),
    as a converter's energy does at a fixed figure of merit per conversion step (Walden: E = FOM x 2^bits),
    so a 6-bit ADC on an 8-bit card costs a quarter of the card's adc_J.

    A value the card cannot take raises a ConfigError keyed `hardware.bits.dac` / `.adc` with no source,
    so the caller names the config file (bayesim/cli/run.py does).
    """
    if dac is not None and card.dac.signed and dac < MIN_SIGNED_BITS:
        raise ConfigError(f"{signed_dac_message(dac)} (crossbar card {path} has dac.signed: true)",
                          key="hardware.bits.dac")
    if adc is not None and adc < MIN_SIGNED_BITS:
        raise ConfigError(f"{adc} is out of range; the ADC needs >= {MIN_SIGNED_BITS} bits", key="hardware.bits.adc")
    if dac is None and adc is None:
        return card
    d = to_dict(card)
    d.pop("path")
    for which, bits in (("dac", dac), ("adc", adc)):
        if bits is None:
            continue
        d[which]["bits"] = bits
        card_bits = getattr(card, which).bits
        if card_bits is None:  # an ideal converter: no energy model to scale
            continue
        e0 = getattr(card.energy, f"{which}_J")
        e = e0 * 2.0 ** (bits - card_bits)
        if e > MAX_CONVERSION_J:
            raise ConfigError(f"{bits} bits scale crossbar card {path}'s {which}_J = {e0:g} J (at {card_bits} bits) by "
                              f"2^{bits - card_bits} to {e:g} J per conversion, beyond {MAX_CONVERSION_J:g} J",
                              key=f"hardware.bits.{which}")
        d["energy"][f"{which}_J"] = e
    return with_path(crossbar_from_dict(d, source=f"{path} (with hardware.bits overrides)"), card.path)
