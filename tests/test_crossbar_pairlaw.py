"""The pair-law path: each sampled weight of a differential pair drawn from the tabulated law of its two cells.

Checked against an analytic law (clipped Gaussian cells with a known drift factor), against the per-cell
path and the generic device.program/read path in distribution, and for determinism (samples built ahead
equal samples built alone). Also: the drift exponent of a re-programmed cell is drawn at each programming,
the sum-of-ramps sigma decode, and the per-tile key grid."""
import math

import numpy as np
import pytest
from scipy import stats

from bayesim import rng
from bayesim.bnn.ops import BayesLinearOp, LayerQuant
from bayesim.bnn.quant import quantize_log, quantize_uniform
from bayesim.crossbar import AnalogLayer, crossbar_from_dict, kernels, pairlaw

CARD = crossbar_from_dict({"name": "c", "tile": {"rows": 64, "cols": 16}, "dac": {"bits": None},
                           "adc": {"bits": None}})


def _device(sd_prog=0.5, nu=0.1, nu_std=0.0, read=None):
    """Cells on [0, 25] uS with constant programming std sd_prog and power-law drift ((t + 1)/1)^-nu."""
    from bayesim.devices.card import build_card
    from bayesim.devices.composed import ComposedDevice

    return ComposedDevice(build_card({
        "name": "drift", "model": "gaussian", "range": {"g_min_uS": 0.0, "g_max_uS": 25.0, "log_min_uS": 0.5},
        "programming": {"model": "polynomial", "coeffs_uS": [sd_prog]} if sd_prog else {"model": "none"},
        "read": read or {"model": "none"}, "faults": {"stuck_at_gmin": 0.0, "stuck_at_gmax": 0.0},
        "d2d": {"relative": 0.0, "absolute_uS": 0.0},
        "drift": {"model": "power_law", "nu": nu, "nu_std": nu_std, "t0_s": 1.0}}, source="<test>"))


def _spq_op(out=32, inn=128, sigma=0.05, seed=0, bits=3):
    r = np.random.default_rng(seed)
    mu = r.normal(0, 0.3, (out, inn)).astype(np.float32)
    sg = np.full((out, inn), sigma, np.float32)
    q = LayerQuant("spq", 8, 0.01, 8, 0.1, "log", bits, 0.15)
    return BayesLinearOp(mu, sg, np.zeros(out, np.float32), np.zeros(out, np.float32), q)


def test_pair_tables_follow_the_analytic_law_of_clipped_drifting_cells():
    """Cell + at level L_q = q * 25/k uS, cell - at 0 uS clipped at 0 (a normal with half its mass at 0), both
    times the drift factor f = (t + 1)^-0.1. For 0 < q < k (L_q > 4 sd from both ends) the table of q has
    mean f (L_q - sd/sqrt(2 pi)) / 25 and variance f^2 sd^2 (1 + 1/2 - 1/(2 pi)) / 625 (hand-derived moments
    of the clipped normal); at q = k cell + is clipped at 25 uS as cell - at 0; q = 0 is the difference of
    two clipped cells (mean 0); rows -q mirror rows q."""
    sd, t, k = 0.5, 1e4, 3
    dev = _device(sd_prog=sd)
    layer = AnalogLayer(_spq_op(), dev, CARD, 0, 1, t_compute=t)
    assert not layer.pair_law  # 4,096 weights: the tables would cost more than they save (pairlaw.pays_off)
    layer.pair_law = True
    assert layer.summary()["path"] == "pair law (fused device law)"
    assert np.all(layer.kmax == k)  # one grid (3 bits: levels 0 .. 3) for every group
    pair, zero = layer._pair_tables()
    tab = pair.reshape(-1, kernels.PAIR_QUANTILES).astype(np.float64)
    assert tab.shape[0] == 2 * k + 1 and np.all(zero == k)
    assert np.all(np.diff(tab, axis=1) >= 0)  # quantiles ascend
    np.testing.assert_array_equal(tab[:k], -tab[:k:-1, ::-1])  # q < 0: the swapped pair
    f = (t + 1.0) ** -0.1
    half_var = sd ** 2 * (0.5 - 1 / (2 * math.pi))
    n = pairlaw.N_DRAWS
    for q in range(1, k + 1):
        row = tab[k + q]
        mean = f * (q * 25.0 / k - (1 + (q == k)) * sd / math.sqrt(2 * math.pi)) / 25.0
        var = f ** 2 * ((half_var if q == k else sd ** 2) + half_var) / 625.0
        assert abs(row.mean() - mean) < 5 * math.sqrt(var / n)
        assert row.var() == pytest.approx(var, rel=0.02)
    assert abs(tab[k].mean()) < 5 * math.sqrt(2 * half_var * f ** 2 / 625 / n)
    assert tab[k].var() == pytest.approx(2 * half_var * f ** 2 / 625, rel=0.03)


