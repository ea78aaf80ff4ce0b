"""The device interface: what every conductance-cell model provides.

A *level* is a target conductance; what a device *holds* after programming is a draw around it, and
what a *read* returns at time t is a further draw (drift + read noise). The simulator keeps these apart.

All conductances are in microsiemens (uS), times in seconds (s), arrays float32 and vectorised.

Randomness is passed as 64-bit stream keys (see `bayesim.rng`), never as hidden global state:
- `key` identifies one *event* (one programming pulse train, one read); fresh for each event;
- `cell_key` identifies the *physical cells* of one tile; fixed for the life of the hardware, so
  stuck-at faults and device-to-device variation (drawn in `program`) stay with their cell across
  re-programming (SPQ programs the same cells for every Monte-Carlo sample). The `cell_key` given to
  `read` names the cells *as programmed*: what is drawn at programming and then stays until the next
  programming, such as a PCM cell's drift exponent (a new amorphous plug at each RESET; aihwkit's
  PCMLikeNoiseModel draws it at each programming too). The crossbar passes the physical key for the
  stored arrays (programmed once) and rng.derive_key(cell_key, "programmed", sample) for cells it
  programs for each Monte-Carlo sample.
Element i of the array is cell i of the tile (C order), so the same cell gets the same fault whatever
the batch shape or thread count. Built-in models do this in numba kernels on the counter-based streams
of `bayesim.rng`; a numpy plug-in may use `bayesim.rng.generator(key)`.

Optional attributes (read with getattr and a default by consumers; the built-ins provide them all):
- `gaussian_programming: bool` (default False): True when program() is exactly
  clip(target + program_sigma(target) z) and read() exactly clip(held + read_sigma(held, t) z), with no
  stuck-at faults, d2d variation, drift or bias, so a crossbar kernel may fuse both draws itself.
- `clip_range: (lo, hi)` uS (default (g_min, g_max)): where programmed/read values are clipped.
- `measured_levels() -> array | None`, `n_levels: int | None` (published level count),
  `program_offset(g)` (mean programming error, uS), `drift_factor(g, t_read)` (median G(t)/G_prog).
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class DeviceModel(Protocol):
    """Protocol of a stochastic multi-level analog cell (see module docstring)."""

    name: str
    g_min: float  # lowest programmable conductance, uS
    g_max: float  # highest programmable conductance, uS

    def levels(self, n: int, spacing: str = "linear") -> np.ndarray:
        """`n` target conductances (uS, ascending, float32) in [g_min, g_max].

        spacing: "linear" (equal steps), "log" (geometric steps, for sigma arrays) or "measured"
        (the device's own characterised levels; error if it has none or `n` does not match).
        """
        ...

    def program(self, targets: np.ndarray, key: int, cell_key: int) -> np.ndarray:
        """Held conductance after programming `targets` (uS): programming noise that depends on the
        target, device-to-device variation, stuck-at faults. Clipped to the physical range."""
        ...

    def read(self, held: np.ndarray, t_read: float, key: int, cell_key: int) -> np.ndarray:
        """Conductance read at `t_read` seconds after programming: drift and read noise (which may
        grow with time)."""
        ...

    def program_sigma(self, g: np.ndarray) -> np.ndarray:
        """Cycle-to-cycle programming std (uS) at target conductance `g`: the spread of re-programming,
        the random source a device-sampled Bayesian machine uses."""
        ...

    def read_sigma(self, g: np.ndarray, t_read: float) -> np.ndarray:
        """Read-noise std (uS) at held conductance `g`, `t_read` seconds after programming."""
        ...


_ATTRIBUTES = ("name", "g_min", "g_max")
_METHODS = ("levels", "program", "read", "program_sigma", "read_sigma")


def is_device(obj) -> bool:
    """True when `obj` provides the whole `DeviceModel` protocol (its attributes, and its methods callable).

    The members are checked in a fixed order, not as `isinstance(obj, DeviceModel)` does (a set, in an order
    that changes with the interpreter's hash seed): a member that raises when read is re-raised only when
    nothing is missing, so a broken plug-in gets the same message in every process."""
    raised = None
    for m in _ATTRIBUTES + _METHODS:
        try:
            v = getattr(obj, m)
        except AttributeError:
            return False
        except Exception as e:  # noqa: BLE001 - a raising property: reported below unless something is missing
            raised = raised or e
            continue
        if m in _METHODS and not callable(v):
            return False
    if raised is not None:
        raise raised
    return True
