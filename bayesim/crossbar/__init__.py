"""Crossbar tiles: cards, weight -> conductance mapping, DAC/ADC, IR drop and the fused numba kernels.

Public API: `load_crossbar(path)`, `CrossbarCard`, `AnalogLayer(op, device, card, layer_index, seed, ...)`
with `program()`, `forward(x, sample)`, `calibrate_adc(x, samples)`, `stats` (`CrossbarStats`).
"""
from bayesim.crossbar.card import CrossbarCard, crossbar_from_dict, load_crossbar  # noqa: F401
from bayesim.crossbar.layer import AnalogLayer, CrossbarStats, im2col  # noqa: F401
