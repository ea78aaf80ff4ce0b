"""Implementation of `bayesim.metrics` (see the package docstring)."""
from __future__ import annotations

import numpy as np
from scipy.special import xlogy
from scipy.stats import rankdata

from bayesim.errors import BayesimError

SUM_TOLERANCE = 1e-3
ECE_BINS = 15
_TINY = 1e-12
# Mutual information is a difference of two entropies of float32 probabilities; below the float32
# resolution (machine epsilon, in nats) it is round-off, not information, and is reported as exactly 0.
# Without the floor, values of 1e-18 vs 1e-12 would be "ranked" in AUROCs although no float32
# pipeline (nor any hardware) resolves them.
EPISTEMIC_RESOLUTION = float(np.finfo(np.float32).eps)

# name -> (positive splits, negative splits, score); positives are expected to score higher.
STANDARD_PAIRS = {
    "ood_vs_in_mi": (("ood",), ("mnist", "ambiguous"), "epistemic"),
    "ood_vs_in_total": (("ood",), ("mnist", "ambiguous"), "total"),
    "ood_vs_mnist_mi": (("ood",), ("mnist",), "epistemic"),
    "ambiguous_vs_mnist_aleatoric": (("ambiguous",), ("mnist",), "aleatoric"),
}


def check_probs(probs, name: str = "probs") -> np.ndarray:
    """Validate predictive samples [S, N, C]; return them as float64. Raises BayesimError."""
    p = np.asarray(probs)
    if p.ndim != 3:
        raise BayesimError(f"{name}: expected shape [S, N, C] (rank 3), got rank {p.ndim} shape {p.shape}")
    if min(p.shape) == 0:
        raise BayesimError(f"{name}: empty array of shape {p.shape}")
    if not np.issubdtype(p.dtype, np.floating):
        raise BayesimError(f"{name}: expected floating-point probabilities, got dtype {p.dtype}")
    p = p.astype(np.float64, copy=False)
    if not np.isfinite(p).all():
        raise BayesimError(f"{name}: contains NaN or Inf ({int((~np.isfinite(p)).sum())} values)")
    if (p < 0).any():
        raise BayesimError(f"{name}: contains negative probabilities (min {p.min():.3g})")
    dev = np.abs(p.sum(axis=-1) - 1.0).max()
    if dev > SUM_TOLERANCE:
        raise BayesimError(f"{name}: rows must sum to 1 within {SUM_TOLERANCE} (worst deviation {dev:.3g})")
    return p


def _entropy(p: np.ndarray) -> np.ndarray:
    return -xlogy(p, p).sum(axis=-1)


def decompose(probs) -> dict:
    """Per-example uncertainty decomposition.

    Returns dict with `mean_probs` [N, C], `total`, `aleatoric`, `epistemic` (each [N], nats).
    """
    p = check_probs(probs)
    mean = p.mean(axis=0)
    total = _entropy(mean)
    aleatoric = _entropy(p).mean(axis=0)
    epistemic = total - aleatoric
    epistemic[epistemic < EPISTEMIC_RESOLUTION] = 0.0
    return {"mean_probs": mean, "total": total, "aleatoric": aleatoric, "epistemic": epistemic}


