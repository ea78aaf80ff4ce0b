"""AnalogLayer: ideal-device equivalence to software, analytic mean/variance under programming noise,
lumped vs per-cell paths, DAC/ADC end to end, thread-count determinism, conv via im2col."""
from types import SimpleNamespace as NS

import numba
import numpy as np
import pytest
import torch
from scipy import stats

from bayesim import rng
from bayesim.bnn.ops import BayesConvOp, BayesLinearOp, LayerQuant
from bayesim.bnn.quant import quantize_log, quantize_uniform
from bayesim.crossbar import AnalogLayer, crossbar_from_dict
from bayesim.errors import BayesimError


class IdealDevice:
    """Programs and reads exactly its targets (protocol-conforming test device)."""
    name = "ideal"
    g_min, g_max = 1.0, 25.0
    gaussian_programming = True  # program/read are clip(g + sigma(g) z): fused into the crossbar kernel

    def levels(self, n, spacing="linear"):
        f = np.geomspace if spacing == "log" else np.linspace
        return f(self.g_min, self.g_max, n).astype(np.float32)

    def program(self, targets, key, cell_key):
        return np.asarray(targets, np.float32).copy()

    def read(self, held, t_read, key, cell_key):
        return np.asarray(held, np.float32).copy()

    def program_sigma(self, g):
        return np.zeros(np.shape(g), np.float32)

    def read_sigma(self, g, t_read):
        return np.zeros(np.shape(g), np.float32)


class GaussianDevice(IdealDevice):
    """Constant Gaussian programming (sd_prog uS) and read (sd_read uS) noise, no clipping."""
    name = "gauss"
    clip_range = (-1e9, 1e9)

    def __init__(self, sd_prog=0.5, sd_read=0.0, tables=True):
        self.sd_prog, self.sd_read = sd_prog, sd_read
        self.gaussian_programming = tables

    def program(self, targets, key, cell_key):
        t = np.asarray(targets, np.float32)
        return t + np.float32(self.sd_prog) * rng.normals(key, t.shape)

    def read(self, held, t_read, key, cell_key):
        h = np.asarray(held, np.float32)
        return h + np.float32(self.sd_read) * rng.normals(key, h.shape)

    def program_sigma(self, g):
        return np.full(np.shape(g), self.sd_prog, np.float32)

    def read_sigma(self, g, t_read):
        return np.full(np.shape(g), self.sd_read, np.float32)


IDEAL_CARD = crossbar_from_dict({"name": "ideal", "tile": {"rows": 128, "cols": 32},
                                 "dac": {"bits": None, "signed": True}, "adc": {"bits": None}})


def _layer_params(out=40, inn=300, seed=0):
    r = np.random.default_rng(seed)
    mu = r.normal(0, 0.3, (out, inn)).astype(np.float32)
    sg = np.abs(r.normal(0, 0.05, (out, inn))).astype(np.float32)
    mb = r.normal(0, 0.1, out).astype(np.float32)
    sb = np.full(out, 0.02, np.float32)
    x = r.uniform(-1, 1, (24, inn)).astype(np.float32)
    return mu, sg, mb, sb, x


def _software(mu, sg, mb, sb, x, quant, seed, s, layer):
    """The interface's software rule (bnn/ops.py) for sample s of `layer`."""
    eps = rng.normals(rng.derive_key(seed, "eps_w", s, layer), mu.shape)
    epsb = rng.normals(rng.derive_key(seed, "eps_b", s, layer), mb.shape)
    w, b = mu + sg * eps, mb + sb * epsb
    if quant.strategy in ("spq", "jq"):
        w = quantize_uniform(w, quant.w_step, quant.w_bits)
        b = quantize_uniform(b, quant.w_step, quant.w_bits)
    return x @ w.T + b


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("out", [40, 200])  # 200 > FUSED_MVM_MAX_OUT: the GEMM path (gemm_adc)
@pytest.mark.parametrize("strategy", ["fp", "vpq", "spq", "jq"])
@pytest.mark.parametrize("device", [IdealDevice(), GaussianDevice(0.0, 0.0, tables=False)])
def test_ideal_device_matches_software(strategy, device, out):
    mu, sg, mb, sb, x = _layer_params(out=out)
    q = LayerQuant(strategy, 4, 0.05, 3, 0.1, "log", 4, 0.1)
    if strategy in ("vpq", "jq"):
        mu = quantize_uniform(mu, q.mu_step, q.mu_bits)
        sg = quantize_log(sg, q.sigma_max, q.sigma_bits)
    op = BayesLinearOp(mu, sg, mb, sb, q)
    layer = AnalogLayer(op, device, IDEAL_CARD, layer_index=2, seed=11)
    for s in (0, 5):
        y = layer.forward(x, s)
        ref = _software(mu, sg, mb, sb, x, q, 11, s, 2)
        assert y.dtype == np.float32 and y.shape == ref.shape
        np.testing.assert_allclose(y, ref, rtol=0, atol=2e-5 * np.abs(ref).max())
        assert np.abs(_softmax(y) - _softmax(ref)).max() <= 1e-5


