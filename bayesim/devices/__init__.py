"""Device models: the cells that hold a Bayesian network's parameters.

Public API: `DeviceModel` (the protocol), `load_device(name_or_card_path, cards_dirs=())`,
`list_devices(cards_dirs=())`, `register(name, factory)`, `DeviceCard` / `load_card(path)` (the YAML
schema), `ComposedDevice` (the built-in models), and `level_overlap` / `distinguishable_levels`
(how many levels a device can tell apart at 1 sigma).
"""
from bayesim.devices.base import DeviceModel, is_device  # noqa: F401
from bayesim.devices.card import DeviceCard, load_card  # noqa: F401
from bayesim.devices.composed import ComposedDevice  # noqa: F401
from bayesim.devices.registry import device_from_card, list_devices, load_device, register  # noqa: F401
from bayesim.devices.stats import distinguishable_levels, level_overlap, max_distinguishable_levels  # noqa: F401
