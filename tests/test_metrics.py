"""Metrics against hand-computed values."""
import math

import numpy as np
import pytest

from bayesim import metrics
from bayesim.errors import BayesimError


def test_decompose_disagreeing_confident_samples_is_pure_epistemic():
    probs = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])  # S=2, N=1, C=2
    d = metrics.decompose(probs)
    assert d["total"][0] == pytest.approx(math.log(2))
    assert d["aleatoric"][0] == pytest.approx(0.0, abs=1e-15)
    assert d["epistemic"][0] == pytest.approx(math.log(2))


def test_decompose_agreeing_uncertain_samples_is_pure_aleatoric_and_mi_not_negative():
    probs = np.full((3, 4, 2), 0.5, dtype=np.float32)
    d = metrics.decompose(probs)
    np.testing.assert_allclose(d["total"], math.log(2), rtol=1e-7)
    np.testing.assert_allclose(d["aleatoric"], math.log(2), rtol=1e-7)
    assert (d["epistemic"] >= 0).all() and d["epistemic"].max() < 1e-12


def test_decompose_hand_computed_mixture():
    p1, p2 = np.array([0.9, 0.1, 0.0]), np.array([0.5, 0.3, 0.2])
    d = metrics.decompose(np.stack([p1, p2])[:, None, :])
    m = (p1 + p2) / 2
    h = lambda p: -sum(x * math.log(x) for x in p if x > 0)  # noqa: E731
    assert d["total"][0] == pytest.approx(h(m))
    assert d["aleatoric"][0] == pytest.approx((h(p1) + h(p2)) / 2)
    assert d["epistemic"][0] == pytest.approx(h(m) - (h(p1) + h(p2)) / 2)


def test_accuracy_nll_brier_hand_values():
    m = np.array([[0.8, 0.2], [0.3, 0.7]])
    y = np.array([1, 1])
    assert metrics.accuracy(m, y) == 0.5
    assert metrics.nll(m, y) == pytest.approx((-math.log(0.2) - math.log(0.7)) / 2)
    assert metrics.brier(m, y) == pytest.approx(((0.64 + 0.64) + (0.09 + 0.09)) / 2)


def test_nll_is_finite_at_probability_zero():
    m = np.array([[1.0, 0.0]])
    assert metrics.nll(m, np.array([1])) == pytest.approx(-math.log(1e-12))


def test_ece_hand_value():
    # confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.6 (right): bins (13/15,14/15] and (8/15,9/15]
    m = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    y = np.array([0, 1, 0, 1])
    assert metrics.ece(m, y) == pytest.approx(0.5 * abs(0.5 - 0.9) + 0.5 * abs(1.0 - 0.6))


def test_ece_perfectly_calibrated_is_zero():
    m = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert metrics.ece(m, np.array([0, 1])) == 0.0


def test_auroc_ties_count_half_and_aupr_hand_value():
    pos, neg = [3.0, 2.0], [1.0, 2.0]
    assert metrics.auroc(pos, neg) == pytest.approx(3.5 / 4)
    # thresholds >=3: P=1, R=.5 ; >=2: P=2/3, R=1
    assert metrics.aupr(pos, neg) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_auroc_matches_pairwise_count_on_random_ties():
    rng = np.random.default_rng(0)
    pos = rng.integers(0, 5, 300).astype(float)
    neg = rng.integers(0, 4, 200).astype(float)
    brute = ((pos[:, None] > neg[None]) + 0.5 * (pos[:, None] == neg[None])).mean()
    assert metrics.auroc(pos, neg) == pytest.approx(brute, abs=1e-12)
    assert metrics.auroc(pos, pos) == pytest.approx(0.5)


def test_summarize_standard_pairs():
    rng = np.random.default_rng(1)
    confident = np.tile(np.eye(3)[None, [0, 1, 2, 0]], (4, 1, 1)) * 0.98 + 0.02 / 3
    noisy = rng.dirichlet(np.ones(3), size=(4, 5))  # samples disagree -> high MI
    out = metrics.summarize({"mnist": confident, "ambiguous": confident, "ood": noisy},
                            {"mnist": np.array([0, 1, 2, 0]), "ambiguous": np.array([0, 1, 2, 1]),
                             "ood": np.zeros(5, dtype=int)})
    assert out["mnist"]["accuracy"] == 1.0 and out["ambiguous"]["accuracy"] == 0.75
    assert set(out["auroc"]) == set(metrics.STANDARD_PAIRS)
    assert out["auroc"]["ood_vs_in_mi"] == 1.0
    assert out["auroc"]["ambiguous_vs_mnist_aleatoric"] == 0.5  # identical predictions: all ties


@pytest.mark.parametrize("bad, msg", [
    (np.full((2, 3), 0.5), "rank 3"),
    (np.array([[[np.nan, 1.0]]]), "NaN"),
    (np.array([[[-0.1, 1.1]]]), "negative"),
    (np.array([[[0.3, 0.3]]]), "sum to 1"),
    (np.zeros((0, 2, 2)), "empty"),
])
def test_refuses_non_probabilities(bad, msg):
    with pytest.raises(BayesimError, match=msg):
        metrics.decompose(bad)


def test_mutual_information_below_float32_resolution_is_zero():
    # two samples that differ only in the 9th decimal: MI ~ 1e-17 nats is round-off, reported as 0
    p1 = np.array([1 - 1e-9, 1e-9])
    p2 = np.array([1 - 2e-9, 2e-9])
    d = metrics.decompose(np.stack([p1, p2])[:, None, :])
    assert d["epistemic"][0] == 0.0
    # a real disagreement far above the floor is kept
    d = metrics.decompose(np.array([[[0.9, 0.1]], [[0.7, 0.3]]]))
    assert d["epistemic"][0] > 1e-2
