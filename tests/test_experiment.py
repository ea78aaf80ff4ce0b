"""`bayesim run`: config validation, the end-to-end runner and its metrics.json."""
import json

import numpy as np
import pytest

from bayesim.cli import main
from bayesim.errors import BayesimError, ConfigError
from bayesim.experiment import load_experiment, run_experiment

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import torch

    from bayesim.bnn import ModelConfig, build_model, save_model
    from bayesim.config import build

    torch.manual_seed(0)
    cfg = build(ModelConfig, {"arch": "lenet5", "init_rho": -4.0,
                              "activation": {"kind": "bounded", "upper": 4.0}})
    path = tmp_path_factory.mktemp("model") / "lenet.safetensors"
    save_model(build_model(cfg), path)
    return path


def _cfg(checkpoint, **hw):
    return {"name": "t", "model": {"source": "checkpoint", "path": str(checkpoint)},
            "data": {"embedded": True, "limit": 40}, "samples": 2, "seed": 1,
            "hardware": {"device": "ideal", "crossbar": "ideal", "strategy": "fp", **hw}}


def test_ideal_hardware_matches_software_reference(checkpoint, tmp_path):
    cfg = load_experiment(None, base=_cfg(checkpoint))
    r = run_experiment(cfg, tmp_path, progress=False, log=None)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["strategy"] == "fp" and on_disk["samples"] == 2
    for split in ("mnist", "ambiguous", "ood"):
        assert r[split]["subset"] is True and r[split]["n"] == 40
        for k, v in r["delta"][split].items():
            assert abs(v) < 1e-5, (split, k, v)
    assert set(r["auroc"]) == {"ood_vs_in_mi", "ood_vs_in_total", "ood_vs_mnist_mi", "ambiguous_vs_mnist_aleatoric"}
    assert r["hardware"]["tiles"] >= 5 and r["hardware"]["adc_conversions_per_inference"] > 0


def test_pcm_jq_run_reports_memory_energy_and_differs_from_software(checkpoint, tmp_path):
    cfg = load_experiment(None, base=_cfg(checkpoint, device="pcm", crossbar="default", strategy="jq",
                                          bits={"mu": 4, "sigma": 4, "w": 4}))
    r = run_experiment(cfg, None, progress=False, log=None)
    assert r["model"]["quantization"] == "post-training quantization"
    from bayesim.experiment import result_table

    text = result_table(r)
    assert "model lenet5 checkpoint | post-training quantization" in text
    assert "the deltas include the weight quantization: post-training here" in text
    assert r["memory"]["reduction_vs_fp32"] == pytest.approx(8.0, rel=0.01)
    assert r["bits"] == {"mu": 4, "sigma": 4, "w": 4, "act": None, "dac": 8, "adc": 8}
    assert r["hardware"]["energy_per_inference_J"]["total"] > 0
    # one inference = one image's Bayesian prediction, all S = 2 passes; per pass, one conversion per output
    # and row tile (256 rows): conv1 6x28x28, conv2 16x10x10, fc1 120 x 2 row tiles (400 inputs), fc2 84, fc3 10
    assert r["hardware"]["adc_conversions_per_inference"] == 2 * (4704 + 1600 + 240 + 84 + 10)
    assert max(abs(v) for v in r["delta"]["mnist"].values()) > 0
    # programming: the stored mu pair and sigma cell of every weight once, apart from the per-sample events
    # (calibration's are not counted); JQ reprograms the two cells of every weight for each sample and split
    from bayesim.crossbar import load_crossbar

    hwd = r["hardware"]
    weights = sum(layer["in"] * layer["out"] for layer in hwd["layers"])
    assert hwd["stored_program_events"] == 3 * weights
    assert hwd["stored_program_energy_J"] == pytest.approx(3 * weights * load_crossbar(REPO / "crossbars" / "default.yaml").energy.program_J)
    assert hwd["program_events"] == 3 * 2 * 2 * weights  # 3 splits x S = 2 x the 2 cells of a weight
    area = load_crossbar(REPO / "crossbars" / "default.yaml").cell_area_um2
    assert hwd["cells"] == 5 * weights and hwd["cell_area_um2"] == area > 0  # stored 3 + programmed 2 per weight
    assert hwd["array_area_mm2"] == pytest.approx(5 * weights * area * 1e-6)


