"""Runs a trained Bayesian network on simulated crossbars under a quantization strategy.

Public API: `AnalogBNN(ops, device, crossbar, seed, ...)` with `calibrate(x)` and
`predict_probs(x, samples) -> [S, N, C]`, `stats`, `summary()`.
"""
from bayesim.analog.network import AnalogBNN  # noqa: F401