@pytest.mark.parametrize("strategy,w_bits", [("fp", 4), ("vpq", 4), ("spq", 3), ("jq", 4), ("jq", 1)])
def test_bias_is_the_software_models_bit_for_bit(strategy, w_bits):
    """The digital bias of every sample: the software rule's draw and quantization (bnn.predict.draw_weights),
    bit for bit (the binary grid included)."""
    from bayesim.bnn.predict import draw_weights

    mu, sg, mb, sb, _ = _layer_params()
    q = LayerQuant(strategy, 4, 0.05, 3, 0.1, "log", w_bits, 0.04)
    op = BayesLinearOp(mu, sg, mb, sb * 5, q)
    layer = AnalogLayer(op, IdealDevice(), IDEAL_CARD, layer_index=1, seed=4)
    for s in (0, 3, 17):
        b = layer._bias(s)
        ref = draw_weights(op, 4, s, 1)[1]
        assert b.dtype == np.float32 and np.array_equal(b, ref)
    if strategy in ("spq", "jq"):  # the grid is visible: few distinct values
        assert len(np.unique(b)) <= 2 * max(1, (1 << (w_bits - 1)) - 1) + 1


def test_conv_im2col_matches_torch():
    r = np.random.default_rng(1)
    mu = r.normal(0, 0.3, (6, 3, 3, 3)).astype(np.float32)
    sg = np.abs(r.normal(0, 0.05, mu.shape)).astype(np.float32)
    mb, sb = np.zeros(6, np.float32), np.zeros(6, np.float32)
    q = LayerQuant("fp", 8, 0.01, 8, 0.1, "log", 8, 0.01)
    op = BayesConvOp(mu, sg, mb, sb, stride=2, padding=1, quant=q)
    x = r.uniform(0, 1, (2, 3, 9, 9)).astype(np.float32)
    y = AnalogLayer(op, IdealDevice(), IDEAL_CARD, 0, 3).forward(x, 4)
    w = mu + sg * rng.normals(rng.derive_key(3, "eps_w", 4, 0), mu.shape)
    ref = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), stride=2, padding=1).numpy()
    assert y.shape == ref.shape == (2, 6, 5, 5)
    np.testing.assert_allclose(y, ref, atol=2e-5)


def _grid_layer(r, out, inn, step):
    """SPQ weights on the 8-bit grid with sigma = 0 (so every sample programs the same levels), every column
    using its full range (|k| up to 7: wscale_j = 7 * step). -> (w, op)"""
    k = r.integers(-7, 8, (out, inn))
    k[:, 0] = 7
    w = (k * step).astype(np.float32)
    q = LayerQuant("spq", 8, step, 8, 0.1, "log", 4, step)
    return w, BayesLinearOp(w, np.zeros_like(w), np.zeros(out, np.float32), np.zeros(out, np.float32), q)


def test_programming_noise_mean_and_variance_match_analytic():
    """SPQ, weights on the grid (sigma = 0), Gaussian programming noise sd_p on each of the pair's cells:
    w_eff = w + (n+ - n-) * wscale / span, so E[y] = x @ w.T and Var[y_j] = sum_k x_k^2 * 2 sd_p^2 (wscale_j/span)^2."""
    r = np.random.default_rng(2)
    out, inn, n_samples, sd_p, step = 64, 200, 200, 0.6, 0.1
    w, op = _grid_layer(r, out, inn, step)
    dev = GaussianDevice(sd_p, 0.0)
    layer = AnalogLayer(op, dev, IDEAL_CARD, 0, 5)
    x = r.uniform(0, 1, (1, inn)).astype(np.float32)
    ys = np.stack([layer.forward(x, s)[0] for s in range(n_samples)])
    mean = (x @ w.T)[0]
    var = (x[0] ** 2).sum() * 2 * sd_p ** 2 * (7 * step / (dev.g_max - dev.g_min)) ** 2
    z = (ys.mean(0) - mean) / np.sqrt(var / n_samples)
    assert np.abs(z).max() < 4.5  # 64 columns, each standard normal under the analytic mean
    ratio = ys.var(0, ddof=1).mean() / var  # pooled over 64 columns: relative sd ~ sqrt(2/(64*199)) = 1.3%
    assert abs(ratio - 1) < 0.06
    assert layer.stats.program_events == n_samples * 2 * out * inn