def _check_labels(labels, n: int, c: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != n:
        raise BayesimError(f"labels: expected shape [{n}], got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise BayesimError(f"labels: expected integers, got dtype {y.dtype}")
    if n and (y.min() < 0 or y.max() >= c):
        raise BayesimError(f"labels: values must be in 0..{c - 1}")
    return y.astype(np.int64)


def accuracy(mean_probs: np.ndarray, labels) -> float:
    y = _check_labels(labels, *mean_probs.shape)
    return float((mean_probs.argmax(axis=1) == y).mean())


def nll(mean_probs: np.ndarray, labels) -> float:
    """Mean negative log-likelihood of the labels under the mean prediction (p floored at 1e-12)."""
    y = _check_labels(labels, *mean_probs.shape)
    return float(-np.log(np.maximum(mean_probs[np.arange(len(y)), y], _TINY)).mean())


def brier(mean_probs: np.ndarray, labels) -> float:
    """Mean over examples of sum_c (p_c - onehot_c)^2."""
    y = _check_labels(labels, *mean_probs.shape)
    d = mean_probs.copy()
    d[np.arange(len(y)), y] -= 1.0
    return float((d * d).sum(axis=1).mean())


def ece(mean_probs: np.ndarray, labels, bins: int = ECE_BINS) -> float:
    """Expected calibration error with `bins` equal-width confidence bins (lo, hi] (the first includes 0)."""
    y = _check_labels(labels, *mean_probs.shape)
    conf = mean_probs.max(axis=1)
    correct = (mean_probs.argmax(axis=1) == y).astype(np.float64)
    idx = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    n = len(y)
    sum_conf = np.bincount(idx, weights=conf, minlength=bins)
    sum_acc = np.bincount(idx, weights=correct, minlength=bins)
    return float(np.abs(sum_acc - sum_conf).sum() / n)


def _scores(pos, neg):
    pos = np.asarray(pos, dtype=np.float64).ravel()
    neg = np.asarray(neg, dtype=np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        raise BayesimError("AUROC/AUPR need at least one positive and one negative example")
    if not (np.isfinite(pos).all() and np.isfinite(neg).all()):
        raise BayesimError("AUROC/AUPR scores contain NaN or Inf")
    return pos, neg


def auroc(pos_scores, neg_scores) -> float:
    """Exact AUROC = P(score_pos > score_neg) + 0.5 P(equal) (Mann-Whitney U / (n_pos n_neg))."""
    pos, neg = _scores(pos_scores, neg_scores)
    ranks = rankdata(np.concatenate([pos, neg]), method="average")
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def aupr(pos_scores, neg_scores) -> float:
    """Average precision with positives = `pos_scores`; tied scores form one threshold."""
    pos, neg = _scores(pos_scores, neg_scores)
    s = np.concatenate([pos, neg])
    t = np.concatenate([np.ones(pos.size), np.zeros(neg.size)])
    order = np.argsort(-s, kind="mergesort")
    s, t = s[order], t[order]
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]  # last index of each tie group
    tp = np.cumsum(t)[last]
    fp = (last + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / pos.size
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def split_metrics(probs, labels) -> tuple[dict, dict]:
    """Metrics of one split and its per-example decomposition."""
    d = decompose(probs)
    m = d["mean_probs"]
    y = _check_labels(labels, *m.shape)
    out = {
        "n": int(len(y)),
        "accuracy": accuracy(m, y),
        "nll": nll(m, y),
        "brier": brier(m, y),
        "ece": ece(m, y),
        "mean_total_entropy": float(d["total"].mean()),
        "mean_aleatoric": float(d["aleatoric"].mean()),
        "mean_epistemic": float(d["epistemic"].mean()),
    }
    return out, d


ONE_SAMPLE_NOTE = ("samples = 1: a single weight draw has no spread, so the epistemic MI is 0 for every input "
                   "and AUROC(MI) is 0.5; use S >= 2 (the default is 32)")


def summarize(probs_by_split: dict, labels_by_split: dict) -> dict:
    """Metrics of every split plus the standard AUROC / AUPR pairs whose splits are present.

    Returns {split: {n, accuracy, nll, brier, ece, mean_total_entropy, mean_aleatoric, mean_epistemic},
             "auroc": {pair: value}, "aupr": {pair: value}}.
    """
    out: dict = {}
    per_example = {}
    for name, probs in probs_by_split.items():
        if name not in labels_by_split:
            raise BayesimError(f"no labels for split {name!r}")
        out[name], per_example[name] = split_metrics(probs, labels_by_split[name])
    out["auroc"], out["aupr"] = {}, {}
    for pair, (pos, neg, score) in STANDARD_PAIRS.items():
        if all(s in per_example for s in pos + neg):
            ps = np.concatenate([per_example[s][score] for s in pos])
            ns = np.concatenate([per_example[s][score] for s in neg])
            out["auroc"][pair] = auroc(ps, ns)
            out["aupr"][pair] = aupr(ps, ns)
    return out