def test_pair_tables_are_cached_by_content_and_the_same_for_every_seed():
    dev = _device()
    a, b = (AnalogLayer(_spq_op(), dev, CARD, 0, seed, t_compute=10.0) for seed in (1, 2))
    np.testing.assert_array_equal(a._pair_tables()[0], b._pair_tables()[0])
    assert pairlaw.level_draws(np.array([3, 3, 7])) == (3 + 2) + (7 + 2)


def test_the_pair_law_is_taken_where_its_tables_pay_for_themselves():
    """pairlaw.pays_off: NOMINAL_SAMPLES samples of the layer must save more than its tables cost (by the cost
    model's constants, hand-computed here); it depends on the layer, not on the seed."""
    k = np.array([7, 7, 3])  # two grids: 9 + 5 = 14 cell levels to draw
    need = 14 * pairlaw.TABLE_S_PER_LEVEL / (pairlaw.NOMINAL_SAMPLES * pairlaw.SAVED_S_PER_WEIGHT_SAMPLE)
    assert pairlaw.pays_off(int(need) + 1, k) and not pairlaw.pays_off(int(need) - 1, k)
    op, dev, card, x = _pcm_jq()  # 9,600 weights
    assert not any(AnalogLayer(op, dev, card, 0, seed).pair_law for seed in (0, 1))
    from bayesim.crossbar import bench, load_crossbar

    big = AnalogLayer(*bench._workload()[:1], bench._device()[0],
                      load_crossbar(bench._REPO / "crossbars" / "default.yaml"), 0, 1)
    assert big.pair_law and big.summary()["path"] == "pair law (fused device law)"


def _pcm_jq(out=48, inn=200, seed=3, t=1e4, mapping="differential"):
    from bayesim.devices import load_device

    r = np.random.default_rng(seed)
    mu = r.normal(0, 0.3, (out, inn)).astype(np.float32)
    sg = np.abs(r.normal(0, 0.05, (out, inn))).astype(np.float32)
    q = LayerQuant("jq", 4, 0.05, 3, 0.1, "log", 4, 0.06)
    op = BayesLinearOp(quantize_uniform(mu, q.mu_step, q.mu_bits), quantize_log(sg, q.sigma_max, q.sigma_bits),
                       np.zeros(out, np.float32), np.zeros(out, np.float32), q)
    card = crossbar_from_dict({"name": "c", "tile": {"rows": 64, "cols": 16}, "dac": {"bits": None},
                               "adc": {"bits": None}, "mapping": {"kind": mapping}})
    return op, load_device("pcm"), card, r.uniform(0, 1, (8, inn)).astype(np.float32)