def test_lumped_agrees_with_per_cell_in_distribution():
    mu, sg, mb, sb, x = _layer_params(out=32, inn=150, seed=3)
    sg *= 4
    x = x[:4]
    q = LayerQuant("fp", 8, 0.01, 8, 0.1, "log", 8, 0.01)
    op = BayesLinearOp(mu, sg, mb, np.zeros_like(sb), q)
    per_cell = AnalogLayer(op, IdealDevice(), IDEAL_CARD, 0, 9)
    lumped = AnalogLayer(op, IdealDevice(), IDEAL_CARD, 0, 9, lumped=True)
    assert lumped.lumped and not per_cell.lumped
    mean = x @ mu.T + mb
    sd = np.sqrt((x ** 2) @ (sg ** 2).T)
    zs = {}
    for name, layer in (("cell", per_cell), ("lumped", lumped)):
        y = np.stack([layer.forward(x, s) for s in range(150)])
        zs[name] = ((y - mean) / sd).ravel()  # 150 x 4 x 32 standardised outputs
        assert abs(zs[name].mean()) < 0.03 and abs(zs[name].var() - 1) < 0.05
    assert stats.ks_2samp(zs["cell"], zs["lumped"]).pvalue > 1e-3
    assert not np.array_equal(zs["cell"], zs["lumped"])  # genuinely different random paths


def test_lumped_falls_back_where_not_exact():
    mu, sg, mb, sb, x = _layer_params(out=8, inn=20)
    op = BayesLinearOp(mu, sg, mb, sb, LayerQuant("jq", 4, 0.05, 3, 0.1, "log", 4, 0.1))
    layer = AnalogLayer(op, IdealDevice(), IDEAL_CARD, 0, 1, lumped=True)
    assert not layer.lumped and "quantized" in layer.lumped_reason
    ir = crossbar_from_dict({"name": "ir", "dac": {"bits": None}, "adc": {"bits": None},
                             "ir_drop": {"model": "first_order", "r_wire_ohm": 1.0}})
    op = BayesLinearOp(mu, sg, mb, sb, LayerQuant("fp", 4, 0.05, 3, 0.1, "log", 4, 0.1))
    layer = AnalogLayer(op, IdealDevice(), ir, 0, 1, lumped=True)
    assert not layer.lumped and "IR drop" in layer.lumped_reason


def test_dac_adc_end_to_end_hand_computed():
    """w = [0.5, -1.0] -> wscale 1, wn = [0.5, -1]; x = [1, 1] -> 2-bit unsigned DAC codes [3, 3];
    u = -0.5; 3-bit ADC (q = 3) with fixed range 1: rint(-1.5) = -2 -> -2/3; + bias 0.25."""
    card = crossbar_from_dict({"name": "hand", "dac": {"bits": 2}, "adc": {"bits": 3, "range": "fixed",
                                                                             "full_scale": 1.0}})
    q = LayerQuant("fp", 8, 0.01, 8, 0.1, "log", 8, 0.01)
    op = BayesLinearOp(np.array([[0.5, -1.0]], np.float32), np.zeros((1, 2), np.float32),
                       np.array([0.25], np.float32), np.zeros(1, np.float32), q)
    layer = AnalogLayer(op, IdealDevice(), card, 0, 0)
    y = layer.forward(np.array([[1.0, 1.0], [2.0, -3.0]], np.float32), 0)
    # row 2: scale 3, codes rint([2, -3]) -> [2, 0] (negative clipped, unsigned DAC): xn = [2/3, 0];
    # u = 1/3 -> rint(1.0) = 1 -> 1/3, times x_scale 3 -> 1.0; + 0.25
    np.testing.assert_allclose(y[:, 0], [-2 / 3 + 0.25, 1.0 + 0.25], rtol=1e-6)
    st = layer.stats
    assert (st.dac_conversions, st.dac_clipped, st.adc_conversions, st.adc_saturated, st.cell_reads) == (4, 1, 2, 0, 8)
    y = layer.forward(np.array([[-1.0, 1.0]], np.float32), 0)  # u = -1 -> exactly the full scale
    assert layer.stats.adc_saturated == 0