def test_bad_config_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("hardware:\n  strategi: jq\n")
    out = tmp_path / "out"
    assert main(["run", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.yaml: hardware.strategi: unknown key" in err[0] and "did you mean 'strategy'" in err[0]
    assert not out.exists()
    assert main(["run", "--out", ""]) == 2
    assert "--out is empty" in capsys.readouterr().err
    assert main(["run", "--set", "hardware.bits.w=17", "--out", str(out)]) == 2
    assert "hardware.bits.w: 17 is out of range; allowed [1, 16]" in capsys.readouterr().err
    assert main(["run", "--set", "hardware.crossbar=nosuch", "--out", str(out)]) == 2
    assert "<built-in quickstart> (--set): hardware.crossbar: no crossbar card 'nosuch'" in capsys.readouterr().err
    dev = tmp_path / "dev.yaml"
    dev.write_text("hardware: {device: nosuch}\n")
    assert main(["run", str(dev), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"bayesim: error: {dev}: hardware.device: unknown device 'nosuch'")
    assert "pcm" in err[0]
    assert not out.exists()


def test_config_validation_rules():
    with pytest.raises(ConfigError, match="model.source 'pyro' needs model.arch"):
        load_experiment(None, base={"model": {"source": "pyro", "path": "x.pt"}})
    with pytest.raises(ConfigError, match="splits"):
        load_experiment(None, base={"data": {"splits": ["mnist", "mnist"]}})


def test_pyro_imported_model_runs_on_crossbars(shared_models_dir):
    """The lab's Pyro MLP goes through the same runner as a trained model: on the ideal crossbar it gives
    the software model's metrics; through the default card's 8-bit DAC and ADC it keeps its accuracy
    (its normalised pixels are negative on the background: an unsigned DAC clipped them to zero and cost
    11 points); on PCM at JQ 4 bits it is post-training quantized."""
    base = {"name": "pyro", "model": {"source": "pyro", "path": str(shared_models_dir / "pfp_svi_mlp_e40.pt"),
                                      "arch": "mlp"},
            "data": {"embedded": True, "limit": 300, "splits": ["mnist", "ood"]}, "samples": 4, "seed": 2,
            "hardware": {"device": "ideal", "crossbar": "ideal", "strategy": "fp"}}
    r = run_experiment(load_experiment(None, base=base), None, progress=False, log=None)
    assert r["software_fp32"]["mnist"]["accuracy"] > 0.95  # the reference model, imported correctly
    for split in ("mnist", "ood"):
        for k, v in r["delta"][split].items():
            assert abs(v) < 1e-5, (split, k, v)
    base["hardware"]["crossbar"] = "default"
    r = run_experiment(load_experiment(None, base=base), None, progress=False, log=None)
    assert r["hardware"]["dac_clip_rate"] == 0.0
    assert abs(r["delta"]["mnist"]["accuracy"]) <= 0.02  # measured -0.002 (unsigned DAC: -0.108)
    base["hardware"] = {"device": "pcm", "crossbar": "default", "strategy": "jq", "bits": {"mu": 4, "sigma": 4, "w": 4}}
    r = run_experiment(load_experiment(None, base=base), None, progress=False, log=None)
    assert r["model"]["quantization"] == "post-training quantization"
    # measured 0.82 on 500 images; 4-bit post-training quantization alone (ideal crossbar) gives 0.80
    assert r["mnist"]["accuracy"] > 0.7 and max(abs(v) for v in r["delta"]["mnist"].values()) > 0


def test_adc_calibration_source(data_dir, tmp_path):
    """The ADC ranges are fitted on MNIST training images whenever the data folder has them (embedded runs
    too), on the mnist split only when it has not (and the source says so); a corrupt training file is an
    error naming it, not a silent fallback."""
    import shutil

    from bayesim.data import load_test_splits
    from bayesim.errors import DataError
    from bayesim.experiment.runner import calibration_images

    splits = load_test_splits(data_dir, embedded=True, limit=300, progress=False)
    x, source = calibration_images(data_dir, "mnist", splits)
    assert source == "first 256 MNIST training images" and x.shape == (256, 1, 28, 28)
    assert not any(np.array_equal(x[0], img) for img in splits["mnist"].x)  # not an evaluated image

    empty = tmp_path / "no_train"
    (empty / "mnist").mkdir(parents=True)
    x, source = calibration_images(empty, "mnist", splits)
    assert source.startswith("first 256 images of split 'mnist', images that are also evaluated (no MNIST training "
                             "files in")
    np.testing.assert_array_equal(x, splits["mnist"].x[:256])
    small = load_test_splits(data_dir, embedded=True, limit=40, progress=False)
    x, source = calibration_images(empty, "mnist", small)
    assert x.shape[0] == 40 and source.startswith("first 40 images of split 'mnist'")

    corrupt = tmp_path / "corrupt"
    shutil.copytree(data_dir / "mnist", corrupt / "mnist")
    (corrupt / "mnist" / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        calibration_images(corrupt, "mnist", splits)


def test_ir_drop_is_reported_and_first_order_out_of_range_warns(checkpoint, tmp_path):
    """The run reports the largest IR-drop loss of any cell; the first-order model warns beyond its range."""
    from bayesim.experiment import result_table

    (tmp_path / "wires.yaml").write_text("name: wires\ntile: {rows: 64, cols: 64}\n"
                                         "ir_drop: {model: first_order, r_wire_ohm: 1.0}\n")
    (tmp_path / "long.yaml").write_text("name: long\ntile: {rows: 256, cols: 256}\n"
                                        "ir_drop: {model: first_order, r_wire_ohm: 3.0}\n")
    drops = {}
    for card in ("wires", "long"):
        cfg = load_experiment(None, base=_cfg(checkpoint, device="pcm", crossbar=str(tmp_path / f"{card}.yaml"),
                                              strategy="fp"))
        r = run_experiment(cfg, None, progress=False, log=None)
        drops[card] = r["hardware"]["ir_drop_max"]
        text = result_table(r)
        assert f"IR drop: a cell loses up to {drops[card]:.1%}" in text
        assert ("WARNING: the first-order IR-drop model is outside its range" in text) == (drops[card] > 0.2)
    assert 0 < drops["wires"] < 0.2 < drops["long"] < 1
    # beyond a whole cell's current the first-order model would give negative conductances: refused
    (tmp_path / "broken.yaml").write_text("name: broken\ntile: {rows: 256, cols: 256}\n"
                                          "ir_drop: {model: first_order, r_wire_ohm: 30.0}\n")
    cfg = load_experiment(None, base=_cfg(checkpoint, device="pcm", crossbar=str(tmp_path / "broken.yaml"),
                                          strategy="fp"))
    with pytest.raises(BayesimError, match=r"broken.yaml: ir_drop.model first_order: the first-order drop "
                                           r"of a cell is \d+% of its current .* use smaller tiles \(at most 16384 "
                                           r"cells also allow ir_drop.model: exact\) or a smaller"):
        run_experiment(cfg, tmp_path / "out", progress=False, log=None)
    assert not (tmp_path / "out" / "metrics.json").exists()
    # a tile the exact solve takes: the message offers it as it is
    (tmp_path / "small.yaml").write_text("name: small\ntile: {rows: 128, cols: 128}\n"
                                         "ir_drop: {model: first_order, r_wire_ohm: 200.0}\n")
    cfg = load_experiment(None, base=_cfg(checkpoint, device="pcm", crossbar=str(tmp_path / "small.yaml"),
                                          strategy="fp"))
    with pytest.raises(BayesimError, match=r"small.yaml: .* use ir_drop.model: exact, smaller tiles or a smaller"):
        run_experiment(cfg, None, progress=False, log=None)
    r = run_experiment(load_experiment(None, base=_cfg(checkpoint)), None, progress=False, log=None)
    assert r["hardware"]["ir_drop_max"] is None and "IR drop" not in result_table(r)


def test_read_time_ages_the_stored_arrays_and_compute_delay_the_programmed_cells(checkpoint):
    """SPQ stores nothing: its cells are programmed for each sample and read `compute_delay_s` later, so
    `read_time_s` does not change it; JQ's stored mu/sigma arrays are read `read_time_s` after programming."""
    def run(strategy, **hw):
        cfg = load_experiment(None, base=_cfg(checkpoint, device="pcm", crossbar="default", strategy=strategy,
                                              bits={"mu": 4, "sigma": 4, "w": 4}, **hw))
        r = run_experiment(cfg, None, progress=False, log=None)
        assert r["hardware"]["read_time_s"] == hw.get("read_time_s", 1.0)
        assert r["hardware"]["compute_delay_s"] == hw.get("compute_delay_s", 1.0)
        return r["mnist"]["nll"]
    spq = run("spq")
    assert run("spq", read_time_s=1e6) == spq
    assert run("spq", compute_delay_s=1e6) != spq
    jq = run("jq")
    assert run("jq", read_time_s=1e6) != jq


def test_drift_compensation_is_reported_and_recovers_the_drifted_run(checkpoint):
    """JQ on PCM read 1e6 s after programming: global drift compensation reports its per-tile gains (> 1: the
    cells lost conductance), prints them and changes the result (the test model is untrained: that the
    compensation restores the stored values is tested on a layer in test_crossbar_layer.py); SPQ, which
    stores nothing, warns that there is nothing to compensate."""
    from bayesim.experiment import result_table

    def run(strategy, **hw):
        cfg = load_experiment(None, base=_cfg(checkpoint, device="pcm", crossbar="default", strategy=strategy,
                                              bits={"mu": 4, "sigma": 4, "w": 4}, **hw))
        return run_experiment(cfg, None, progress=False, log=None)
    aged = run("jq", read_time_s=1e6)
    comp = run("jq", read_time_s=1e6, drift_compensation="global")
    assert aged["hardware"]["drift_compensation"] == "none"
    assert all(layer["drift_gains"] is None for layer in aged["hardware"]["layers"])
    assert comp["hardware"]["drift_compensation"] == "global"
    for layer in comp["hardware"]["layers"]:
        g = layer["drift_gains"]
        assert 1.2 < g["mu"]["min"] <= g["mu"]["mean"] <= g["mu"]["max"] < 3 and 1.2 < g["sigma"]["min"] < 3
    assert "drift compensation (global, per tile) at t = 1e+06 s: digital gains" in result_table(comp)
    assert comp["mnist"]["nll"] != aged["mnist"]["nll"]
    with pytest.warns(UserWarning, match="drift_compensation: global has nothing to compensate: strategy spq"):
        run("spq", drift_compensation="global")


def test_lumped_on_warns_where_it_falls_back_and_auto_is_gone(checkpoint, tmp_path):
    """`lumped: on` is exact for fp/vpq only: with jq the run warns that it draws per cell. The default is off
    (the lumped path pays a second GEMM per sample); the old value 'auto' is refused with the choices."""
    cfg = load_experiment(None, base=_cfg(checkpoint, device="pcm", crossbar="default", strategy="jq",
                                          bits={"mu": 4, "sigma": 4, "w": 4}, lumped="on"))
    with pytest.warns(UserWarning, match=r"hardware.lumped: on falls back to per-cell draws where the lumped noise "
                                         r"is not exact \(strategy jq, sampler digital\): sampled weights are "
                                         r"quantized"):
        r = run_experiment(cfg, None, progress=False, log=None)
    assert all(layer["path"] != "lumped" for layer in r["hardware"]["layers"])
    assert load_experiment(None, base=_cfg(checkpoint)).hardware.lumped == "off"
    with pytest.raises(ConfigError, match="hardware.lumped: 'auto' is not allowed; choose one of 'off', 'on'"):
        load_experiment(None, base=_cfg(checkpoint, lumped="auto"))


def test_a_named_data_folder_must_exist_even_with_the_embedded_subsets(checkpoint, tmp_path):
    base = _cfg(checkpoint)
    base["data"]["dir"] = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"data.dir: .*nowhere: folder not found; expected the data folder"):
        load_experiment(None, base=base)
    (tmp_path / "file").write_text("x")
    base["data"]["dir"] = str(tmp_path / "file")
    with pytest.raises(ConfigError, match=r"data.dir: .*file: not a folder"):
        load_experiment(None, base=base)


def test_table_warns_about_adc_saturation_sigma_shortfall_and_calibration_on_test_images(checkpoint):
    """The printed table states what would otherwise hide in metrics.json: an ADC saturating on more than 1% of
    its conversions, a device sampler realising far less sigma than trained, ADC ranges fitted on evaluated
    images. The ood split (no digit labels) shows only its uncertainties, in nats."""
    from bayesim.experiment import result_table

    cfg = load_experiment(None, base=_cfg(checkpoint, device="pcm", crossbar="default", strategy="vpq",
                                          bits={"mu": 4, "sigma": 4, "w": 4}, sampler="device"))
    r = run_experiment(cfg, None, progress=False, log=None)
    r["hardware"]["adc_calibration"] = "first 256 MNIST training images"  # as with the data folder's files
    text = result_table(r)
    short = [l["sigma_shortfall"]["mean_relative_shortfall"] for l in r["hardware"]["layers"]]
    assert max(short) > 0.1 and "WARNING: the device's own spread falls short of the trained sigma" in text
    assert "WARNING: the ADC saturated" not in text and "NOTE: the ADC ranges" not in text
    assert "ood        epistemic MI (nats)" in text and "ood        accuracy" not in text
    assert "mnist      accuracy" in text
    r["hardware"]["adc_saturation_rate"] = 0.0548
    r["hardware"]["adc_calibration"] = ("first 40 images of split 'mnist', images that are also evaluated (no MNIST "
                                        "training files in /x)")
    text = result_table(r)
    assert "WARNING: the ADC saturated on 5.5% of its conversions" in text
    assert "NOTE: the ADC ranges were calibrated on the first 40 images of split 'mnist', images that are also " \
           "evaluated" in text


def test_a_relative_data_dir_is_relative_to_the_config_file(checkpoint, tmp_path, monkeypatch):
    (tmp_path / "cfgs" / "dd").mkdir(parents=True)
    (tmp_path / "cfgs" / "c.yaml").write_text("name: q\ndata: {dir: dd}\n")
    monkeypatch.chdir(tmp_path)
    assert load_experiment(tmp_path / "cfgs" / "c.yaml").data.dir == str(tmp_path / "cfgs" / "dd")
    (tmp_path / "cfgs" / "c.yaml").write_text("name: q\ndata: {dir: here}\n")  # else the current folder
    (tmp_path / "here").mkdir()
    assert load_experiment(tmp_path / "cfgs" / "c.yaml").data.dir == "here"


def test_relative_card_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    import shutil

    (tmp_path / "cfgs" / "cards").mkdir(parents=True)
    shutil.copy(REPO / "devices" / "rram_wan2022.yaml", tmp_path / "cfgs" / "cards" / "dev.yaml")
    shutil.copy(REPO / "crossbars" / "irdrop.yaml", tmp_path / "cfgs" / "cards" / "xb.yaml")
    (tmp_path / "cfgs" / "c.yaml").write_text("name: q\nhardware: {device: cards/dev.yaml, crossbar: cards/xb.yaml}\n")
    monkeypatch.chdir(tmp_path)  # not the config's folder
    hw = load_experiment(tmp_path / "cfgs" / "c.yaml").hardware
    assert (hw.device, hw.crossbar) == (str(tmp_path / "cfgs" / "cards" / "dev.yaml"),
                                        str(tmp_path / "cfgs" / "cards" / "xb.yaml"))
    (tmp_path / "cfgs" / "c.yaml").write_text("name: q\nhardware: {device: pcm, crossbar: default}\n")
    hw = load_experiment(tmp_path / "cfgs" / "c.yaml").hardware
    assert (hw.device, hw.crossbar) == ("pcm", "default")  # names stay names


def test_card_names_stay_names_and_set_card_paths_are_relative_to_the_current_folder(tmp_path, monkeypatch):
    """A stray file called 'pcm' or 'default' beside the config does not replace the built-in names (nor the
    defaults the config does not write); a --set card path is the command line's, relative to the current
    folder."""
    import shutil

    cfgs = tmp_path / "cfgs"
    cfgs.mkdir()
    (cfgs / "pcm").write_text("not a card")
    (cfgs / "default").write_text("not a card")
    (cfgs / "c.yaml").write_text("name: q\nhardware: {device: pcm}\n")
    shutil.copy(REPO / "devices" / "rram_wan2022.yaml", cfgs / "mycard.yaml")
    shutil.copy(REPO / "devices" / "gaussian_mlc.yaml", tmp_path / "mycard.yaml")
    monkeypatch.chdir(tmp_path)
    hw = load_experiment(cfgs / "c.yaml").hardware
    assert (hw.device, hw.crossbar) == ("pcm", "default")
    hw = load_experiment(cfgs / "c.yaml", overrides=["hardware.device=mycard.yaml"]).hardware
    assert hw.device == "mycard.yaml"  # the current folder's (gaussian_mlc), not the config folder's


def test_a_normalization_unlike_the_models_is_pointed_out(checkpoint, tmp_path):
    """`run` normalises as data.normalization says, `evaluate` as the model does: a mismatch is said."""
    import warnings

    import torch

    from bayesim.bnn import ModelConfig, build_model, save_model
    from bayesim.config import build

    torch.manual_seed(0)
    own = tmp_path / "own.safetensors"
    save_model(build_model(build(ModelConfig, {"arch": "lenet5", "normalization": "own", "init_rho": -4.0,
                                               "activation": {"kind": "bounded", "upper": 4.0}})), own)
    base = _cfg(own)
    base["data"]["splits"] = ["mnist"]
    with pytest.warns(UserWarning, match=r"data.normalization: mnist differs from the checkpoint's own convention "
                                         r"\(own\)"):
        run_experiment(load_experiment(None, base=base), None, progress=False, log=None)
    base["data"]["normalization"] = "own"
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        r = run_experiment(load_experiment(None, base=base), None, progress=False, log=None)
    assert r["model"]["quantization"] == "none (fp)"  # strategy fp: quantization switched off
    from bayesim.experiment.runner import apply_strategy

    act4 = build_model(build(ModelConfig, {"arch": "lenet5", "activation": {"kind": "bounded", "upper": 4.0,
                                                                             "bits": 4}}))
    assert apply_strategy(act4, load_experiment(None, base=base).hardware)[1] == "fp weights, 4-bit activations"
    # a QAT model at its own bits is as trained; other activation bits than it was trained with are not
    qat = build_model(build(ModelConfig, {"arch": "lenet5", "activation": {"kind": "bounded", "upper": 4.0, "bits": 8},
                                          "quant": {"strategy": "jq", "mu_bits": 4, "sigma_bits": 4, "w_bits": 4}}))
    jq = {**base, "hardware": {**base["hardware"], "strategy": "jq", "bits": {"mu": 4, "sigma": 4, "w": 4}}}
    assert apply_strategy(qat, load_experiment(None, base=jq).hardware)[1] == "as trained"
    jq["hardware"]["bits"]["act"] = 1
    net, how = apply_strategy(qat, load_experiment(None, base=jq).hardware)
    assert how == "post-training quantization of the activations (weights as trained)"
    assert net.cfg.activation.bits == 1 and qat.cfg.activation.bits == 8
    jq["hardware"]["bits"]["w"] = 3  # the weights too
    assert apply_strategy(qat, load_experiment(None, base=jq).hardware)[1] == "post-training quantization"
    shipped = {"name": "t", "model": {"source": "default"}, "data": {"embedded": True, "limit": 20, "splits": ["mnist"],
                                                                   "normalization": "own"},
               "samples": 2, "hardware": {"device": "ideal", "crossbar": "ideal", "strategy": "fp"}}
    with pytest.warns(UserWarning, match=r"differs from the shipped model's own convention \(mnist\)"):
        run_experiment(load_experiment(None, base=shipped), None, progress=False, log=None)


def test_files_in_the_current_folder_do_not_take_card_names(tmp_path, monkeypatch):
    """A card reference is a path only when it ends in .yaml/.yml or has a folder separator: a folder called
    `default` or a file called `pcm` in the current folder leaves the names alone (an unknown name points at the
    stray file). A user's ./crossbars and ./devices cards are found by name, before shipped cards of that name."""
    import shutil

    from bayesim.devices import list_devices
    from bayesim.devices.registry import resolve_device
    from bayesim.experiment.runner import resolve_crossbar

    monkeypatch.chdir(tmp_path)
    (tmp_path / "default").mkdir()
    (tmp_path / "pcm").write_text("notes\n")
    _, path = resolve_crossbar(load_experiment(None, base={"name": "q"}))
    assert path == REPO / "crossbars" / "default.yaml"
    dev, card = resolve_device("pcm")
    assert dev.name == "pcm" and type(dev).__name__ == "ComposedDevice" and card is None
    with pytest.raises(ConfigError, match=r"no crossbar card 'pcm'; known cards: default, ideal, irdrop .*\(\./pcm "
                                          r"is a file in the current folder; a card path is written with a /"):
        resolve_crossbar(load_experiment(None, base={"name": "q", "hardware": {"crossbar": "pcm"}}))

    (tmp_path / "crossbars").mkdir()
    shutil.copy(REPO / "crossbars" / "irdrop.yaml", tmp_path / "crossbars" / "mine.yaml")
    (tmp_path / "crossbars" / "other.yaml").write_text(
        (REPO / "crossbars" / "ideal.yaml").read_text().replace("name: ideal", "name: default"))
    for ref, want in (("mine", "mine.yaml"), ("default", "other.yaml"), ("ideal", None)):
        _, path = resolve_crossbar(load_experiment(None, base={"name": "q", "hardware": {"crossbar": ref}}))
        assert path == (tmp_path / "crossbars" / want if want else REPO / "crossbars" / "ideal.yaml"), ref

    (tmp_path / "devices").mkdir()
    mine = tmp_path / "devices" / "copy.yaml"
    mine.write_text((REPO / "devices" / "gaussian_mlc.yaml").read_text().replace("g_max_uS: 40", "g_max_uS: 10"))
    dev, card = resolve_device("gaussian_mlc")
    assert dev.g_max == 10.0 and card.path == str(mine)
    rows = [r for r in list_devices() if r["name"] == "gaussian_mlc"]
    assert [r["where"] for r in rows] == [str(mine), str(REPO / "devices" / "gaussian_mlc.yaml")]
    assert "note" not in rows[0] and rows[1]["note"] == f"load it by path: the name 'gaussian_mlc' gives the card {mine}"


def test_metrics_name_the_device_card_and_a_signed_dac_clipping(checkpoint, tmp_path):
    """hardware.device_card is the card file the device came from (None for a built-in given by name); a signed
    DAC that clips has a fixed range too small for the inputs, and the warning says that."""
    import yaml

    from bayesim.experiment import result_table

    xb = tmp_path / "tiny_dac.yaml"
    d = yaml.safe_load((REPO / "crossbars" / "ideal.yaml").read_text())
    d["dac"] = {"bits": 8, "signed": True, "scaling": "fixed", "range": 1e-3}
    xb.write_text(yaml.safe_dump(d))
    dev = REPO / "devices" / "gaussian_mlc.yaml"
    r = run_experiment(load_experiment(None, base=_cfg(checkpoint, device=str(dev), crossbar=str(xb))), None,
                       progress=False, log=None)
    hw = r["hardware"]
    assert hw["device_card"] == str(dev) and hw["dac_signed"] is True and hw["dac_clip_rate"] > 0.5
    table = result_table(r)
    assert "fall outside its range (a fixed dac.range smaller than the inputs)" in table
    assert "unsigned" not in table
    r = run_experiment(load_experiment(None, base=_cfg(checkpoint)), None, progress=False, log=None)
    assert r["hardware"]["device_card"] is None and r["hardware"]["device"] == "ideal"


def test_a_log_sigma_array_finer_than_its_cells_and_more_levels_than_a_card_declares_are_said(checkpoint):
    """VPQ at 8 sigma bits on PCM lays 256 rungs, a factor 2 in sigma each, where the cells' noise spans about 3
    of them near sigma_max: the run warns (the stored sigmas read off by a factor ~2^3). At 4 bits it does not.
    SPQ at 8 bits on the RRAM card (16 published levels) asks 128 levels of a differential cell: a note."""
    from bayesim.experiment import result_table

    r = run_experiment(load_experiment(None, base=_cfg(checkpoint, device="pcm", crossbar="default", strategy="vpq",
                                                       bits={"mu": 8, "sigma": 8})), None, progress=False, log=None)
    lv = r["hardware"]["levels_per_cell"]
    assert (lv["mu"], lv["sigma"], lv["w"]) == (128, 256, None) and 2.5 < lv["sigma_noise_rungs"] < 4.0
    assert "WARNING: the stored sigma array's cells are noisier than its log ladder is fine" in result_table(r)
    r = run_experiment(load_experiment(None, base=_cfg(checkpoint, device="pcm", crossbar="default", strategy="vpq",
                                                       bits={"mu": 4, "sigma": 4})), None, progress=False, log=None)
    assert r["hardware"]["levels_per_cell"]["sigma_noise_rungs"] < 1.0 and "log ladder" not in result_table(r)
    r = run_experiment(load_experiment(None, base=_cfg(checkpoint, device="rram", crossbar="default", strategy="spq",
                                                       bits={"w": 8})), None, progress=False, log=None)
    lv = r["hardware"]["levels_per_cell"]
    assert (lv["mu"], lv["sigma"], lv["w"], lv["device_n_levels"], lv["sigma_noise_rungs"]) == (None, None, 128, 16, None)
    assert "NOTE: the device card declares 16 programmable levels; this run asks 128 for w per cell" in result_table(r)


def test_unknown_card_hints_point_only_at_files_and_empty_references_are_refused(tmp_path, monkeypatch, capsys):
    """An unknown name that is a folder in the current folder gets no './name' hint (a folder is no card; the hint
    used to suggest ./name, which then failed); '', '.' and '..' are no names and say what to give instead. An
    empty hardware.device / hardware.crossbar is refused naming the key, before any card is looked for."""
    from bayesim.devices.registry import resolve_device
    from bayesim.experiment.runner import resolve_crossbar

    monkeypatch.chdir(tmp_path)
    (tmp_path / "myfold").mkdir()
    (tmp_path / "mycard").write_text("name: x\n")
    for ref, hint in (("myfold", None), ("mycard", "(./mycard is a file in the current folder; a card path is written "
                                                   "with a / or a .yaml ending, e.g. ./mycard)"),
                      (".", "('.' is a folder, not a card: give a card name, or the path of a card file such as "
                            "./my_card.yaml)"),
                      ("..", "('..' is a folder, not a card: give a card name"),
                      ("", "(the reference is empty: give a card name, or the path of a card file")):
        with pytest.raises(BayesimError) as e:
            resolve_device(ref)
        msg = str(e.value)
        assert (hint in msg) if hint else ("./myfold" not in msg and "folder" not in msg), (ref, msg)
        if ref:
            with pytest.raises(ConfigError) as e:
                resolve_crossbar(load_experiment(None, base={"name": "q", "hardware": {"crossbar": ref}}))
            msg = str(e.value)
            assert (hint in msg) if hint else ("./myfold" not in msg and "folder" not in msg), (ref, msg)
    cfg = tmp_path / "c.yaml"
    for key, what in (("device", "device"), ("crossbar", "crossbar card")):
        for value in ("''", "'  '"):
            cfg.write_text(f"name: q\nhardware:\n  {key}: {value}\n")
            with pytest.raises(ConfigError, match=rf"^{cfg}: hardware.{key}: {value} is not allowed; an empty value "
                                                  rf"names no {what}: give"):
                load_experiment(cfg)
    assert main(["run", "--set", "hardware.device=''", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith("bayesim: error: <built-in quickstart> (--set): hardware.device: '' is "
                                              "not allowed; an empty value names no device")
    assert not (tmp_path / "o").exists()


def test_a_crossbar_folder_named_yaml_is_no_card(tmp_path, monkeypatch):
    """A folder ./crossbars/default.yaml is no card: the shipped default is used (with a warning line), where it
    used to take the name and fail as 'is a folder'."""
    from bayesim.experiment.runner import resolve_crossbar

    monkeypatch.chdir(tmp_path)
    (tmp_path / "crossbars" / "default.yaml").mkdir(parents=True)
    with pytest.warns(UserWarning, match=r"crossbars/default.yaml: skipped: a folder, not a card"):
        _, path = resolve_crossbar(load_experiment(None, base={"name": "q"}))
    assert path == REPO / "crossbars" / "default.yaml"


def test_a_broken_user_default_crossbar_says_it_replaced_the_shipped_one(tmp_path, monkeypatch):
    """A broken ./crossbars/default.yaml (invalid, or not even YAML) names its file and says it took the shipped
    card's place: the error read like a broken shipped card."""
    from bayesim.experiment.runner import resolve_crossbar

    monkeypatch.chdir(tmp_path)
    (tmp_path / "crossbars").mkdir()
    bad = tmp_path / "crossbars" / "default.yaml"
    for text, problem in (("name: default\ntile: {rows: 0}\n", "tile.rows: 0 is out of range; allowed [1, 65536]"),
                          ("name: [default\n", "malformed YAML at line 2, column 1")):
        bad.write_text(text)
        with pytest.raises(ConfigError) as e:
            resolve_crossbar(load_experiment(None, base={"name": "q"}))
        assert str(e.value).startswith(f"{bad}: {problem}") and str(e.value).endswith(
            f"; default.yaml takes the place of the shipped card 'default' ({REPO / 'crossbars' / 'default.yaml'}), as "
            "a card of that name in a folder searched first: fix it, or rename or move it to use the shipped card")


def test_metrics_record_absolute_card_paths(checkpoint, tmp_path, monkeypatch):
    """hardware.device_card / crossbar_card are absolute, resolved paths, whatever folder the run started in and
    however the card was given (a relative path was recorded as given: meaningless elsewhere); a built-in given by
    name stays null."""
    import shutil

    (tmp_path / "cards").mkdir()
    shutil.copy(REPO / "devices" / "gaussian_mlc.yaml", tmp_path / "cards" / "dev.yaml")
    shutil.copy(REPO / "crossbars" / "ideal.yaml", tmp_path / "cards" / "xb.yaml")
    (tmp_path / "link").symlink_to(tmp_path / "cards")
    monkeypatch.chdir(tmp_path)
    base = _cfg(checkpoint, device="link/../cards/dev.yaml", crossbar="link/xb.yaml")
    base["data"] = {"embedded": True, "limit": 10, "splits": ["mnist"]}
    hw = run_experiment(load_experiment(None, base=base), None, progress=False, log=None)["hardware"]
    assert (hw["device_card"], hw["crossbar_card"]) == (str(tmp_path / "cards" / "dev.yaml"),
                                                        str(tmp_path / "cards" / "xb.yaml"))
    base["hardware"]["device"] = "ideal"
    hw = run_experiment(load_experiment(None, base=base), None, progress=False, log=None)["hardware"]
    assert hw["device_card"] is None


def test_an_activation_only_post_training_quantization_is_labelled_so(tmp_path):
    """The shipped JQ 4-bit model (QAT, 8-bit activations) run at hardware.bits.act 4: the weights are as trained
    and only the activations are post-training quantized, in both columns. The table said the deltas include
    the weight quantization, "post-training here"; it says what was quantized after training now."""
    from bayesim.experiment import result_table

    base = {"name": "q", "data": {"embedded": True, "limit": 10, "splits": ["mnist"]}, "samples": 2,
            "hardware": {"device": "ideal", "crossbar": "ideal", "strategy": "jq", "bits": {"mu": 4, "sigma": 4,
                                                                                          "w": 4, "act": 4}}}
    r = run_experiment(load_experiment(None, base=base), None, progress=False, log=None)
    assert r["model"]["kind"] == "default (shipped QAT)" and r["bits"]["act"] == 4
    assert r["model"]["quantization"] == "post-training quantization of the activations (weights as trained)"
    text = result_table(r)
    assert "model lenet5 default (shipped QAT) | post-training quantization of the activations (weights as " \
           "trained)" in text
    assert "so the deltas include the weight quantization, as trained; the activations' post-training " \
           "quantization is in both columns)" in text and "post-training here" not in text


def test_a_named_pipe_as_config_model_or_card_is_not_called_missing(tmp_path, capsys):
    """A FIFO given as the config, as model.path or as a card path was reported as 'file not found'; it is there,
    but not a regular file (reading it would block)."""
    import os

    fifo = tmp_path / "p.yaml"
    os.mkfifo(fifo)
    assert main(["run", str(fifo), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == (f"bayesim: error: {fifo}: is not a regular file (a named pipe); "
                                               "expected a YAML file")
    ck = tmp_path / "m.safetensors"
    os.mkfifo(ck)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {source: checkpoint, path: m.safetensors}\n")
    assert main(["run", str(cfg), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == (f"bayesim: error: {cfg}: model.path: {ck}: is not a regular file (a "
                                               "named pipe); expected a bayesim checkpoint (.safetensors)")
    cfg.write_text("samples: 2\n")
    assert main(["run", str(cfg), "--out", str(tmp_path / "o"), "--set", f"hardware.device={fifo}"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"bayesim: error: {cfg} (--set): hardware.device: {fifo}: is not a regular file (a named pipe); expected a "
        "device card file (.yaml) or a device name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "m.safetensors", "p.yaml"]


def test_bits_the_strategy_does_not_use_are_warned(tmp_path):
    """`--set hardware.strategy=fp --set hardware.bits.mu=7` ran with the bits silently ignored. A key given with
    --set, or in a file that names the strategy itself, is warned; a file's bits left as a template when the
    strategy comes from --set are not."""
    import warnings

    def warned(path, overrides):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            load_experiment(path, overrides)
        return [str(w.message) for w in seen]

    assert warned(None, ["hardware.strategy=fp", "hardware.bits.mu=7"]) == [
        "<config> (--set): hardware.bits.mu: 7 has no effect with strategy fp: it quantizes no weights (full "
        "precision); the key is ignored"]
    cfg = tmp_path / "c.yaml"
    cfg.write_text("hardware: {strategy: spq, bits: {mu: 4, sigma: 3, w: 4}, sigma_quantizer: uniform}\n")
    assert warned(cfg, []) == [
        f"{cfg}: hardware.bits.{k}: {v} has no effect with strategy spq: it quantizes the sampled weights only "
        "(bits.w); the key is ignored" for k, v in (("mu", 4), ("sigma", 3))] + [
        f"{cfg}: hardware.sigma_quantizer: uniform has no effect with strategy spq: it quantizes the sampled "
        "weights only (bits.w); the key is ignored"]
    assert warned(cfg, ["hardware.strategy=jq"]) == []
    assert warned(cfg, ["hardware.strategy=vpq"]) == []  # the file's w is a template for the strategies it names
    assert len(warned(cfg, ["hardware.strategy=vpq", "hardware.bits.w=2"])) == 1
