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


def test_init_from_a_relu_model_keeps_the_configs_clip_level_and_checks_values(tmp_path):
    """A ReLU checkpoint's `upper` tensors are placeholders: QAT with a bounded activation starts from the
    config's clip level, not from them; a bounded checkpoint's own levels are kept; bad tensors are refused."""
    from bayesim.errors import BayesimError

    x, y = _task(300, 6)
    relu, _ = train(_cfg(epochs=1), x, y, log=None)
    path = save_model(relu, tmp_path / "relu.safetensors")
    bounded = {"arch": "mlp", "widths": [32], "activation": {"kind": "bounded", "upper": 4.0, "learn_upper": False}}
    qat, _ = train(_cfg(epochs=1, init_from=str(path), model=bounded), x, y, log=None)
    assert qat.activation_uppers() == [4.0]
    with torch.no_grad():
        qat.layers[2].upper.fill_(2.5)
    b2 = save_model(qat, tmp_path / "b2.safetensors")
    again, _ = train(_cfg(epochs=1, init_from=str(b2), model=bounded), x, y, log=None)
    assert again.activation_uppers() == [2.5]  # a bounded checkpoint's own clip level is the start
    with torch.no_grad():
        qat.layers[1].rho_w.fill_(-200.0)  # sigma = softplus(-200) = 0 in float32
    bad = save_model(qat, tmp_path / "bad.safetensors")
    with pytest.raises(BayesimError, match=r"bad.safetensors: tensor .layers.1.rho_w. gives sigma <= 0"):
        train(_cfg(epochs=1, init_from=str(bad), model=bounded), x, y, log=None)


def test_train_refuses_too_few_classes_bad_out_and_bad_results_before_writing(tmp_path, monkeypatch, capsys):
    import bayesim.data

    x, y = _task(300, 7)
    with pytest.raises(ConfigError, match=r"model.num_classes: 9 is too small: the training labels go from 0 to 9"):
        train(_cfg(epochs=1, model={"arch": "mlp", "widths": [8], "num_classes": 9}), x, y, log=None)
    monkeypatch.setattr(bayesim.data, "load_train", lambda data_dir=None, seed=0: (x, y))
    from bayesim.bnn.train import train_and_save

    with pytest.raises(ConfigError, match=r"^c9\.yaml: model.num_classes: 9 is too small"):  # names the config
        train_and_save(_cfg(epochs=1, model={"arch": "mlp", "widths": [8], "num_classes": 9}),
                       out=str(tmp_path / "m9.safetensors"), source="c9.yaml", log=None)
    assert not (tmp_path / "m9.safetensors").exists()
    calls = []
    monkeypatch.setattr("bayesim.bnn.train.train", lambda *a, **k: calls.append(1) or (_ for _ in ()).throw(
        AssertionError("trained before the output path was checked")))
    cfg = tmp_path / "t.yaml"
    (tmp_path / "afile").write_text("x")
    for out, why in ((tmp_path, "is a folder"), (tmp_path / "afile" / "m.safetensors", "is not a folder"),
                     ("/proc/m.safetensors", "/proc is")):
        cfg.write_text(f"model: {{arch: mlp, widths: [8]}}\nepochs: 1\nout: {out}\nprogress: false\n")
        assert main(["train", str(cfg)]) == 2
        err = capsys.readouterr().err
        assert f"t.yaml: out {out}" in err and why in err, err
    assert not calls
    cfg.write_text("model: {arch: mlp, widths: [8]}\nepochs: 1\nprogress: false\n")
    assert main(["train", str(cfg), "--epochs", "0"]) == 2
    assert "t.yaml (with --epochs): epochs: 0 is out of range" in capsys.readouterr().err
    for key, value in (("init_rho", -200), ("prior_sigma", 1e-30), ("num_threads", 10 ** 12)):
        body = (f"model: {{arch: mlp, widths: [8], {key}: {value}}}\n" if key != "num_threads"
                else f"model: {{arch: mlp, widths: [8]}}\n{key}: {value}\n")
        cfg.write_text(body + "epochs: 1\nprogress: false\n")
        assert main(["train", str(cfg)]) == 2
        assert f"{key}: " in capsys.readouterr().err