def test_adc_calibration_and_saturation():
    mu, sg, mb, sb, x = _layer_params(out=16, inn=300, seed=4)
    op = BayesLinearOp(mu, sg, mb, sb, LayerQuant("fp", 8, 0.01, 8, 0.1, "log", 8, 0.01))
    card = crossbar_from_dict({"name": "c", "tile": {"rows": 128, "cols": 16},
                               "dac": {"bits": 8, "signed": True}, "adc": {"bits": 6, "range": "max"}})
    layer = AnalogLayer(op, IdealDevice(), card, 0, 0)
    with pytest.raises(BayesimError, match="calibrated"):
        layer.forward(x, 0)
    rngs = layer.calibrate_adc(x, range(3))
    assert rngs.shape == (3, 16)
    for s in range(3):
        layer.forward(x, s)
    assert layer.stats.adc_saturated == 0  # max calibration on the same data never saturates
    layer.adc_range = rngs / 2
    layer.forward(x, 0)
    assert layer.stats.adc_saturated > 0


@pytest.mark.parametrize("out", [48, 200])  # fused MVM and GEMM paths
@pytest.mark.parametrize("device", ["gaussian", "pcm"])
def test_bit_identical_whatever_the_thread_count(device, out, monkeypatch):
    from bayesim.crossbar import kernels
    from bayesim.devices import load_device

    monkeypatch.setattr(kernels, "PARALLEL_MIN_WORK", 0)  # small layers too run on the thread pool
    mu, sg, mb, sb, x = _layer_params(out=out, inn=300, seed=5)
    q = LayerQuant("jq", 4, 0.05, 3, 0.1, "log", 4, 0.1)
    mu = quantize_uniform(mu, q.mu_step, q.mu_bits)
    sg = quantize_log(sg, q.sigma_max, q.sigma_bits)
    op = BayesLinearOp(mu, sg, mb, sb, q)
    card = crossbar_from_dict({"name": "c", "tile": {"rows": 64, "cols": 16}, "output_noise": 0.1,
                               "adc": {"bits": 8, "range": "fixed", "full_scale": 8.0}})
    dev = GaussianDevice(0.4, 0.2) if device == "gaussian" else load_device("pcm")  # pcm: fused device law
    before = numba.get_num_threads()
    try:
        outs = []
        for threads in (1, 2):
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
            layer = AnalogLayer(op, dev, card, 1, 21)
            outs.append(np.stack([layer.forward(x, s) for s in range(3)]))
    finally:
        numba.set_num_threads(before)
    assert np.array_equal(outs[0], outs[1])
    assert not np.array_equal(outs[0][0], outs[0][1])


def test_device_sampler_reports_shortfall():
    mu, sg, mb, sb, x = _layer_params(out=8, inn=30)
    op = BayesLinearOp(mu, sg * 10, mb, sb, LayerQuant("fp", 8, 0.01, 8, 0.1, "log", 8, 0.01))
    layer = AnalogLayer(op, GaussianDevice(0.01, 0.0, tables=False), IDEAL_CARD, 0, 0, sampler="device")
    sf = layer.sigma_shortfall
    assert sf["fraction_short"] > 0.9 and sf["mean_realised_sigma"] < sf["mean_requested_sigma"]
    y0, y1 = layer.forward(x, 0), layer.forward(x, 1)
    assert not np.array_equal(y0, y1)  # the device's programming spread is the random source
    np.testing.assert_allclose(y0, x @ mu.T + _bias_sample(mb, sb, 0), atol=0.05)


def _bias_sample(mb, sb, s):
    return mb + sb * rng.normals(rng.derive_key(0, "eps_b", s, 0), mb.shape)


def test_bad_inputs_are_refused():
    mu, sg, mb, sb, x = _layer_params(out=4, inn=10)
    q = LayerQuant("fp", 8, 0.01, 8, 0.1, "log", 8, 0.01)
    with pytest.raises(BayesimError, match="NaN"):
        AnalogLayer(BayesLinearOp(np.full_like(mu, np.nan), sg, mb, sb, q), IdealDevice(), IDEAL_CARD, 0, 0)
    with pytest.raises(BayesimError, match="negative"):
        AnalogLayer(BayesLinearOp(mu, -sg - 1, mb, sb, q), IdealDevice(), IDEAL_CARD, 0, 0)
    layer = AnalogLayer(BayesLinearOp(mu, sg, mb, sb, q), IdealDevice(), IDEAL_CARD, 0, 0)
    with pytest.raises(BayesimError, match=r"input must be \[N, 10\]"):
        layer.forward(x[:, :5], 0)
    with pytest.raises(BayesimError, match="sampler"):
        AnalogLayer(NS(mu_w=mu, sigma_w=sg, mu_b=mb, sigma_b=sb, quant=q), IdealDevice(), IDEAL_CARD, 0, 0,
                    sampler="magic")


