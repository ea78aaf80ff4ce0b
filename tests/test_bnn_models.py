"""Bayesian layers, models, MC prediction streams, export_ops executor, memory figures, checkpoints."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bayesim import rng
from bayesim.bnn import (ActivationConfig, ModelConfig, QuantConfig, build_model, load_model, memory_report,
                         predict_probs, save_model)
from bayesim.bnn import quant as Q
from bayesim.bnn.layers import BayesLinear, kl_normal
from bayesim.bnn.ops import ActivationOp, BayesConvOp, BayesLinearOp, FlattenOp, MaxPoolOp
from bayesim.errors import BayesimError, ConfigError


def _images(n, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 1, 28, 28)).astype(np.float32)


def _widen_sigma(model, lo=-3.0, hi=-1.0, seed=0):
    """Give the posterior a visible spread so sampling and quantization matter in the tests."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.bayes_layers:
            for r in (m.rho_w, m.rho_b):
                r.copy_(torch.empty(r.shape).uniform_(lo, hi, generator=g))
    model.calibrate()


# ---------------------------------------------------------------- KL
def test_kl_closed_form_against_monte_carlo():
    mu = torch.tensor([0.0, 0.5, -1.2, 2.0])
    sigma = torch.tensor([0.1, 1.0, 0.3, 2.5])
    prior = 1.7
    closed = [kl_normal(mu[i:i + 1], sigma[i:i + 1], prior).item() for i in range(4)]
    g = torch.Generator().manual_seed(0)
    n = 400_000
    for i in range(4):
        w = mu[i] + sigma[i] * torch.randn(n, generator=g, dtype=torch.float64)
        logq = -0.5 * ((w - mu[i]) / sigma[i]) ** 2 - math.log(sigma[i])
        logp = -0.5 * (w / prior) ** 2 - math.log(prior)
        d = logq - logp
        se = d.std().item() / math.sqrt(n)
        assert abs(d.mean().item() - closed[i]) < 5 * se + 1e-9, (i, d.mean().item(), closed[i], se)
        ref = torch.distributions.kl_divergence(torch.distributions.Normal(mu[i], sigma[i]),
                                                torch.distributions.Normal(0.0, prior)).item()
        assert closed[i] == pytest.approx(ref, rel=1e-5)


def test_layer_kl_sums_weights_and_biases():
    lay = BayesLinear(3, 2, prior_sigma=0.5, init_rho=-2.0)
    sw, sb = lay.sigmas()
    expect = (kl_normal(lay.mu_w, sw, 0.5) + kl_normal(lay.mu_b, sb, 0.5)).item()
    assert lay.kl().item() == pytest.approx(expect)
    assert lay.n_weights == 8
    sigma = F.softplus(torch.tensor(-2.0)).item()
    assert sw[0, 0].item() == pytest.approx(sigma)


# ---------------------------------------------------------------- architectures and prediction
def test_architectures_shapes():
    m = build_model(ModelConfig(arch="lenet5"))
    shapes = [tuple(b.mu_w.shape) for b in m.bayes_layers]
    assert shapes == [(6, 1, 5, 5), (16, 6, 5, 5), (120, 400), (84, 120), (10, 84)]
    assert m.bayes_layers[0].padding == 2
    m2 = build_model(ModelConfig(arch="mlp", widths=[50, 40, 30]))
    assert [tuple(b.mu_w.shape) for b in m2.bayes_layers] == [(50, 784), (40, 50), (30, 40), (10, 30)]
    assert m(torch.from_numpy(_images(3))).shape == (3, 10)


