"""Device models: the cells that hold a Bayesian network's parameters.

Public API: `DeviceModel` (the protocol), `load_device(name_or_card_path, cards_dirs=())`,
`list_devices(cards_dirs=())`, `register(name, factory)`, `DeviceCard` / `load_card(path)` (the YAML
schema), `ComposedDevice` (the built-in models), `level_overlap` / `distinguishable_levels` /
`max_distinguishable_levels` (how many levels a device tells apart at 1 sigma) and `intrinsic_sigma` /
`realisable_sigma` (the spread a device gives as a Bayesian machine's random source).
"""
from bayesim.devices.base import DeviceModel, is_device  # noqa: F401
from bayesim.devices.card import DeviceCard, load_card  # noqa: F401
from bayesim.devices.composed import ComposedDevice  # noqa: F401
from bayesim.devices.registry import device_from_card, list_devices, load_device, register  # noqa: F401
from bayesim.devices.stats import (  # noqa: F401
    distinguishable_levels, intrinsic_sigma, level_overlap, max_distinguishable_levels, realisable_sigma)
