"""`bayesim evaluate`: metrics.json keys and values on small synthetic splits; bad input writes nothing."""
import json
from types import SimpleNamespace

import numpy as np
import pytest

from bayesim.bnn import ModelConfig, build_model, predict_probs, save_model
from bayesim.bnn.evaluate import evaluate_model
from bayesim.cli import main
from bayesim.metrics import summarize

SPLIT_KEYS = {"n", "accuracy", "nll", "brier", "ece", "mean_total_entropy", "mean_aleatoric", "mean_epistemic",
              "subset", "source"}


def _splits(n=30):
    g = np.random.default_rng(0)
    return {name: SimpleNamespace(x=g.normal(size=(n, 1, 28, 28)).astype(np.float32),
                                  y=g.integers(0, 10, n).astype(np.int64), subset=True, source="synthetic")
            for name in ("mnist", "ambiguous", "ood")}


@pytest.fixture()
def model_path(tmp_path):
    model = build_model(ModelConfig(arch="mlp", widths=[16]))
    return save_model(model, tmp_path / "m.safetensors"), model


def test_evaluate_model_keys_and_values(model_path):
    _, model = model_path
    splits = _splits()
    m = evaluate_model(model, splits, samples=4, seed=3, model_info={"kind": "checkpoint"})
    for s in ("mnist", "ambiguous", "ood"):
        assert SPLIT_KEYS <= set(m[s])
    assert set(m["auroc"]) == {"ood_vs_in_mi", "ood_vs_in_total", "ood_vs_mnist_mi", "ambiguous_vs_mnist_aleatoric"}
    for k in ("model", "strategy", "bits", "memory", "samples", "seed", "wall_time_s", "normalization"):
        assert k in m
    # the numbers are those of bayesim.metrics on the interface's predictive samples
    ref = summarize({k: predict_probs(model, v.x, 4, 3) for k, v in splits.items()},
                    {k: v.y for k, v in splits.items()})
    assert m["mnist"]["accuracy"] == ref["mnist"]["accuracy"]
    assert m["auroc"]["ood_vs_mnist_mi"] == ref["auroc"]["ood_vs_mnist_mi"]
    assert m["samples"] == 4 and m["seed"] == 3 and m["strategy"] == "fp"


def test_evaluate_cli_with_strategy(model_path, tmp_path, monkeypatch):
    import bayesim.data

    path, _ = model_path
    monkeypatch.setattr(bayesim.data, "load_test_splits", lambda *a, **k: _splits())
    out = tmp_path / "ev"
    rc = main(["evaluate", "--model", str(path), "--samples", "3", "--strategy", "jq", "--bits", "4",
               "--w-bits", "3", "--activation", "bounded", "--act-upper", "2.0", "--act-bits", "4",
               "--out", str(out)])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["strategy"] == "jq" and m["bits"] == {"mu": 4, "sigma": 4, "w": 3, "act": 4}
    assert m["memory"]["reduction_before_overhead"] == 8.0
    assert m["activation"]["kind"] == "bounded"


@pytest.mark.parametrize("args, msg", [
    (["--strategy", "xq"], "choose one of fp, vpq, spq, jq"),
    (["--bits", "17"], "1..16"),
    (["--mu-bits", "0"], "1..16"),
    (["--act-bits", "4", "--activation", "relu"], "bounded"),
    (["--arch", "lenet5"], "lenet5"),
])
def test_evaluate_bad_input_writes_nothing(model_path, tmp_path, monkeypatch, capsys, args, msg):
    import bayesim.data

    path, _ = model_path
    monkeypatch.setattr(bayesim.data, "load_test_splits", lambda *a, **k: _splits())
    out = tmp_path / "ev"
    assert main(["evaluate", "--model", str(path), *args, "--out", str(out)]) == 2
    assert msg in capsys.readouterr().err
    assert not out.exists()


def test_evaluate_empty_split_is_refused(model_path, tmp_path, monkeypatch, capsys):
    import bayesim.data

    path, _ = model_path
    splits = _splits()
    splits["ambiguous"] = SimpleNamespace(x=np.zeros((0, 1, 28, 28), np.float32), y=np.zeros(0, np.int64))
    monkeypatch.setattr(bayesim.data, "load_test_splits", lambda *a, **k: splits)
    out = tmp_path / "ev"
    assert main(["evaluate", "--model", str(path), "--out", str(out)]) == 2
    assert "'ambiguous' is empty" in capsys.readouterr().err
    assert not out.exists()


def test_summary_table_says_units_subset_and_leaves_ood_labels_out():
    from bayesim.bnn.evaluate import summary_table

    m = {s: {"accuracy": 0.5, "nll": 1.0, "ece": 0.1, "mean_total_entropy": 0.7, "mean_aleatoric": 0.4,
             "mean_epistemic": 0.3, "subset": s != "ambiguous"} for s in ("mnist", "ambiguous", "ood")}
    rows = summary_table(m).splitlines()
    assert rows[1].split() == ["mnist", "0.5000", "1.0000", "0.1000", "0.7000", "0.4000", "0.3000"]
    assert rows[3].split() == ["ood", "0.7000", "0.4000", "0.3000"]
    assert "(nll and entropies in nats)" in rows and "[EMBEDDED SUBSET of the test splits: mnist, ood]" in rows
    m["mnist"]["subset"] = m["ood"]["subset"] = False
    assert "EMBEDDED" not in summary_table(m)


@pytest.mark.parametrize("args, warned", [
    (["--strategy", "spq", "--bits", "4", "--sigma-bits", "3"],
     ["--sigma-bits 3 has no effect with --strategy spq: it quantizes the sampled weights only (--w-bits); "
      "the flag is ignored"]),
    (["--strategy", "spq", "--mu-bits", "5", "--w-bits", "3"], ["--mu-bits 5 has no effect with --strategy spq"]),
    (["--strategy", "vpq", "--w-bits", "3"],
     ["--w-bits 3 has no effect with --strategy vpq: it quantizes the stored mu and sigma only (--mu-bits, "
      "--sigma-bits); the flag is ignored"]),
    (["--strategy", "jq", "--mu-bits", "5", "--sigma-bits", "3", "--w-bits", "3"], []),
    (["--strategy", "spq", "--bits", "4"], []),
])
def test_bit_flags_the_strategy_does_not_use_are_named(model_path, tmp_path, monkeypatch, capsys, args, warned):
    """A bit flag the strategy never quantizes with is not dropped without a word: one warning line names the
    flag and the strategy (bayesim run has no rule to follow: its bits keys all have defaults)."""
    import bayesim.data

    path, _ = model_path
    monkeypatch.setattr(bayesim.data, "load_test_splits", lambda *a, **k: _splits())
    assert main(["evaluate", "--model", str(path), "--samples", "2", *args, "--out", str(tmp_path / "ev")]) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "has no effect" in ln]
    assert len(lines) == len(warned)
    for line, text in zip(lines, warned):
        assert line.startswith(f"bayesim: warning: {text}"), line