def test_predict_probs_uses_the_interface_streams():
    model = build_model(ModelConfig(arch="mlp", widths=[16]))
    _widen_sigma(model)
    x = _images(5)
    p = predict_probs(model, x, samples=3, seed=7)
    assert p.shape == (3, 5, 10) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(p, predict_probs(model, x, samples=3, seed=7, batch_size=2), atol=2e-6)  # BLAS order only
    assert not np.array_equal(p[0], p[1])  # samples differ
    assert not np.array_equal(p, predict_probs(model, x, samples=3, seed=8))
    # sample 1 by hand: w = mu + sigma * eps with eps from derive_key(seed, "eps_w", s, l)
    layers = model.bayes_layers
    h = torch.from_numpy(x).reshape(5, -1)
    for l, lay in enumerate(layers):
        mw, sw, mb, sb = lay.stored()
        w = mw + sw * rng.normals(rng.derive_key(7, "eps_w", 1, l), mw.shape)
        b = mb + sb * rng.normals(rng.derive_key(7, "eps_b", 1, l), mb.shape)
        h = F.linear(h, torch.from_numpy(w), torch.from_numpy(b))
        if l < len(layers) - 1:
            h = F.relu(h)
    np.testing.assert_allclose(torch.softmax(h, 1).numpy(), p[1], atol=2e-6)


def test_predict_probs_same_numbers_whatever_the_workers():
    """Forward passes run concurrently, one single-threaded torch pass per (sample, batch): the bits may not
    depend on how many run at once, nor may the torch thread setting or grad mode leak out."""
    model = build_model(ModelConfig(arch="lenet5"))
    _widen_sigma(model)
    x = _images(7)
    threads = torch.get_num_threads()
    one = predict_probs(model, x, samples=5, seed=3, batch_size=3, workers=1)
    for w in (2, 3, 8):
        np.testing.assert_array_equal(predict_probs(model, x, samples=5, seed=3, batch_size=3, workers=w), one)
    assert torch.get_num_threads() == threads and torch.is_grad_enabled()
    assert not np.array_equal(one[0], one[1])
    with pytest.raises(BayesimError, match="workers"):
        predict_probs(model, x, 2, 0, workers=0)


def test_predict_probs_worker_errors_reach_the_caller(monkeypatch):
    model = build_model(ModelConfig(arch="mlp", widths=[8]))
    forward, calls = model.forward, []

    def failing(x, weights=None):  # the third pass and every later one fail, on whichever worker
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("boom in a worker")
        return forward(x, weights)

    monkeypatch.setattr(model, "forward", failing)
    threads = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="boom in a worker"):
        predict_probs(model, _images(4), samples=8, seed=0, batch_size=2, workers=2)
    assert torch.get_num_threads() == threads and len(calls) < 16  # no further samples were started


def test_predict_rejects_bad_input():
    model = build_model(ModelConfig(arch="mlp", widths=[4]))
    with pytest.raises(BayesimError, match="empty"):
        predict_probs(model, np.zeros((0, 1, 28, 28), np.float32), 2, 0)
    with pytest.raises(BayesimError, match="shape"):
        predict_probs(model, np.zeros((2, 28, 28), np.float32), 2, 0)
    with pytest.raises(BayesimError, match="samples"):
        predict_probs(model, _images(2), 0, 0)


# ---------------------------------------------------------------- export_ops: an independent numpy executor
def _np_conv(x, w, b, stride, pad):
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(x, w.shape[2:], axis=(2, 3))[:, :, ::stride, ::stride]
    n, c, oh, ow, kh, kw = win.shape
    cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * kh * kw)
    out = cols @ w.reshape(w.shape[0], -1).T + b
    return out.reshape(n, oh, ow, -1).transpose(0, 3, 1, 2).astype(np.float32)