def test_ir_drop_layer_uses_effective_conductances_per_tile():
    """fp weights, ideal device, first-order IR drop: the output equals x @ W_ir.T with
    W_ir = (M(G+) - M(G-)) / span * wscale built tile by tile from irdrop.first_order; the last row tile
    uses 8 of the tile's 16 rows and its column currents still cross the other 8 rows' wire segments."""
    from bayesim.crossbar import irdrop

    r = np.random.default_rng(6)
    out, inn = 12, 40
    mu = r.normal(0, 0.3, (out, inn)).astype(np.float32)
    q = LayerQuant("fp", 8, 0.01, 8, 0.1, "log", 8, 0.01)
    op = BayesLinearOp(mu, np.zeros_like(mu), np.zeros(out, np.float32), np.zeros(out, np.float32), q)
    card = crossbar_from_dict({"name": "ir", "tile": {"rows": 16, "cols": 8}, "dac": {"bits": None},
                               "adc": {"bits": None}, "ir_drop": {"model": "first_order", "r_wire_ohm": 20.0}})
    dev = IdealDevice()
    layer = AnalogLayer(op, dev, card, 0, 0)
    x = r.uniform(0, 1, (5, inn)).astype(np.float32)
    y = layer.forward(x, 0)
    span = dev.g_max - dev.g_min
    expected = np.zeros((5, out))
    for r0 in range(0, inn, 16):
        blk = mu[:, r0:r0 + 16]
        ws = np.abs(blk).max(axis=1)
        wn = blk / ws[:, None]
        for c0 in range(0, out, 8):
            gp = dev.g_min + np.maximum(wn[c0:c0 + 8], 0) * span
            gm = dev.g_min + np.maximum(-wn[c0:c0 + 8], 0) * span
            m = (irdrop.first_order(gp.T, 20.0, 16) - irdrop.first_order(gm.T, 20.0, 16)) / span  # [rows, cols]
            expected[:, c0:c0 + 8] += (x[:, r0:r0 + 16] @ m) * ws[c0:c0 + 8]
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)
    ideal = x @ mu.T
    assert np.abs(y - ideal).max() > 1e-3  # the drop is visible


def test_fused_and_generic_stored_reads_agree_in_distribution():
    """JQ with read noise on the stored arrays: the fused kernel read (Gaussian-read device) and the generic
    device.read path are different random streams of the same model: equal output mean and spread."""
    mu, sg, mb, sb, x = _layer_params(out=32, inn=100, seed=7)
    q = LayerQuant("vpq", 4, 0.05, 3, 0.1, "log", 4, 0.1)
    mu = quantize_uniform(mu, q.mu_step, q.mu_bits)
    sg = quantize_log(sg, q.sigma_max, q.sigma_bits)
    op = BayesLinearOp(mu, np.zeros_like(sg), mb, np.zeros_like(sb), q)  # only read noise varies
    x = x[:2]
    res = []
    for tables in (True, False):
        layer = AnalogLayer(op, GaussianDevice(0.0, 0.3, tables=tables), IDEAL_CARD, 0, 3)
        res.append(np.stack([layer.forward(x, s) for s in range(120)]))
    m0, m1 = res[0].mean(0), res[1].mean(0)
    s0, s1 = res[0].std(0), res[1].std(0)
    assert np.abs(m0 - m1).max() < 5 * np.sqrt(2 / 120) * s0.max()
    assert abs(s0.mean() / s1.mean() - 1) < 0.1


@pytest.mark.parametrize("strategy", ["fp", "spq"])
@pytest.mark.parametrize("device", [IdealDevice(), GaussianDevice(0.0, 0.0, tables=False)])
def test_offset_mapping_and_per_tile_scale_match_software(strategy, device):
    mu, sg, mb, sb, x = _layer_params(out=20, inn=90, seed=8)
    q = LayerQuant(strategy, 4, 0.05, 3, 0.1, "log", 4, 0.1)
    card = crossbar_from_dict({"name": "off", "tile": {"rows": 32, "cols": 8}, "dac": {"bits": None},
                               "adc": {"bits": None}, "mapping": {"kind": "offset", "scale": "per_tile"}})
    layer = AnalogLayer(BayesLinearOp(mu, sg, mb, sb, q), device, card, 0, 4)
    y = layer.forward(x, 2)
    ref = _software(mu, sg, mb, sb, x, q, 4, 2, 0)
    np.testing.assert_allclose(y, ref, rtol=0, atol=2e-5 * np.abs(ref).max())