def test_limit_is_a_seeded_draw_over_the_whole_training_set():
    """--limit on MNIST followed by Ambiguous-MNIST: a seeded random subset of both parts (its first rows
    would be MNIST only), N_train = the rows kept, and the negative ELBO per image is nll + KL/N."""
    from bayesim.bnn.train import limit_rows

    x, y = _task(400, 0)
    part = np.repeat([0, 1], 200)  # which half a row comes from
    xs, ps = limit_rows(x, part, 100, seed=3)
    assert len(ps) == 100 and 30 <= int(ps.sum()) <= 70  # binomial(100, 1/2): 30..70 is beyond 8 sigma
    np.testing.assert_array_equal(limit_rows(x, part, 100, seed=3)[1], ps)  # seeded
    assert not np.array_equal(limit_rows(x, part, 100, seed=4)[1], ps)
    rows = np.flatnonzero((x[:, None] == xs[None]).all(axis=(2, 3, 4)))
    assert np.all(np.diff(rows) > 0)  # kept in their original order
    assert limit_rows(x, part, 400, seed=3)[0] is x
    _, hist = train(_cfg(epochs=1, data={"limit": 100}), x, y, log=None)
    assert hist[0]["rows"] == 100
    assert hist[0]["neg_elbo"] == pytest.approx(hist[0]["nll"] + hist[0]["kl"] / 100)
    _, whole = train(_cfg(epochs=1, data={"limit": 10 ** 6}), x, y, log=None)
    assert whole[0]["rows"] == 400


def test_train_cli_init_from_beside_the_config_or_named_with_both_places(tmp_path, capsys, monkeypatch):
    from bayesim.cli.train import _init_from_beside_config

    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "fp.safetensors").write_bytes(b"x")
    cfg = _cfg(init_from="fp.safetensors")
    monkeypatch.chdir(tmp_path)
    assert _init_from_beside_config(cfg, tmp_path / "cfg" / "t.yaml").init_from == str(tmp_path / "cfg" / "fp.safetensors")
    (tmp_path / "here.safetensors").write_bytes(b"x")
    assert _init_from_beside_config(_cfg(init_from="here.safetensors"), tmp_path / "cfg" / "t.yaml").init_from == \
        "here.safetensors"  # not beside the config: the current folder's
    (tmp_path / "t.yaml").write_text("model: {arch: mlp, widths: [8]}\ninit_from: m/none.safetensors\n")
    assert main(["train", str(tmp_path / "t.yaml")]) == 2
    assert (f"t.yaml: init_from: m/none.safetensors: checkpoint not found (looked beside the config, in "
            f"{tmp_path / 'm'}, and in {tmp_path / 'm'})") in capsys.readouterr().err


def test_training_runs_on_the_thread_count_it_records_whatever_loading_did(monkeypatch, tmp_path):
    """Data loading may change torch's thread count (the Ambiguous-MNIST generator runs on one thread): training
    must still run on `num_threads`, record that count per epoch, and give the caller's setting back. The same
    seed and thread count give identical weights; 1 and 2 threads differ at most in the last bits (torch splits
    matrix products and sums by thread count)."""
    import torch.nn.functional as F

    import bayesim.data
    from bayesim.bnn.train import train_and_save

    x, y = _task(256, 8)

    def loader(data_dir=None, seed=0):
        torch.set_num_threads(1)  # as a loader that leaves torch on one thread
        return x, y
    monkeypatch.setattr(bayesim.data, "load_train", loader)
    seen = []
    ce = F.cross_entropy
    monkeypatch.setattr(F, "cross_entropy", lambda *a, **k: seen.append(torch.get_num_threads()) or ce(*a, **k))
    before = torch.get_num_threads()
    weights = {}
    try:
        for run, threads in enumerate((2, 1, 2)):
            torch.set_num_threads(3)  # the caller's own setting
            seen.clear()
            cfg = _cfg(epochs=2, batch_size=32, num_threads=threads)
            model, hist, path = train_and_save(cfg, out=str(tmp_path / f"m{run}.safetensors"), log=None)
            assert set(seen) == {threads} and [h["torch_threads"] for h in hist] == [threads, threads]
            _, meta = load_model(path)
            assert meta["training"]["num_threads"] == threads
            assert [h["torch_threads"] for h in meta["history"]] == [threads, threads]
            assert torch.get_num_threads() == 3
            sd = {k: v.clone() for k, v in model.state_dict().items()}
            if threads in weights:
                assert all(torch.equal(sd[k], weights[threads][k]) for k in sd)  # same seed, same threads
            weights[threads] = sd
    finally:
        torch.set_num_threads(before)
    diff = max(float((weights[1][k] - weights[2][k]).abs().max()) for k in weights[1])
    assert diff < 1e-4, diff