def test_pair_law_path_draws_the_weights_of_the_per_cell_path():
    """PCM, JQ 4 bits, a long read time (drift visible): the eps and the stored-array reads are the same
    streams on both paths, so every weight has the same level index q in every sample; only the cell pair's
    draw differs. The pooled weights of 40 samples follow the same law (two-sample KS), and so do the
    outputs (mean and spread per output)."""
    op, dev, card, x = _pcm_jq()
    layers = [AnalogLayer(op, dev, card, 0, 5, t_read=1e4, t_compute=1e4) for _ in range(2)]
    layers[0].pair_law = True  # forced on this small layer (pays_off would keep the per-cell law)
    assert not layers[1].pair_law
    w, y = [], []
    for layer in layers:
        ws, ys = [], []
        for s in range(40):
            ys.append(layer.forward(x, s))
            ws.append(layer._wn.copy())
        w.append(np.concatenate(ws))
        y.append(np.stack(ys))
    assert layers[1].summary()["path"] == "per-cell (fused device law)"
    ks = stats.ks_2samp(w[0], w[1])
    assert ks.statistic < 0.01, ks
    assert not np.array_equal(w[0], w[1])
    (m0, m1), (s0, s1) = (v.mean(0) for v in y), (v.std(0) for v in y)
    se = np.sqrt((s0 ** 2 + s1 ** 2) / 40)
    assert np.abs(m0 - m1).max() < 5 * se.max()
    assert abs(s0.mean() / s1.mean() - 1) < 0.05


def test_samples_built_ahead_equal_samples_built_alone(monkeypatch):
    """The pair-law kernel builds samples s + 1 .. s + P - 1 with sample s (P = PAIR_SAMPLES_PER_PASS); their
    weights and the event counts are those of a layer that builds every sample alone, on one thread as on
    two, and plan_samples stops it at the last sample planned."""
    import numba

    from bayesim.crossbar.layer import PAIR_SAMPLES_PER_PASS as P

    assert P >= 2
    monkeypatch.setattr(kernels, "PARALLEL_MIN_WORK", 0)  # this small layer too runs on the thread pool
    op, dev, card, x = _pcm_jq(t=1.0)
    ahead = AnalogLayer(op, dev, card, 0, 9)
    alone = AnalogLayer(op, dev, card, 0, 9)
    ahead.pair_law = alone.pair_law = True
    before = numba.get_num_threads()
    n = 2 * P + 1  # two whole passes and the first sample of a third
    for s in range(n):
        numba.set_num_threads(min(1 + s % 2, numba.config.NUMBA_NUM_THREADS))
        ahead._build(s)
        alone._ahead = {}  # forget what was built ahead: every sample from scratch
        alone._build(s)
        numba.set_num_threads(before)
        np.testing.assert_array_equal(ahead._wn, alone._wn)
    assert ahead.stats.to_dict() == alone.stats.to_dict()
    assert ahead.stats.program_events == n * 2 * op.mu_w.size and ahead.stats.cell_reads == n * 3 * op.mu_w.size
    assert sorted(ahead._ahead) == list(range(2 * P + 1, 3 * P))  # the rest of the third pass
    ahead.plan_samples(2 * P + 3)  # samples 0 .. 2P + 2: the next one was built ahead
    ahead._build(2 * P + 1)
    assert 2 * P + 1 not in ahead._ahead
    ahead._ahead = {}
    ahead._built = None
    ahead._build(2 * P + 1)  # a pass from here stops at the last sample planned
    assert sorted(ahead._ahead) == [2 * P + 2]
    ahead._built = None
    ahead._ahead = {}
    ahead._build(2 * P + 2)  # the last sample planned: built alone, nothing past it
    assert ahead._ahead == {}