def test_offset_mapping_noise_matches_analytic_with_a_shared_reference_column():
    """SPQ, weights on the grid, offset mapping: each weight is one cell at g_mid + w/wscale_j * span/2 against
    the reference cell of its row in its tile (at g_mid), both with programming noise sd_p. So
    w_eff = w + (n_jk - n_ref,k) * wscale_j / (span/2): Var[y_j] = sum_k x_k^2 * 2 sd_p^2 (wscale_j / (span/2))^2,
    and two outputs of the same column tile share the reference noise (correlation 1/2 when their scales
    are equal), outputs of different column tiles do not (hand analysis)."""
    r = np.random.default_rng(3)
    out, inn, n_samples, sd_p, step = 64, 200, 400, 0.6, 0.1
    w, op = _grid_layer(r, out, inn, step)
    dev = GaussianDevice(sd_p, 0.0)
    card = crossbar_from_dict({"name": "off", "tile": {"rows": 128, "cols": 32}, "dac": {"bits": None},
                               "adc": {"bits": None}, "mapping": {"kind": "offset", "scale": "per_column"}})
    layer = AnalogLayer(op, dev, card, 0, 5)
    x = r.uniform(0, 1, (1, inn)).astype(np.float32)
    ys = np.stack([layer.forward(x, s)[0] for s in range(n_samples)]).astype(np.float64)
    half = (dev.g_max - dev.g_min) / 2
    var = (x[0].astype(np.float64) ** 2).sum() * 2 * sd_p ** 2 * (7 * step / half) ** 2
    z = (ys.mean(0) - (x @ w.T)[0]) / np.sqrt(var / n_samples)
    assert np.abs(z).max() < 4.5
    # The columns of a tile share half their noise, so the pooled estimates scatter as those of a few columns:
    # over 40 other seeds, sd 0.023 for the variance ratio, 0.012 and 0.026 for the mean correlations in and
    # across tiles. The tolerances are 4.6 sd or more from the right model and as far from the wrong ones: no
    # reference noise (ratio 0.5), a reference per output (correlation 0), one shared across tiles (0.5).
    assert abs(ys.var(0, ddof=1).mean() / var - 1) < 0.15
    c = np.corrcoef(ys.T)
    off_diag = ~np.eye(out, dtype=bool)
    same = np.kron(np.eye(2), np.ones((32, 32))).astype(bool) & off_diag
    assert abs(c[same].mean() - 0.5) < 0.12
    assert abs(c[~same & off_diag].mean()) < 0.12


def test_vpq_lumped_runs_on_read_values():
    mu, sg, mb, sb, x = _layer_params(out=16, inn=60, seed=9)
    q = LayerQuant("vpq", 4, 0.05, 3, 0.1, "log", 4, 0.1)
    mu = quantize_uniform(mu, q.mu_step, q.mu_bits)
    sg = quantize_log(sg, q.sigma_max, q.sigma_bits)
    layer = AnalogLayer(BayesLinearOp(mu, sg, mb, np.zeros_like(sb), q), IdealDevice(), IDEAL_CARD, 0, 1,
                        lumped=True)
    assert layer.lumped
    y = np.stack([layer.forward(x[:3], s) for s in range(200)])
    mean = x[:3] @ mu.T + mb
    sd = np.sqrt((x[:3] ** 2) @ (sg ** 2).T)
    z = (y - mean) / np.where(sd > 0, sd, 1)
    assert abs(z.mean()) < 0.05 and abs(z.var() - 1) < 0.08


class _GenericOnly:
    """A device seen without its fast contract: the crossbar must take the generic per-tile path."""

    def __init__(self, device):
        self._d = device
        self.name, self.g_min, self.g_max, self.clip_range = device.name, device.g_min, device.g_max, device.clip_range
        self.gaussian_programming = False

    def __getattr__(self, name):
        if name in ("gaussian_program", "read_moments", "read_cell_law"):
            raise AttributeError(name)
        return getattr(self._d, name)


@pytest.mark.parametrize("mapping", ["differential", "offset"])
def test_pcm_fused_device_law_matches_generic_path_in_distribution(mapping):
    """PCM (drift: no `gaussian_programming`) with JQ: the fused kernel (stored arrays read as drifted mean
    + read noise, sampled weights programmed and read by the device's per-cell law) and the generic
    device.program/read path are different random streams of the same model: equal output mean and spread,
    and both differ from a drift-free read (long read time, so drift is visible)."""
    from bayesim.devices import load_device

    pcm = load_device("pcm")
    mu, sg, mb, sb, x = _layer_params(out=24, inn=60, seed=5)
    q = LayerQuant("jq", 4, 0.05, 3, 0.1, "log", 4, 0.06)
    op = BayesLinearOp(quantize_uniform(mu, q.mu_step, q.mu_bits), quantize_log(sg, q.sigma_max, q.sigma_bits),
                       mb, sb, q)
    card = crossbar_from_dict({"name": "c", "tile": {"rows": 32, "cols": 16}, "dac": {"bits": None},
                               "adc": {"bits": None}, "mapping": {"kind": mapping}})
    x = x[:3]
    n = 160
    res = []
    for dev, t in ((pcm, 1e6), (_GenericOnly(pcm), 1e6), (pcm, 0.0)):
        layer = AnalogLayer(op, dev, card, 0, 3, t_read=t, t_compute=t)
        layer.program()
        assert layer.cell_law == (dev is pcm) and layer.fused_read == (dev is pcm)
        res.append(np.stack([layer.forward(x, s) for s in range(n)]))
    (m0, m1, m2), (s0, s1) = (r.mean(0) for r in res), (r.std(0) for r in res[:2])
    se = np.sqrt(s0 ** 2 / n + s1 ** 2 / n)
    assert np.abs(m0 - m1).max() < 5 * se.max()
    assert abs(s0.mean() / s1.mean() - 1) < 0.1
    assert np.abs(m0 - m2).max() > 10 * se.max()  # drift at 1e6 s shifts the outputs far beyond the noise


