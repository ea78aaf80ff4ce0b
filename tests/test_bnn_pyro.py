"""Pyro checkpoint import: the real reference MLP, restricted unpickling, mismatches, LeNet-5 names, CLI."""
import collections
import json
import re
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bayesim.bnn import load_model, predict_probs
from bayesim.bnn.pyro_import import import_pyro, read_pyro_params
from bayesim.cli import main
from bayesim.errors import BayesimError
from bayesim.metrics import decompose


@pytest.fixture(scope="module")
def ref_ckpt(shared_models_dir):
    return shared_models_dir / "pfp_svi_mlp_e40.pt"


def test_reference_mlp_on_1000_images(ref_ckpt, data_dir):
    from bayesim.data import load_fashion, load_mnist
    from bayesim.data.dirty import normalize

    model = import_pyro(ref_ckpt, "mlp")
    assert model.cfg.widths == [100, 100] and model.cfg.normalization == "own"
    raw = read_pyro_params(ref_ckpt)
    ops = model.export_ops()
    # layer order input_layer -> hidden_layers.0 -> out_layer, sigma = softplus(stored scale)
    np.testing.assert_array_equal(ops[1].mu_w, raw["ScaledAutoNormal.locs.input_layer.weight"].numpy())
    np.testing.assert_array_equal(ops[-1].sigma_b, F.softplus(raw["ScaledAutoNormal.scales.out_layer.bias"]).numpy())
    xm, ym = load_mnist("test", data_dir)
    xf, _ = load_fashion("test", data_dir)
    xm = normalize(xm[:1000], 0.1307, 0.3081)
    xf = normalize(xf[:1000], 0.2860, 0.3530)  # Fashion-MNIST with its own statistics
    dm = decompose(predict_probs(model, xm, 32, seed=0))
    df = decompose(predict_probs(model, xf, 32, seed=0))
    acc = (dm["mean_probs"].argmax(1) == ym[:1000]).mean()
    assert 0.96 <= acc <= 0.98  # 0.969 here; full 10k set: 0.974 (reference 0.9729)
    assert 0.02 < dm["epistemic"].mean() < 0.045  # reference mean MI on MNIST 0.0247 (10k)
    assert 0.27 < df["epistemic"].mean() < 0.37  # reference mean MI on Fashion 0.332 (10k)
    # OOD separation by MI: 0.725 on these 1000 + 1000 images; full 10k + 10k: 0.735 (reference 0.737).
    # Without the float32 resolution floor on MI it would be ~0.83 (ranks of 1e-18-sized round-off).
    from bayesim.metrics import auroc

    assert 0.70 <= auroc(df["epistemic"], dm["epistemic"]) <= 0.76


def _standin_module():
    """A fake `pyro.distributions.constraints` so test checkpoints pickle the real class names."""
    mod = types.ModuleType("pyro.distributions.constraints")

    class _SoftplusPositive:
        lower_bound = 0.0

    _SoftplusPositive.__module__ = mod.__name__
    _SoftplusPositive.__qualname__ = "_SoftplusPositive"
    mod._SoftplusPositive = _SoftplusPositive
    return mod


