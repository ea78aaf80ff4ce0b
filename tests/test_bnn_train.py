"""SVI training and quantization-aware training on a tiny synthetic task; the train CLI."""
import numpy as np
import pytest
import torch

from bayesim.bnn import load_model, predict_probs, save_model
from bayesim.bnn.train import TrainConfig, train
from bayesim.cli import main
from bayesim.config.schema import build
from bayesim.errors import ConfigError


def _task(n, seed):
    """10 classes, each a bright horizontal band at its own rows, under unit Gaussian noise."""
    g = np.random.default_rng(seed)
    y = g.integers(0, 10, n)
    x = g.normal(size=(n, 1, 28, 28)).astype(np.float32)
    rows = 2 * y + 4
    for d in range(2):
        x[np.arange(n), 0, rows + d, :] += 0.8
    return x, y.astype(np.int64)


def _acc(model, x, y, samples=4):
    return float((predict_probs(model, x, samples, seed=0).mean(0).argmax(1) == y).mean())


def _cfg(**kw):
    base = {"model": {"arch": "mlp", "widths": [32]}, "epochs": 2, "batch_size": 64, "lr": 3e-3,
            "progress": False, "num_threads": 2}
    base.update(kw)
    return build(TrainConfig, base)


def test_qat_run_learns():
    x, y = _task(1500, 0)
    xt, yt = _task(500, 1)
    cfg = _cfg(model={"arch": "mlp", "widths": [32],
                      "activation": {"kind": "bounded", "upper": 4.0, "bits": 4},
                      "quant": {"strategy": "jq", "mu_bits": 4, "sigma_bits": 4, "w_bits": 4}})
    torch.manual_seed(0)
    from bayesim.bnn import build_model

    before = _acc(build_model(cfg.model), xt, yt)
    model, hist = train(cfg, x, y, log=None)
    after = _acc(model, xt, yt)
    assert before < 0.3 and after > 0.85, (before, after)
    assert hist[-1]["loss"] < hist[0]["loss"]
    # the frozen model's weights are on the 4-bit grids
    ops = model.export_ops()
    q = ops[-1].quant
    assert q.strategy == "jq" and np.abs(np.rint(ops[-1].mu_w / q.mu_step)).max() <= 7


def test_qat_from_fp_checkpoint_and_kl_warmup(tmp_path):
    x, y = _task(1500, 2)
    xt, yt = _task(500, 3)
    fp, _ = train(_cfg(), x, y, log=None)
    path = save_model(fp, tmp_path / "fp.safetensors")
    qat_cfg = _cfg(epochs=1, kl_warmup_epochs=2.0, init_from=str(path),
                   model={"arch": "mlp", "widths": [32], "quant": {"strategy": "spq", "w_bits": 3}})
    qat, hist = train(qat_cfg, x, y, log=None)
    assert hist[0]["beta"] < 0.5  # warm-up still ramping in the first epoch
    assert _acc(qat, xt, yt) > 0.85
    wrong = _cfg(init_from=str(path), model={"arch": "lenet5"})
    with pytest.raises(ConfigError, match="init_from"):
        train(wrong, x, y, log=None)


def test_train_cli_writes_checkpoint(tmp_path, monkeypatch):
    import bayesim.data

    x, y = _task(600, 4)
    monkeypatch.setattr(bayesim.data, "load_train", lambda data_dir=None, seed=0: (x, y))
    cfg = tmp_path / "t.yaml"
    out = tmp_path / "m.safetensors"
    cfg.write_text("model: {arch: mlp, widths: [16]}\nepochs: 1\nbatch_size: 64\nlr: 0.003\n"
                   f"out: {out}\nprogress: false\n")
    assert main(["train", str(cfg)]) == 0
    model, meta = load_model(out)
    assert meta["training"]["epochs"] == 1 and meta["metrics"]["train"]["accuracy"] > 0.2
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {arch: mlp}\nepochz: 1\n")
    assert main(["train", str(bad)]) == 2
    assert not (tmp_path / "model.safetensors").exists()


def test_learned_ranges_train_and_survive_freezing():
    x, y = _task(1500, 5)
    cfg = _cfg(epochs=2, model={"arch": "mlp", "widths": [32],
                                "activation": {"kind": "bounded", "upper": 3.0, "bits": 3, "learn_upper": True},
                                "quant": {"strategy": "vpq", "mu_bits": 3, "sigma_bits": 2, "range": "learned"}})
    from bayesim.bnn import build_model

    torch.manual_seed(0)
    init = build_model(cfg.model).bayes_layers[0].mu_step.item()
    model, _ = train(cfg, x, y, log=None)
    lay = model.bayes_layers[0]
    assert lay.mu_step.item() != pytest.approx(init, rel=1e-3)  # the step was trained, not recalibrated
    assert model.export_ops()[1].quant.mu_step == pytest.approx(lay.mu_step.item())
    assert model.layers[2].upper.item() != 3.0  # PACT clip level learned
    assert _acc(model, *_task(300, 6)) > 0.8