def _np_execute(ops, x, samples, seed):
    out = []
    for s in range(samples):
        h, l = x, 0
        for op in ops:
            if isinstance(op, (BayesLinearOp, BayesConvOp)):
                w = op.mu_w + op.sigma_w * rng.normals(rng.derive_key(seed, "eps_w", s, l), op.mu_w.shape)
                b = op.mu_b + op.sigma_b * rng.normals(rng.derive_key(seed, "eps_b", s, l), op.mu_b.shape)
                if op.quant.strategy in ("spq", "jq"):
                    w = Q.quantize_uniform(w, op.quant.w_step, op.quant.w_bits)
                    b = Q.quantize_uniform(b, op.quant.w_step, op.quant.w_bits)
                h = (h @ w.T + b) if isinstance(op, BayesLinearOp) else _np_conv(h, w, b, op.stride, op.padding)
                l += 1
            elif isinstance(op, ActivationOp):
                h = np.maximum(h, 0) if op.kind == "relu" else Q.quantize_activation(h, op.upper, op.bits)
            elif isinstance(op, MaxPoolOp):
                n, c, hh, ww = h.shape
                k = op.kernel
                h = h[:, :, : hh // k * k, : ww // k * k].reshape(n, c, hh // k, k, ww // k, k).max(axis=(3, 5))
            elif isinstance(op, FlattenOp):
                h = h.reshape(h.shape[0], -1)
        z = h - h.max(1, keepdims=True)
        e = np.exp(z)
        out.append(e / e.sum(1, keepdims=True))
    return np.stack(out).astype(np.float32)


@pytest.mark.parametrize("strategy", ["fp", "vpq", "spq", "jq"])
@pytest.mark.parametrize("arch", ["mlp", "lenet5"])
def test_export_ops_numpy_executor_reproduces_predict(strategy, arch):
    act = ActivationConfig(kind="bounded", upper=2.0, bits=None) if arch == "lenet5" else ActivationConfig()
    model = build_model(ModelConfig(arch=arch, widths=[32, 16], activation=act))
    _widen_sigma(model, seed=3)
    model.set_quant(QuantConfig(strategy=strategy, mu_bits=4, sigma_bits=3, w_bits=4))
    ops = model.export_ops()
    kinds = [type(o).__name__ for o in ops]
    if arch == "lenet5":
        assert kinds[:3] == ["BayesConvOp", "ActivationOp", "MaxPoolOp"]
    x = _images(20, seed=5)
    ref = predict_probs(model, x, samples=3, seed=11)
    got = _np_execute(ops, x, 3, 11)
    np.testing.assert_allclose(got, ref, atol=2e-5, rtol=1e-4)
    if strategy in ("vpq", "jq"):  # exported stored values sit on the grids
        q = ops[-1].quant
        k = np.rint(ops[-1].mu_w / q.mu_step)
        np.testing.assert_array_equal(k * np.float32(q.mu_step), ops[-1].mu_w)
        assert np.abs(k).max() <= 7
        assert set(np.unique(ops[-1].sigma_w)) <= set(Q.log_levels(q.sigma_max, 3).tolist())


def test_export_with_quantized_activation_matches_closely():
    model = build_model(ModelConfig(arch="mlp", widths=[32], activation=ActivationConfig(kind="bounded", upper=1.5,
                                                                                          bits=4)))
    _widen_sigma(model, seed=4)
    model.set_quant(QuantConfig(strategy="jq", mu_bits=4, sigma_bits=4, w_bits=4))
    x = _images(50, seed=6)
    ref = predict_probs(model, x, samples=2, seed=1)
    got = _np_execute(model.export_ops(), x, 2, 1)
    # activation rounding may flip on a float32 tie between matmul orders: allow a rare example to differ
    close = np.isclose(got, ref, atol=2e-5, rtol=1e-4).all(axis=-1)
    assert close.mean() >= 0.98


# ---------------------------------------------------------------- memory
def test_memory_figures():
    model = build_model(ModelConfig(arch="mlp"))  # 784-100-100-10: 89,610 weights and biases
    n = 784 * 100 + 100 + 100 * 100 + 100 + 100 * 10 + 10
    assert model.n_weights == n == 89_610
    fp = memory_report(model)
    assert fp["bits_per_weight"] == 64 and fp["reduction_vs_fp32"] == 1.0 and fp["total_bits"] == 64 * n
    model.set_quant(QuantConfig(strategy="vpq", mu_bits=4, sigma_bits=4))
    v = memory_report(model)
    assert v["reduction_before_overhead"] == 8.0
    assert v["total_bits"] == 8 * n + 3 * 64  # mu_step + sigma_max per layer
    assert v["reduction_vs_fp32"] == pytest.approx(64 * n / (8 * n + 192))
    model.set_quant(QuantConfig(strategy="jq", mu_bits=4, sigma_bits=4, w_bits=2))
    j = memory_report(model)
    assert j["total_bits"] == 8 * n + 3 * 96 and j["sampled_weight_bits"] == 2
    model.set_quant(QuantConfig(strategy="spq", w_bits=4))
    s = memory_report(model)
    assert s["total_bits"] == 64 * n + 3 * 32 and s["sampled_weight_bits"] == 4 and s["reduction_vs_fp32"] < 1


# ---------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip(tmp_path):
    cfg = ModelConfig(arch="lenet5", activation=ActivationConfig(kind="bounded", upper=3.0, bits=6),
                      quant=QuantConfig(strategy="jq", mu_bits=5, sigma_bits=3, w_bits=6), prior_sigma=0.3)
    model = build_model(cfg)
    _widen_sigma(model, seed=2)
    with torch.no_grad():
        model.bayes_layers[1].mu_step.mul_(1.1)  # a non-default (e.g. learned) range must survive
    path = save_model(model, tmp_path / "m.safetensors", training={"epochs": 1}, metrics={"acc": 0.5})
    loaded, meta = load_model(path)
    assert loaded.cfg == model.cfg
    assert meta["training"] == {"epochs": 1} and meta["bayesim_version"]
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    x = _images(4)
    np.testing.assert_array_equal(predict_probs(model, x, 2, 0), predict_probs(loaded, x, 2, 0))


def _rewrite(path, out, mutate_tensors=None, mutate_meta=None):
    """A copy of checkpoint `path` with its tensors / metadata changed, written without the tensors' checksum
    (as a checkpoint from before it, or from another tool), so that the checks behind it are reached."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["bayesim"])
    meta.pop("tensors_sha256", None)
    t = load_file(str(path))
    if mutate_tensors:
        mutate_tensors(t)
    if mutate_meta:
        mutate_meta(meta)
    save_file(t, str(out), metadata={"bayesim": json.dumps(meta)})
    return out


def test_checkpoint_bad_inputs(tmp_path):
    model = build_model(ModelConfig(arch="mlp", widths=[8]))
    good = save_model(model, tmp_path / "good.safetensors")

    def nan(t):
        t["layers.1.mu_w"][0, 0] = float("nan")

    def zero_sigma(t):
        t["layers.3.rho_b"][:] = -200.0  # softplus underflows to sigma = 0

    def other_shape(t):
        t["layers.1.mu_w"] = torch.zeros(9, 784)

    with pytest.raises(BayesimError, match=r"bad1.*layers\.1\.mu_w.*NaN"):
        load_model(_rewrite(good, tmp_path / "bad1.safetensors", nan))
    with pytest.raises(BayesimError, match=r"layers\.3\.rho_b.*sigma <= 0"):
        load_model(_rewrite(good, tmp_path / "bad2.safetensors", zero_sigma))
    with pytest.raises(BayesimError, match=r"layers\.1\.mu_w.*\(9, 784\).*\(8, 784\)"):
        load_model(_rewrite(good, tmp_path / "bad3.safetensors", other_shape))
    with pytest.raises(ConfigError, match="lenet5.*expected 'mlp'|'mlp'.*expected 'lenet5'"):
        load_model(good, expect_arch="lenet5")

    def lenet_meta(m):
        m["model"]["arch"] = "lenet5"

    with pytest.raises(BayesimError, match="do not fit a 'lenet5' model"):
        load_model(_rewrite(good, tmp_path / "bad4.safetensors", mutate_meta=lenet_meta))


def test_checkpoint_tensor_data_is_checksummed(tmp_path, capsys):
    """A flipped byte in the tensor data used to load silently (a weight changed, or a NaN); the SHA-256 of
    the data is in the metadata and checked on load, by `load_model`, by training's init_from and at the
    command line (exit 2). A checkpoint without the field (from before it) loads as before."""
    import hashlib

    from bayesim.bnn.train import init_from_checkpoint
    from bayesim.cli import main

    model = build_model(ModelConfig(arch="mlp", widths=[8]))
    path = save_model(model, tmp_path / "m.safetensors")
    raw = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(raw[:8], "little")
    _, meta = load_model(path)
    assert meta["tensors_sha256"] == hashlib.sha256(raw[start:]).hexdigest()
    for offset in (0, (len(raw) - start) // 2, len(raw) - start - 1):  # first, middle and last byte of the data
        bad = bytearray(raw)
        bad[start + offset] ^= 0x01
        flipped = tmp_path / "flipped.safetensors"
        flipped.write_bytes(bytes(bad))
        with pytest.raises(BayesimError, match=r"flipped\.safetensors: corrupt checkpoint: the SHA-256 of its "
                                               r"tensor data is [0-9a-f]{64}, the metadata records "
                                               + meta["tensors_sha256"]):
            load_model(flipped)
    with pytest.raises(BayesimError, match=r"flipped\.safetensors: corrupt checkpoint"):
        init_from_checkpoint(build_model(ModelConfig(arch="mlp", widths=[8])), str(flipped))
    assert main(["evaluate", "--model", str(flipped), "--embedded", "--limit", "10", "--samples", "1",
                 "--out", str(tmp_path / "ev")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"bayesim: error: {flipped}: corrupt checkpoint"), err
    assert not (tmp_path / "ev").exists()
    old = _rewrite(path, tmp_path / "old.safetensors")  # no checksum: loads without a word
    loaded, old_meta = load_model(old)
    assert "tensors_sha256" not in old_meta
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_checkpoint_ranges_its_strategy_uses_must_be_positive(tmp_path):
    """A zero step quantizes every weight to 0 (near-chance results, exit 0): refused for the ranges the
    strategy uses; ranges it does not use may be 0 (an FP32 model stores zeros)."""
    fp = save_model(build_model(ModelConfig(arch="mlp", widths=[8])), tmp_path / "fp.safetensors")

    def zero_all(t):
        for k in t:
            if k.endswith(("mu_step", "w_step", "sigma_max")):
                t[k].zero_()

    load_model(_rewrite(fp, tmp_path / "fp0.safetensors", zero_all))  # fp: no range is used
    for strategy, leaf, ok_zero in (("jq", "w_step", None), ("jq", "mu_step", None), ("vpq", "sigma_max", "w_step"),
                                    ("spq", "w_step", "mu_step")):
        model = build_model(ModelConfig(arch="mlp", widths=[8], quant=QuantConfig(strategy=strategy, mu_bits=4,
                                                                                 sigma_bits=4, w_bits=4)))
        good = save_model(model, tmp_path / f"{strategy}.safetensors")

        def zero(t, leaf=leaf):
            t[f"layers.3.{leaf}"].zero_()

        with pytest.raises(BayesimError, match=rf"quantizer range 'layers\.3\.{leaf}' is 0, but strategy "
                                               rf"{strategy} quantizes with it"):
            load_model(_rewrite(good, tmp_path / f"{strategy}_{leaf}.safetensors", zero))
        if ok_zero:
            def zero_unused(t, leaf=ok_zero):
                t[f"layers.3.{leaf}"].zero_()

            load_model(_rewrite(good, tmp_path / f"{strategy}_{ok_zero}.safetensors", zero_unused))

    def bad_strategy(m):
        m["model"]["quant"]["strategy"] = "xq"

    with pytest.raises(ConfigError, match="model.quant.strategy"):
        load_model(_rewrite(good, tmp_path / "bad5.safetensors", mutate_meta=bad_strategy))
    for version in ("abc", None, 0, 1.5):
        def bad_version(m, v=version):
            m["format_version"] = v

        with pytest.raises(BayesimError, match=r"bad6.*format_version must be a positive integer, got "):
            load_model(_rewrite(good, tmp_path / "bad6.safetensors", mutate_meta=bad_version))
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(BayesimError, match="junk.safetensors"):
        load_model(tmp_path / "junk.safetensors")


def test_checkpoint_tensors_of_other_dtypes_and_deep_metadata_are_refused(tmp_path):
    """A complex tensor used to be cast to real with a warning, a bool one read as 0/1; deeply nested JSON
    metadata raised a RecursionError."""
    from safetensors.torch import load_file, save_file

    good = save_model(build_model(ModelConfig(arch="mlp", widths=[8])), tmp_path / "good.safetensors")
    for dtype in (torch.complex64, torch.bool, torch.int32, torch.float8_e4m3fn):
        def retype(t, d=dtype):
            t["layers.1.rho_w"] = t["layers.1.rho_w"].to(d)

        name = str(dtype).replace("torch.", "")
        with pytest.raises(BayesimError, match=rf"{name}\.safetensors: tensor 'layers\.1\.rho_w' has dtype {name}; "
                                               r"allowed: float32, float64, float16, bfloat16"):
            load_model(_rewrite(good, tmp_path / f"{name}.safetensors", retype))
    load_model(_rewrite(good, tmp_path / "f16.safetensors", lambda t: t.update(
        {"layers.1.rho_w": t["layers.1.rho_w"].to(torch.float16)})))  # a float dtype loads
    deep = tmp_path / "deep.safetensors"
    save_file(load_file(str(good)), str(deep), metadata={"bayesim": "[" * 100000 + "]" * 100000})
    with pytest.raises(BayesimError, match=r"deep\.safetensors: metadata JSON is nested too deeply"):
        load_model(deep)


def test_checkpoint_metadata_cannot_ask_for_a_huge_model(tmp_path, monkeypatch):
    good = save_model(build_model(ModelConfig(arch="mlp", widths=[8])), tmp_path / "good.safetensors")

    def meta(**kw):
        return lambda m: m["model"].update(kw)

    # out-of-range sizes: refused by the schema, naming the file and the key
    with pytest.raises(ConfigError, match=r"w\.safetensors: model\.widths\[0\]: 1000000000 is out of range; "
                                          r"allowed \[1, 65536\]"):
        load_model(_rewrite(good, tmp_path / "w.safetensors", mutate_meta=meta(widths=[10**9])))
    with pytest.raises(ConfigError, match=r"c\.safetensors: model\.num_classes: 1000000000 is out of range; "
                                          r"allowed \[2, 10000\]"):
        load_model(_rewrite(good, tmp_path / "c.safetensors", mutate_meta=meta(num_classes=10**9)))
    with pytest.raises(ConfigError, match=r"model\.widths: 300 hidden layers; allowed at most 256"):
        load_model(_rewrite(good, tmp_path / "d.safetensors", mutate_meta=meta(widths=[8] * 300)))
    # in range but not what the file holds: the header's shapes are compared before any tensor is read
    import safetensors.torch

    def no_read(*a, **k):
        raise AssertionError("tensor data read before the shapes were checked")

    bad_w = _rewrite(good, tmp_path / "w2.safetensors", mutate_meta=meta(widths=[65536]))
    bad_c = _rewrite(good, tmp_path / "c2.safetensors", mutate_meta=meta(num_classes=9999))
    monkeypatch.setattr(safetensors.torch, "load_file", no_read)
    with pytest.raises(BayesimError, match=r"w2\.safetensors: tensor 'layers\.1\.mu_w' has shape \(8, 784\), "
                                           r"the mlp architecture needs \(65536, 784\)"):
        load_model(bad_w)
    with pytest.raises(BayesimError, match=r"c2\.safetensors: tensor 'layers\.3\.mu_w' has shape \(10, 8\).*"
                                           r"\(9999, 8\)"):
        load_model(bad_c)


def test_software_predictions_do_not_depend_on_the_torch_thread_count():
    """Small batches made torch split its sums by thread count (1e-8 differences that reached metrics.json);
    prediction runs on one torch thread and leaves the caller's setting as it was."""
    from bayesim.bnn import predict_probs

    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="lenet5"))
    x = np.random.default_rng(3).normal(0, 1, (40, 1, 28, 28)).astype(np.float32)
    before = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2, 4):
            torch.set_num_threads(threads)
            outs.append(predict_probs(model, x, samples=2, seed=1, batch_size=7))
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])