def _save_pyro_like(path, params, monkeypatch, extra=None):
    mod = _standin_module()
    for name in ("pyro", "pyro.distributions"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    cons = {k: (mod._SoftplusPositive() if ".scales." in k else torch.distributions.constraints.real)
            for k in params}
    obj = {"params": collections.OrderedDict(params), "constraints": cons}
    if extra is not None:
        obj["extra"] = extra
    torch.save(obj, path)
    for name in ("pyro.distributions.constraints", "pyro.distributions", "pyro"):
        monkeypatch.delitem(sys.modules, name)
    return path


def _lenet_params(names=("conv1", "conv2", "fc1", "fc2", "fc3"), seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(6, 1, 5, 5), (16, 6, 5, 5), (120, 400), (84, 120), (10, 84)]
    p = {}
    for n, s in zip(names, shapes):
        for part, shp in (("weight", s), ("bias", s[:1])):
            p[f"AutoNormal.locs.{n}.{part}"] = torch.randn(shp, generator=g) * 0.1
            p[f"AutoNormal.scales.{n}.{part}"] = torch.full(shp, -4.0)
    return p


def test_lenet5_import_and_cli(tmp_path, monkeypatch):
    ck = _save_pyro_like(tmp_path / "lenet.pt", _lenet_params(), monkeypatch)
    out = tmp_path / "lenet.safetensors"
    assert main(["import-pyro", str(ck), "--arch", "lenet5", "--out", str(out)]) == 0
    model, meta = load_model(out)
    assert model.cfg.arch == "lenet5" and meta["source"]["kind"] == "pyro"
    raw = _lenet_params()
    ops = [o for o in model.export_ops() if hasattr(o, "mu_w")]
    np.testing.assert_array_equal(ops[1].mu_w, raw["AutoNormal.locs.conv2.weight"].numpy())
    np.testing.assert_allclose(ops[4].sigma_w, F.softplus(torch.tensor(-4.0)).item(), rtol=1e-6)
    # wrong architecture: names and shapes in the message
    with pytest.raises(BayesimError, match=r"conv1.*\(6, 1, 5, 5\)|5 Bayesian layers"):
        import_pyro(ck, "mlp")


def test_mlp_checkpoint_as_lenet5_is_refused(ref_ckpt):
    with pytest.raises(BayesimError, match=r"input_layer.*lenet5|3 Bayesian layers.*lenet5 architecture has 5"):
        import_pyro(ref_ckpt, "lenet5")


def test_shape_mismatch_names_layer_and_shapes(tmp_path, monkeypatch):
    p = _lenet_params()
    p["AutoNormal.locs.fc2.weight"] = torch.zeros(84, 121)
    ck = _save_pyro_like(tmp_path / "bad.pt", p, monkeypatch)
    with pytest.raises(BayesimError, match=r"AutoNormal\.locs\.fc2\.weight.*\(84, 121\).*fc2.*\(84, 120\)"):
        import_pyro(ck, "lenet5")


def test_nan_is_named_as_in_the_pyro_file(tmp_path, monkeypatch):
    p = _lenet_params()
    p["AutoNormal.locs.fc1.weight"][3, 4] = float("nan")
    ck = _save_pyro_like(tmp_path / "nan.pt", p, monkeypatch)
    with pytest.raises(BayesimError, match=r"nan\.pt: 'AutoNormal\.locs\.fc1\.weight' contains NaN or Inf"):
        import_pyro(ck, "lenet5")


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/bayesim_pwned_marker",))


def test_code_in_the_pickle_is_refused(tmp_path, monkeypatch):
    import os

    marker = "/tmp/bayesim_pwned_marker"
    if os.path.exists(marker):
        os.unlink(marker)
    ck = _save_pyro_like(tmp_path / "evil.pt", _lenet_params(), monkeypatch, extra=_Evil())
    with pytest.raises(BayesimError, match=r"refused.*(posix|os)\.system"):
        read_pyro_params(ck)
    assert not os.path.exists(marker)
    assert main(["import-pyro", str(ck), "--arch", "lenet5", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert not (tmp_path / "x.safetensors").exists()


class _EvilMagic:
    """Runs code, then returns torch's legacy magic number, so the rest of the file loads as usual."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"__import__('pathlib').Path({self.marker!r}).touch() or 0x1950a86a20f9469cfc6c",))


@pytest.mark.parametrize("where", ["none", "magic", "sys_info"])
def test_the_legacy_torch_format_is_refused_without_running_anything(tmp_path, monkeypatch, where):
    """torch's legacy (pre-1.6) loader reads header pickles outside any pickle_module hook and acts on
    persistent ids ('module' records write .patch files): a legacy file, valid or with code in a header
    pickle, is refused before any of it is unpickled."""
    import io
    import pickle

    ok = tmp_path / "ok.pt"
    torch.save({"params": _lenet_params()}, ok, _use_new_zipfile_serialization=False)
    f = io.BytesIO(ok.read_bytes())
    header = [pickle.load(f) for _ in range(3)]  # magic number, protocol version, sys info
    rest = f.read()
    marker = tmp_path / "PWNED"
    parts = list(header)
    if where == "magic":
        parts[0] = _EvilMagic(str(marker))
    elif where == "sys_info":
        parts[2] = {"little_endian": True, "x": _EvilMagic(str(marker))}
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"".join(pickle.dumps(x, protocol=2) for x in parts) + rest)
    with pytest.raises(BayesimError, match=r"bad\.pt: a legacy \(pre-1\.6\) torch serialization; only the zip format"):
        read_pyro_params(bad)
    assert not marker.exists()
    assert main(["import-pyro", str(bad), "--arch", "lenet5", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert not marker.exists() and not (tmp_path / "x.safetensors").exists()


@pytest.mark.filterwarnings("ignore:.*is deprecated")
def test_a_torchscript_archive_is_refused_before_torch_sees_it(tmp_path):
    """torch.load hands an archive with constants.pkl to torch.jit.load, which runs the module's code."""
    class M(torch.nn.Module):
        def forward(self, x):
            return x

    ts = tmp_path / "ts.pt"
    torch.jit.save(torch.jit.script(M()), str(ts))
    with pytest.raises(BayesimError, match=r"ts\.pt: a TorchScript archive \(code\), not a parameter store; refused"):
        read_pyro_params(ts)


def test_build_on_an_allowed_function_is_refused(tmp_path, monkeypatch):
    """A zip archive whose pickle sets attributes of an allowed torch function (BUILD) is refused, and the
    function is left as it was (the restricted unpickler of before allowed it)."""
    import zipfile

    import torch._utils as tu

    ok = _save_pyro_like(tmp_path / "ok.pt", _lenet_params(), monkeypatch)
    evil = (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n}X\x08\x00\x00\x00__name__X\x04\x00\x00\x00evils"
            b"b.")
    bad = tmp_path / "bad.pt"
    with zipfile.ZipFile(ok) as zin, zipfile.ZipFile(bad, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            zout.writestr(item, evil if item.filename.endswith("/data.pkl") else zin.read(item.filename))
    with pytest.raises(BayesimError, match=r"bad\.pt: cannot read as a torch checkpoint|bad\.pt: refused"):
        read_pyro_params(bad)
    assert tu._rebuild_tensor_v2.__name__ == "_rebuild_tensor_v2"


def test_import_config_file(tmp_path, monkeypatch):
    ck = _save_pyro_like(tmp_path / "l.pt", _lenet_params(), monkeypatch)
    cfg = tmp_path / "imp.yaml"
    cfg.write_text(json.dumps({"checkpoint": str(ck), "arch": "lenet5", "out": str(tmp_path / "o.safetensors"),
                               "normalization": "mnist"}))
    assert main(["import-pyro", "--config", str(cfg)]) == 0
    model, _ = load_model(tmp_path / "o.safetensors")
    assert model.cfg.normalization == "mnist"


def _mlp_params(widths, n_cls, seed=0):
    g = torch.Generator().manual_seed(seed)
    dims = [784, *widths, n_cls]
    names = ["input_layer", *[f"hidden_layers.{i}" for i in range(len(widths) - 1)], "out_layer"]
    p = {}
    for n, a, b in zip(names, dims[:-1], dims[1:]):
        for part, shp in (("weight", (b, a)), ("bias", (b,))):
            p[f"AutoNormal.locs.{n}.{part}"] = torch.randn(shp, generator=g) * 0.1
            p[f"AutoNormal.scales.{n}.{part}"] = torch.full(shp, -4.0)
    return p


def test_mlp_import_reads_widths_and_classes(tmp_path, monkeypatch):
    ck = _save_pyro_like(tmp_path / "m.pt", _mlp_params([20, 12], 3), monkeypatch)
    model = import_pyro(ck, "mlp")
    assert model.cfg.widths == [20, 12] and model.cfg.num_classes == 3


@pytest.mark.parametrize("widths, n_cls, bad", [
    ([0], 10, r"'AutoNormal\.locs\.input_layer\.weight' has shape \(0, 784\)"),  # a hidden layer of width 0
    ([20], 0, r"'AutoNormal\.locs\.out_layer\.weight' has shape \(0, 20\)"),  # no output classes
], ids=["width-0", "0-classes"])
def test_zero_size_layer_is_refused(tmp_path, monkeypatch, widths, n_cls, bad):
    ck = _save_pyro_like(tmp_path / "z.pt", _mlp_params(widths, n_cls), monkeypatch)
    with pytest.raises(BayesimError, match=r"z\.pt: " + bad + r"; a zero-size layer is not allowed"):
        import_pyro(ck, "mlp")
    out = tmp_path / "z.safetensors"
    assert main(["import-pyro", str(ck), "--arch", "mlp", "--out", str(out)]) == 2
    assert not out.exists()


def test_mlp_weight_that_is_not_2d_is_refused(tmp_path, monkeypatch):
    p = _mlp_params([20, 12], 10)
    p["AutoNormal.locs.hidden_layers.0.weight"] = torch.tensor(0.5)
    ck = _save_pyro_like(tmp_path / "s.pt", p, monkeypatch)
    with pytest.raises(BayesimError, match=r"s\.pt: layer 'hidden_layers\.0' has weight shape \(\).*2-d linear"):
        import_pyro(ck, "mlp")


def test_one_class_model_is_refused_on_import(tmp_path, monkeypatch, capsys):
    from bayesim.errors import ConfigError

    ck = _save_pyro_like(tmp_path / "one.pt", _mlp_params([20], 1), monkeypatch)
    with pytest.raises(ConfigError, match=r"one\.pt: model\.num_classes: 1 is out of range; allowed \[2, 10000\] "
                                          r"\(read from 'AutoNormal\.locs\.out_layer\.weight' of shape \(1, 20\)\)"):
        import_pyro(ck, "mlp")
    out = tmp_path / "one.safetensors"
    assert main(["import-pyro", str(ck), "--arch", "mlp", "--out", str(out)]) == 2
    assert not out.exists() and "one.pt: model.num_classes" in capsys.readouterr().err


def test_a_parameter_that_is_not_a_float_tensor_is_refused(tmp_path, monkeypatch):
    p = _lenet_params()
    p["AutoNormal.scales.fc1.bias"] = p["AutoNormal.scales.fc1.bias"].to(torch.complex64)
    ck = _save_pyro_like(tmp_path / "cplx.pt", p, monkeypatch)
    with pytest.raises(BayesimError, match=r"cplx\.pt: parameter 'AutoNormal\.scales\.fc1\.bias' has dtype complex64"):
        read_pyro_params(ck)


def test_archives_that_are_not_plain_parameter_stores_are_refused(tmp_path):
    """QA's files, each one message (exit 2 at the CLI): a zip after junk bytes or after a legacy save (torch
    picks its loader from the first bytes), compressed records (bombs), a pickle far longer than its tensors
    need (deep nesting: a segfault in torch's unpickler at 200k levels), expanded views (4 GB from one
    stored float), sparse and meta tensors, a non-string name."""
    import zipfile

    def save(name, params):
        f = tmp_path / name
        torch.save({"params": params}, f)
        return f

    ok = save("ok.pt", {"AutoNormal.locs.fc.weight": torch.ones(2, 3)})
    assert read_pyro_params(ok)["AutoNormal.locs.fc.weight"].shape == (2, 3)
    raw = ok.read_bytes()
    cases = {}
    (tmp_path / "junk.pt").write_bytes(b"junk" + raw)
    cases["junk.pt"] = "not a torch checkpoint"
    legacy = tmp_path / "legacy.pt"
    torch.save({"params": {}}, legacy, _use_new_zipfile_serialization=False)
    (tmp_path / "poly.pt").write_bytes(legacy.read_bytes() + raw)
    cases["poly.pt"] = "a legacy \\(pre-1.6\\) torch serialization"
    with zipfile.ZipFile(ok) as zin, zipfile.ZipFile(tmp_path / "packed.pt", "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            zout.writestr(item.filename, zin.read(item.filename))
    cases["packed.pt"] = "compressed record '.*data.pkl'; torch.save stores its records uncompressed"
    deep = torch.ones(1)
    key = "k"
    for _ in range(700):
        key = (key,)
    save("deep.pt", {key: deep})
    cases["deep.pt"] = "data.pkl has more than 1,200 pickle opcodes for 1 tensor records"
    save("expand.pt", {"a": torch.ones(1).expand(100000)})
    cases["expand.pt"] = "parameter 'a' views 100,000 values of a storage of 4 bytes"
    save("sparse.pt", {"a": torch.ones(3).to_sparse()})
    cases["sparse.pt"] = "parameter 'a' is not a dense CPU tensor \\(layout torch.sparse_coo"
    save("intkey.pt", {3: torch.ones(1)})
    cases["intkey.pt"] = "a parameter name is a int, not a string"
    for name, why in cases.items():
        with pytest.raises(BayesimError, match=rf"{re.escape(name)}: {why}"):
            read_pyro_params(tmp_path / name)
    assert main(["import-pyro", str(tmp_path / "poly.pt"), "--arch", "mlp", "--out", str(tmp_path / "x.st")]) == 2