def test_the_drift_exponent_is_drawn_at_each_programming():
    """Noise-free cells with a spread of drift exponents (nu = 0.1 +- 0.01), SPQ with sigma = 0 (every
    weight keeps its level): the weights change from sample to sample only through the exponents drawn
    at each programming, log w spreading by nu_std * ln(1 + t), on the pair-law path, the per-cell fused
    path and the generic device.program/read path alike."""
    from test_crossbar_layer import _GenericOnly

    t, nu_std = 1e6, 0.01
    dev = _device(sd_prog=0.0, nu_std=nu_std)
    op = _spq_op(sigma=0.0)
    for d, path in ((dev, "pair law (fused device law)"), (_GenericOnly(dev), "per-cell"),
                    (dev, "per-cell (fused device law)")):
        layer = AnalogLayer(op, d, CARD, 0, 4, t_compute=t)
        layer.pair_law = path.startswith("pair")
        assert layer.summary()["path"] == path
        w = np.stack([(layer._build(s), layer._wn.copy())[1] for s in range(48)]).astype(np.float64)
        on = np.all(w != 0, axis=0)  # q != 0 (a zero conductance does not drift)
        assert on.mean() > 0.5
        sd_log = np.log(np.abs(w[:, on])).std(axis=0)
        assert sd_log.mean() == pytest.approx(nu_std * math.log(1 + t), rel=0.1)


def test_sigma_decode_by_ramps_is_the_piecewise_linear_interpolation():
    """_decode_sigma_log (a sum of ramps, float32) against np.interp on the log ladder: within 2e-6 relative
    between the rungs, the rung values on them, constant beyond both ends."""
    ladder = np.geomspace(0.5, 25.0, 16)
    values = np.r_[0.0, 0.1 * 2.0 ** -np.arange(14, -1, -1)]
    rungs, kinks, ends = kernels.sigma_decode_coefficients(ladder, values)
    x = np.r_[np.random.default_rng(0).uniform(0.1, 30.0, 20000), ladder].astype(np.float32)
    out = x.copy()
    kernels._decode_sigma_log(out, x.size, rungs, kinks, ends, np.empty(x.size, np.float32))
    ref = np.interp(x.astype(np.float64), ladder, values)
    inside = (x > ladder[0]) & (x < ladder[-1])
    np.testing.assert_allclose(out[inside], ref[inside], rtol=2e-6, atol=1e-12)
    assert np.all(out[x <= ladder[0]] == 0.0) and np.all(out[x >= ladder[-1]] == np.float32(values[-1]))


def test_key_grid_is_derive_key_per_tile():
    grid = rng.derive_key_grid(11, ("prog", 3, "w+"), 3, 5)
    assert grid.dtype == np.uint64 and grid.shape == (3, 5)
    for r in range(3):
        for c in range(5):
            assert int(grid[r, c]) == rng.derive_key(11, "prog", 3, "w+", r, c)
    # ids after the tile's (r, c), and derive_key applied to every key of an array: the same keys, the same bits
    grid = rng.derive_key_grid(11, ("cells", 2), 3, 5, ("mu+",))
    keys = rng.derive_keys(grid, "programmed", 7)
    for r in range(3):
        for c in range(5):
            assert int(grid[r, c]) == rng.derive_key(11, "cells", 2, r, c, "mu+")
            assert int(keys[r, c]) == rng.derive_key(rng.derive_key(11, "cells", 2, r, c, "mu+"), "programmed", 7)
    edge = np.array([0, 1, 2 ** 63, 2 ** 64 - 1], np.uint64)
    assert [int(k) for k in rng.derive_keys(edge, "x", 2 ** 64 - 1)] == [rng.derive_key(int(e), "x", 2 ** 64 - 1)
                                                                       for e in edge]
    # several samples' keys in one call: derive_key(seed, *head, sample, *tail[, r, c])
    samples = [0, 5, 2 ** 40 + 3]
    rows = rng.derive_key_rows(11, ("eps_w",), samples, (2,))
    assert [int(k) for k in rows] == [rng.derive_key(11, "eps_w", s, 2) for s in samples]
    grids = rng.derive_key_rows(11, ("read_stored",), samples, (2,), grid=(3, 5))
    assert grids.shape == (3, 3, 5)
    for k, s in enumerate(samples):
        np.testing.assert_array_equal(grids[k], rng.derive_key_grid(11, ("read_stored", s, 2), 3, 5))