def _drifting_device(nu_std=0.0):
    """Noise-free cells whose conductance drifts as G ((t + 1)/1)^-nu, nu = 0.1 (+ nu_std spread per cell)."""
    from bayesim.devices.card import build_card
    from bayesim.devices.composed import ComposedDevice

    return ComposedDevice(build_card({"name": "drift", "model": "gaussian",
                                      "range": {"g_min_uS": 0.0, "g_max_uS": 25.0, "log_min_uS": 0.5},
                                      "programming": {"model": "none"}, "read": {"model": "none"},
                                      "faults": {"stuck_at_gmin": 0.0, "stuck_at_gmax": 0.0},
                                      "d2d": {"relative": 0.0, "absolute_uS": 0.0},
                                      "drift": {"model": "power_law", "nu": 0.1, "nu_std": nu_std, "t0_s": 1.0}},
                                     source="<test>"))


def _stored_reads(layer, seed, n_in):
    """(mu, sigma) [out, in] as a noise-free layer reads its stored arrays: the weights of two samples through
    the ideal periphery (identity input, no bias), solved with the samples' known eps where they differ by > 1."""
    w = [layer.forward(np.eye(n_in, dtype=np.float32), s).T.astype(np.float64) for s in (0, 1)]
    e = [rng.normals(rng.derive_key(seed, "eps_w", s, layer.layer), w[0].shape).astype(np.float64) for s in (0, 1)]
    use = np.abs(e[0] - e[1]) > 1.0
    sg = (w[0] - w[1]) / np.where(use, e[0] - e[1], 1.0)
    return w[0] - sg * e[0], sg, use


