"""Mean-field Gaussian Bayesian networks, quantizers and strategies, training, Pyro import.

Public API:
- `ModelConfig`, `ActivationConfig`, `QuantConfig` (bnn.config); `build_model(cfg)`, `BayesNet`
- `BayesLinear`, `BayesConv2d`, `Activation` (bnn.layers)
- `predict_probs(model, x, samples, seed, batch_size=1000, workers=None) -> [S, N, C]` (bnn.predict)
- `save_model(model, path, **meta)`, `load_model(path) -> (model, meta)` (bnn.checkpoint)
- `memory_report(model)` (bnn.memory); quantizers in `bayesim.bnn.quant`; ops in `bayesim.bnn.ops`
- `import_pyro(path, arch) -> model` (bnn.pyro_import); `train(cfg)` (bnn.train)
"""
from bayesim.bnn.config import ActivationConfig, ModelConfig, QuantConfig  # noqa: F401
from bayesim.bnn.layers import Activation, BayesConv2d, BayesLinear  # noqa: F401
from bayesim.bnn.models import BayesNet, build_model  # noqa: F401
from bayesim.bnn.predict import predict_probs  # noqa: F401
from bayesim.bnn.checkpoint import load_model, save_model  # noqa: F401
from bayesim.bnn.memory import memory_report  # noqa: F401
from bayesim.bnn.pyro_import import import_pyro  # noqa: F401,E402
