"""Uncertainty metrics of Monte-Carlo predictive samples.

`probs` has shape [S, N, C]: S Monte-Carlo weight samples, N examples, C classes.

- total (predictive) entropy  H[E_s p_s]
- aleatoric (expected entropy) E_s H[p_s]
- epistemic (mutual information) total - aleatoric; below float32 machine epsilon (1.2e-7 nats),
  which is round-off of float32 probabilities rather than information, it is exactly 0
- accuracy, NLL, Brier score, ECE (15 equal-width confidence bins) of the mean prediction
- AUROC (exact Mann-Whitney statistic, ties count one half) and AUPR (average precision, ties grouped)
  of any score between two splits; `summarize` computes the standard Dirty-MNIST pairs.

Entropies are in nats. Everything is computed in float64.
"""
from bayesim.metrics.uncertainty import (  # noqa: F401
    STANDARD_PAIRS,
    accuracy,
    aupr,
    auroc,
    brier,
    check_probs,
    decompose,
    ece,
    nll,
    split_metrics,
    summarize,
)

__all__ = ["decompose", "summarize", "auroc", "aupr", "ece", "nll", "brier", "accuracy",
           "split_metrics", "check_probs", "STANDARD_PAIRS"]
