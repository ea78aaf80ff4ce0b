"""bayesim: an analog Bayesian machine hardware simulator.

Public API (see README): data loading (`bayesim.data`), uncertainty metrics
(`bayesim.metrics`), Bayesian networks and quantization (`bayesim.bnn`), device
models (`bayesim.devices`), crossbar simulation (`bayesim.crossbar`,
`bayesim.analog`) and experiment running (`bayesim.experiment`).
"""
__version__ = "0.1.0"

from bayesim.errors import BayesimError, ConfigError  # noqa: E402,F401
