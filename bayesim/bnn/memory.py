"""Memory accounting per strategy: bits stored per Bayesian weight against FP32 mu + sigma (64 bits).

Stored per weight (weights and biases alike):
  fp, spq: 32 (mu) + 32 (sigma)            -- SPQ quantizes the sampled weight, not what is stored
  vpq, jq: mu_bits + sigma_bits
Overheads per Bayesian layer (32-bit floats): fp none; vpq mu_step + sigma_max (64 bits);
spq w_step (32 bits); jq mu_step + sigma_max + w_step (96 bits). The grids are symmetric / anchored,
so there are no offsets to store. Activation clip levels (32 bits per activation layer) are reported
separately (`activation_overhead_bits`), they are not weight memory.
`reduction_vs_fp32` = 64 * n_weights / total_bits (overheads included); `reduction_before_overhead`
= 64 / stored bits per weight. `sampled_weight_bits` is the precision of each programmed weight sample.
"""
from __future__ import annotations

from bayesim.bnn.layers import Activation

FP32 = 32


def _per_weight_and_overhead(quant) -> tuple[int, int]:
    s = quant.strategy
    if s == "fp":
        return 2 * FP32, 0
    if s == "spq":
        return 2 * FP32, FP32
    if s == "vpq":
        return quant.mu_bits + quant.sigma_bits, 2 * FP32
    return quant.mu_bits + quant.sigma_bits, 3 * FP32  # jq


def memory_report(model) -> dict:
    """Bits stored per weight, total bits and the reduction against FP32 mu + sigma for `model`."""
    q = model.cfg.quant
    per_w, per_layer_overhead = _per_weight_and_overhead(q)
    layers = []
    for i, m in enumerate(model.bayes_layers):
        n = m.n_weights
        layers.append({"layer": i, "n_weights": n, "stored_bits": n * per_w, "overhead_bits": per_layer_overhead})
    n_weights = sum(lay["n_weights"] for lay in layers)
    overhead = per_layer_overhead * len(layers)
    total = n_weights * per_w + overhead
    fp32_bits = n_weights * 2 * FP32
    n_act = sum(isinstance(m, Activation) and m.cfg.kind == "bounded" for m in model.layers)
    return {
        "strategy": q.strategy,
        "n_weights": n_weights,
        "bits_per_weight_stored": per_w,
        "bits_per_weight": total / n_weights,
        "overhead_bits": overhead,
        "total_bits": total,
        "total_bytes": total / 8.0,
        "fp32_bits": fp32_bits,
        "reduction_vs_fp32": fp32_bits / total,
        "reduction_before_overhead": 2 * FP32 / per_w,
        "sampled_weight_bits": q.w_bits if q.quantize_sampled else FP32,
        "activation_overhead_bits": FP32 * n_act,
        "layers": layers,
    }
