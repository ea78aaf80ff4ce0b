"""An example device plug-in in plain numpy: a cell whose programming error is log-normal
(multiplicative, mean-preserving) and whose read noise is proportional to the conductance.

Load it by path from a card (`model: my_device.py:MyDevice`, see my_device.yaml) or install it as an
entry point of the group `bayesim.devices`. Nothing else is needed: the class only has to provide the
`bayesim.devices.DeviceModel` protocol (name, g_min, g_max, levels, program, read, program_sigma,
read_sigma). Randomness comes from `bayesim.rng.generator(key)`, so results are a pure function of the
keys: element i of the array is cell i of the tile.
"""
from __future__ import annotations

import numpy as np

from bayesim.rng import generator


class MyDevice:
    """Log-normal programming noise (relative std `sigma_rel`), proportional read noise (`read_rel`)."""

    gaussian_programming = False  # log-normal, so the crossbar must call program() itself

    def __init__(self, g_min_uS: float = 1.0, g_max_uS: float = 20.0, sigma_rel: float = 0.05,
                 read_rel: float = 0.01, name: str = "my_device"):
        if not 0 <= g_min_uS < g_max_uS:
            raise ValueError(f"need 0 <= g_min_uS < g_max_uS, got {g_min_uS}, {g_max_uS}")
        if sigma_rel < 0 or read_rel < 0:
            raise ValueError("sigma_rel and read_rel must be >= 0")
        self.name = name
        self.g_min, self.g_max = float(g_min_uS), float(g_max_uS)
        self.sigma_rel, self.read_rel = float(sigma_rel), float(read_rel)

    def levels(self, n: int, spacing: str = "linear") -> np.ndarray:
        if n < 2:
            raise ValueError("need at least 2 levels")
        if spacing == "log":
            return np.geomspace(max(self.g_min, 1e-3 * self.g_max), self.g_max, n).astype(np.float32)
        if spacing != "linear":
            raise ValueError(f"{self.name} has no {spacing!r} levels")
        return np.linspace(self.g_min, self.g_max, n).astype(np.float32)

    def program(self, targets: np.ndarray, key: int, cell_key: int) -> np.ndarray:
        t = np.asarray(targets, np.float32)
        s = self.sigma_rel
        z = generator(key).standard_normal(t.shape)  # one draw per cell, C order
        g = t * np.exp(s * z - 0.5 * s * s)          # E[g] = target
        return np.clip(g, self.g_min, self.g_max).astype(np.float32)

    def read(self, held: np.ndarray, t_read: float, key: int, cell_key: int) -> np.ndarray:
        h = np.asarray(held, np.float32)
        z = generator(key).standard_normal(h.shape)
        return np.clip(h * (1 + self.read_rel * z), 0.0, None).astype(np.float32)

    def program_sigma(self, g: np.ndarray) -> np.ndarray:
        s = self.sigma_rel
        return (np.asarray(g, np.float64) * np.sqrt(np.expm1(s * s))).astype(np.float32)

    def read_sigma(self, g: np.ndarray, t_read: float) -> np.ndarray:
        return (self.read_rel * np.abs(np.asarray(g, np.float64))).astype(np.float32)