@pytest.mark.parametrize("fused", [True, False])
def test_global_drift_compensation_undoes_a_uniform_drift(fused):
    """Every cell drifts by the same factor f = (t + 1)^-0.1 (no noise): uncompensated, the stored mu reads
    as f * mu and sigma decodes below its levels; global drift compensation measures the gain 1 / f in every
    tile and reads back mu and sigma as stored (hand analysis). Fused kernel and generic path alike."""
    dev = _drifting_device()
    mu, sg, mb, _, _ = _layer_params(out=40, inn=300, seed=2)
    q = LayerQuant("vpq", 4, 0.05, 3, 0.1, "log", 4, 0.1)
    mu = quantize_uniform(mu, q.mu_step, q.mu_bits)
    sg = quantize_log(sg, q.sigma_max, q.sigma_bits)
    op = BayesLinearOp(mu, sg, np.zeros_like(mb), np.zeros_like(mb), q)
    t = 1e4
    f = (t + 1.0) ** -0.1
    d = dev if fused else _GenericOnly(dev)
    reads = {}
    for gdc in ("none", "global"):
        layer = AnalogLayer(op, d, IDEAL_CARD, 0, 1, t_read=t, drift_compensation=gdc)
        layer.program()
        assert layer.fused_read == fused
        if gdc == "global":
            for k in ("mu", "sigma"):
                assert layer.drift_gains[k].shape == (layer.n_rt, layer.n_ct) == (3, 2)
                np.testing.assert_allclose(layer.drift_gains[k], 1 / f, rtol=1e-5)
        else:
            assert layer.drift_gains is None
        reads[gdc] = _stored_reads(layer, 1, 300)
    m, s, use = reads["none"]
    np.testing.assert_allclose(m[use], f * mu[use], rtol=1e-4, atol=1e-6)
    assert np.all(s[use] <= sg[use] + 1e-6) and np.mean(s[use] < 0.97 * sg[use]) > 0.5  # sigma decodes low
    m, s, use = reads["global"]
    assert use.mean() > 0.4
    np.testing.assert_allclose(m[use], mu[use], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(s[use], sg[use], rtol=1e-4, atol=1e-6)


def test_drift_compensation_is_one_without_drift_and_refuses_unknown_kinds():
    """No drift (t = 0, or a Gaussian-read device): every gain is exactly 1 and the outputs are bit-identical
    to the uncompensated ones."""
    mu, sg, mb, sb, x = _layer_params(out=24, inn=60, seed=4)
    q = LayerQuant("jq", 4, 0.05, 3, 0.1, "log", 4, 0.1)
    op = BayesLinearOp(quantize_uniform(mu, q.mu_step, q.mu_bits), quantize_log(sg, q.sigma_max, q.sigma_bits),
                       mb, sb, q)
    # a plug-in without `read_moments` (generic path) is measured with one read at each time, same noise draw
    for dev, t in ((_drifting_device(nu_std=0.02), 0.0), (GaussianDevice(0.3, 0.2), 1e4),
                   (GaussianDevice(0.3, 0.2, tables=False), 1e4)):
        ys = []
        for gdc in ("none", "global"):
            layer = AnalogLayer(op, dev, IDEAL_CARD, 0, 5, t_read=t, drift_compensation=gdc)
            ys.append(layer.forward(x, 3))
            if gdc == "global":
                assert all(np.all(g == 1.0) for g in layer.drift_gains.values())
        np.testing.assert_array_equal(ys[0], ys[1])
    with pytest.raises(BayesimError, match="drift_compensation must be one of 'none', 'global'"):
        AnalogLayer(op, GaussianDevice(), IDEAL_CARD, 0, 0, drift_compensation="local")


def test_drift_compensation_measures_clipped_reads_and_cannot_cancel():
    """Cells with g_min = 5 uS and clip: range drift below 5 uS and read as 5 uS: the gain is the ratio of the
    clipped currents (hand: sum clip(f G) vs sum G), the same on the fused and the generic path. Columns whose
    signed weights cancel (+w and -w in every column) still get the gain 1/f: G+ and G- are measured together."""
    from bayesim.devices.card import build_card
    from bayesim.devices.composed import ComposedDevice

    def device(g_min):
        return ComposedDevice(build_card({"name": "drift", "model": "gaussian",
                                          "range": {"g_min_uS": g_min, "g_max_uS": 25.0, "clip": "range",
                                                    "log_min_uS": max(g_min, 0.5)},
                                          "programming": {"model": "none"}, "read": {"model": "none"},
                                          "faults": {"stuck_at_gmin": 0.0, "stuck_at_gmax": 0.0},
                                          "d2d": {"relative": 0.0, "absolute_uS": 0.0},
                                          "drift": {"model": "power_law", "nu": 0.1, "nu_std": 0.0, "t0_s": 1.0}},
                                         source="<test>"))
    t = 1e4
    f = (t + 1.0) ** -0.1
    mu, sg, mb, _, _ = _layer_params(out=32, inn=128, seed=8)
    q = LayerQuant("vpq", 4, 0.05, 3, 0.1, "log", 4, 0.1)
    card = crossbar_from_dict({"name": "c", "tile": {"rows": 128, "cols": 32}, "dac": {"bits": None},
                               "adc": {"bits": None}})
    op = BayesLinearOp(quantize_uniform(mu, q.mu_step, q.mu_bits), quantize_log(sg, q.sigma_max, q.sigma_bits),
                       np.zeros_like(mb), np.zeros_like(mb), q)
    gains = []
    for d in (device(5.0), _GenericOnly(device(5.0))):
        layer = AnalogLayer(op, d, card, 0, 1, t_read=t, drift_compensation="global")
        layer.program()
        gains.append(layer.drift_gains)
        held = {k: v.astype(np.float64) for k, v in layer.held.items()}
        for which, names in (("mu", ("mu+", "mu-")), ("sigma", ("sigma",))):
            ref = sum(held[n].sum() for n in names)
            now = sum(np.clip(f * held[n], 5.0, 25.0).sum() for n in names)
            np.testing.assert_allclose(layer.drift_gains[which], ref / now, rtol=1e-6)
            assert layer.drift_gains[which][0, 0] < 0.99 / f  # the clip at g_min holds part of the current
    for k in ("mu", "sigma"):
        np.testing.assert_allclose(gains[0][k], gains[1][k], rtol=1e-6)
    # cancelling columns: +0.2 and -0.2 in every column
    w = np.tile(np.float32([0.2, -0.2]), (32, 64))
    op = BayesLinearOp(w, np.full_like(w, 0.05), np.zeros(32, np.float32), np.zeros(32, np.float32), q)
    layer = AnalogLayer(op, device(0.0), card, 0, 1, t_read=t, drift_compensation="global")
    layer.program()
    np.testing.assert_allclose(layer.drift_gains["mu"], 1 / f, rtol=1e-6)