def test_divergence_names_the_learning_rate_and_the_step(tmp_path, monkeypatch, capsys):
    import bayesim.data

    x, y = _task(256, 9)
    monkeypatch.setattr(bayesim.data, "load_train", lambda data_dir=None, seed=0: (x, y))
    cfg = tmp_path / "t.yaml"
    out = tmp_path / "m.safetensors"
    cfg.write_text(f"model: {{arch: mlp, widths: [16]}}\nepochs: 3\nbatch_size: 64\nlr: 1e30\nout: {out}\n"
                   "progress: false\n")
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"bayesim: error: {cfg}: lr: 1e+30 is too large: training diverged "
                                               "at epoch "), err
    assert "(step " in err[0] and "lower it (e.g. to 1e+29)" in err[0], err
    assert not out.exists()


def test_train_config_data_dir_is_beside_the_config_or_named_with_its_key(tmp_path, capsys, monkeypatch):
    """A relative data.data_dir was taken from the current folder only, and a missing one was reported as missing
    data files (after a download attempt) without the key: now it follows the rule of data.dir in run configs."""
    import bayesim.data

    x, y = _task(128, 10)
    seen = []
    monkeypatch.setattr(bayesim.data, "load_train", lambda data_dir=None, seed=0: seen.append(data_dir) or (x, y))
    (tmp_path / "cfg" / "mydata").mkdir(parents=True)
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    cfg = tmp_path / "cfg" / "t.yaml"
    body = f"model: {{arch: mlp, widths: [8]}}\nepochs: 1\nout: {tmp_path / 'm.safetensors'}\nprogress: false\n"
    cfg.write_text(body + "data: {data_dir: mydata}\n")
    assert main(["train", str(cfg)]) == 0
    assert seen == [str(tmp_path / "cfg" / "mydata")]  # beside the config, not in the current folder
    (tmp_path / "run" / "here").mkdir()
    cfg.write_text(body + "data: {data_dir: here}\n")
    assert main(["train", str(cfg)]) == 0
    assert seen[-1] == "here"  # not beside the config: the current folder's
    assert main(["train", str(cfg), "--data-dir", "here"]) == 0 and seen[-1] == "here"  # a flag: the current folder
    cfg.write_text(body + "data: {data_dir: nowhere/d}\n")
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"bayesim: error: {cfg}: data.data_dir: nowhere/d: folder not found (looked beside the config, in "
                   f"{tmp_path / 'cfg' / 'nowhere' / 'd'}, and in {tmp_path / 'run' / 'nowhere' / 'd'}); expected the "
                   "data folder (mnist/ and fashion-mnist/ IDX files), or null for $BAYESIM_DATA / the user cache")
    assert len(seen) == 3


def test_a_named_pipe_as_init_from_or_import_checkpoint_is_not_called_missing(tmp_path, capsys):
    """A FIFO where a checkpoint file is expected was reported as 'checkpoint not found' (train's init_from) or
    'file not found' (import-pyro's config); it is there, but not a regular file."""
    import os

    fifo = tmp_path / "m.safetensors"
    os.mkfifo(fifo)
    cfg = tmp_path / "t.yaml"
    cfg.write_text(f"model: {{arch: mlp, widths: [8]}}\ninit_from: {fifo.name}\nout: {tmp_path / 'o.safetensors'}\n")
    assert main(["train", str(cfg)]) == 2
    assert capsys.readouterr().err.strip() == (f"bayesim: error: {cfg}: init_from: {fifo}: is not a regular file (a "
                                               "named pipe); expected a bayesim checkpoint (.safetensors)")
    ip = tmp_path / "ip.yaml"
    ip.write_text(f"checkpoint: {fifo.name}\narch: mlp\nout: o.safetensors\n")
    assert main(["import-pyro", "--config", str(ip)]) == 2
    assert capsys.readouterr().err.strip() == (f"bayesim: error: {ip}: checkpoint: {fifo}: is not a regular file (a "
                                               "named pipe); expected a Pyro parameter-store file (.pt)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ip.yaml", "m.safetensors", "t.yaml"]
