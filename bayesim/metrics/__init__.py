"""Uncertainty metrics of Monte-Carlo predictive samples.

`probs` has shape [S, N, C]: S Monte-Carlo weight samples, N examples, C classes.

- total (predictive) entropy  H[E_s p_s]
- aleatoric (expected entropy) E_s H[p_s]
- epistemic (mutual information) total - aleatoric, clipped at 0 against round-off
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
