"""Each device model against its own card: programmed/read statistics per level, faults, d2d, drift law,
tables, determinism for a seed whatever the thread count. Fixed seeds; bounds of >= 5 standard errors
(cannot flake, yet a wrong sigma by a few percent fails)."""
from __future__ import annotations

from pathlib import Path

import numba
import numpy as np
import pytest
from scipy import stats

from bayesim import rng
from bayesim.devices import load_device
from bayesim.devices.card import build_card
from bayesim.devices.composed import ComposedDevice

REPO = Path(__file__).resolve().parents[1]
DEV = REPO / "devices"
N = 20000  # cells per level


def device(mapping, source="<test>"):
    return ComposedDevice(build_card({"name": "t", **mapping}, source=source))


def program_levels(dev, levels, n=N, seed=1):
    t = np.repeat(np.asarray(levels, np.float32)[:, None], n, axis=1)
    return t, dev.program(t, rng.derive_key(seed, "p"), rng.derive_key(seed, "c"))


def check_gaussian(x, mean, sd, z=5.0):
    """Sample mean within z SE of `mean` and sample std within z SE of `sd` (SE of std = sd/sqrt(2n))."""
    n = x.size
    assert abs(x.mean(dtype=np.float64) - mean) < z * sd / np.sqrt(n) + 1e-6, (x.mean(), mean, sd)
    assert abs(x.std(dtype=np.float64) - sd) < z * sd / np.sqrt(2 * n) + 1e-6, (x.std(), sd)
    if sd > 0:
        assert stats.kstest((x - mean) / sd, "norm").pvalue > 1e-4


@pytest.mark.parametrize("card", ["pcm_ibm.yaml", "rram_wan2022.yaml"])
def test_programmed_levels_match_card(card):
    dev = load_device(DEV / card)
    levels = dev.levels(8)[1:]  # the lowest level is clipped at 0 by a visible fraction: tested apart
    t, held = program_levels(dev, levels)
    sig = dev.program_sigma(levels)
    for i, g in enumerate(levels):
        check_gaussian(held[i], float(g), float(sig[i]))


def test_pcm_program_sigma_is_the_aihwkit_polynomial():
    dev = load_device("pcm")
    g = np.array([0.0, 12.5, 25.0], np.float32)
    want = [0.26348, 0.26348 + 1.9650 * 0.5 - 1.1731 * 0.25, 0.26348 + 1.9650 - 1.1731]
    np.testing.assert_allclose(dev.program_sigma(g), want, rtol=1e-6)
    # read noise at t (aihwkit: q_s(G) sqrt(log((t + t0 + t_read)/(2 t_read))) |G_drift|), no drift here
    d = device({"model": "pcm", "drift": {"model": "none"}})
    q = min(0.0088 / 0.5 ** 0.65, 0.2)
    for t in (0.0, 3600.0):
        want = 12.5 * q * np.sqrt(np.log((t + 20.0 + 250e-9) / 500e-9))
        np.testing.assert_allclose(d.read_sigma(np.float32([12.5]), t), [want], rtol=1e-5)


def test_read_noise_std_and_growth_with_log_time():
    d = device({"model": "pcm", "drift": {"model": "none"}})
    levels = np.float32([5.0, 12.5, 20.0])
    t, held = program_levels(d, levels)
    for tr in (1.0, 1e6):
        r = d.read(held, tr, rng.derive_key(2, "r", tr), rng.derive_key(1, "c"))
        sd = d.read_sigma(levels, tr)
        for i in range(3):
            # read noise is relative to the held value: (r - h) / h ~ N(0, q_s sqrt(...))
            rel = (r[i] - held[i]) / held[i]
            check_gaussian(rel, 0.0, float(sd[i] / levels[i]))
    assert d.read_sigma(levels, 1e6)[1] > 1.1 * d.read_sigma(levels, 1.0)[1]
    rr = load_device(DEV / "rram_wan2022.yaml")
    h = np.full(N, 20.0, np.float32)
    r = rr.read(h, 1.0, 5, 6)
    check_gaussian(r, 20.0, 0.4)


def test_faults_fractions_fixed_per_cell():
    d = device({"model": "gaussian", "faults": {"stuck_at_gmin": 0.05, "stuck_at_gmax": 0.1},
                "d2d": {"relative": 0.0}, "programming": {"coeffs_uS": [0.1]}})
    n = 200000
    t = np.full(n, 20.0, np.float32)
    h1 = d.program(t, 1, 77)
    h2 = d.program(np.full(n, 10.0, np.float32), 2, 77)  # another event, another target, same cells
    lo, hi = h1 == d.g_min, h1 == d.g_max
    for frac, got in ((0.05, lo.mean()), (0.1, hi.mean())):
        assert abs(got - frac) < 5 * np.sqrt(frac * (1 - frac) / n)
    np.testing.assert_array_equal(lo, h2 == d.g_min)
    np.testing.assert_array_equal(hi, h2 == d.g_max)
    h3 = d.program(t, 1, 78)  # other cells: other faults
    assert (h3 == d.g_min).mean() > 0.04 and not np.array_equal(lo, h3 == d.g_min)


def test_d2d_is_fixed_per_cell_and_adds_its_spread():
    d = device({"model": "gaussian", "faults": {"stuck_at_gmin": 0.0, "stuck_at_gmax": 0.0},
                "d2d": {"relative": 0.03, "absolute_uS": 0.2}, "programming": {"coeffs_uS": [0.3]}})
    g = 20.0
    t = np.full(N, g, np.float32)
    h1, h2 = d.program(t, 1, 5), d.program(t, 2, 5)
    # same cells, two events: the d2d part cancels, the cycle-to-cycle part adds in quadrature
    check_gaussian(h1 - h2, 0.0, np.sqrt(2) * 0.3)
    check_gaussian(h1, g, np.sqrt((0.03 * g) ** 2 + 0.2 ** 2 + 0.3 ** 2))
    np.testing.assert_allclose(d.program_sigma(np.float32([g])), [0.3])


def test_power_law_drift_median():
    d = device({"model": "gaussian", "read": {"model": "none"}, "faults": {"stuck_at_gmin": 0.0,
                "stuck_at_gmax": 0.0}, "drift": {"nu": 0.05, "nu_std": 0.01, "t0_s": 1.0}})
    h = np.full(N, 30.0, np.float32)
    for t in (0.0, 10.0, 1e5):
        r = d.read(h, t, 3, 4)
        ratio = np.median(r / h)
        want = (1 + t) ** -0.05
        se = 1.2533 * 0.01 / np.sqrt(N) * want * np.log(1 + t)  # SE of the sample median, mapped to G
        assert abs(ratio - want) < 5 * se + 1e-6
        np.testing.assert_allclose(d.drift_factor(np.float32([30.0]), t), [(1 + t) ** -0.05], rtol=1e-6)
    # the exponent is per cell: the same cells drift alike at two times
    nu1 = -np.log(d.read(h, 10.0, 1, 4) / h) / np.log(11.0)
    nu2 = -np.log(d.read(h, 1e5, 2, 4) / h) / np.log(1e5 + 1)
    np.testing.assert_allclose(nu1, nu2, atol=2e-5)
    check_gaussian(nu1, 0.05, 0.01)


def test_pcm_drift_exponent_distribution():
    """Per-cell nu = -log(G(t)/G0)/log((t+t0)/t0) follows |N(mu(G), sd(G))| of aihwkit."""
    d = device({"model": "pcm", "read": {"model": "none"}})
    for g in (2.5, 12.5):
        h = np.full(N, g, np.float32)
        r = d.read(h, 1e4, 9, 10)
        nu = -np.log(r.astype(np.float64) / g) / np.log((1e4 + 20) / 20)
        gr = g / 25.0
        mu = np.clip(-0.0155 * np.log(gr) + 0.0244, 0.049, 0.1)
        sd = np.clip(-0.0125 * np.log(gr) - 0.0059, 0.008, 0.045)
        assert stats.kstest(nu, stats.foldnorm(mu / sd, scale=sd).cdf).pvalue > 1e-4
        assert abs(np.median(r / h) - d.drift_factor(np.float32([g]), 1e4)[0]) < 2e-3


def test_ideal_is_exact():
    d = load_device("ideal")
    lv = d.levels(16)
    t = np.tile(lv, 100)
    h = d.program(t, 1, 2)
    np.testing.assert_array_equal(h, t)
    np.testing.assert_array_equal(d.read(h, 1e6, 3, 2), h)
    assert d.gaussian_programming
    np.testing.assert_array_equal(d.program(np.float32([-1.0, 30.0]), 1, 2), [0.0, 25.0])  # clipped


def test_levels_spacings():
    d = load_device(DEV / "measured_pcm_drift.yaml")
    np.testing.assert_allclose(d.levels(3), [0.0, 12.5, 25.0])
    np.testing.assert_allclose(d.levels(3, "log"), [2.0, np.sqrt(50.0), 25.0], rtol=1e-6)
    np.testing.assert_allclose(d.levels(8, "measured"), [2, 5, 8, 11, 14, 17, 20, 23])
    from bayesim.errors import BayesimError

    with pytest.raises(BayesimError, match="8 measured levels"):
        d.levels(4, "measured")
    with pytest.raises(BayesimError, match="at least 2"):
        d.levels(1)


def test_mean_std_table_and_interpolation():
    d = load_device(DEV / "measured_pcm_drift.yaml")
    assert not d.gaussian_programming  # biased means and PCM drift
    text = (DEV / "example_measured.csv").read_text().splitlines()
    rows = np.array([[float(v) for v in ln.split(",")] for ln in text if ln and ln[0].isdigit()])
    targets = np.float32([rows[2, 0], rows[5, 0], (rows[2, 0] + rows[3, 0]) / 2])
    mean = [rows[2, 1], rows[5, 1], (rows[2, 1] + rows[3, 1]) / 2]
    sd = [rows[2, 2], rows[5, 2], (rows[2, 2] + rows[3, 2]) / 2]
    t, held = program_levels(d, targets)
    for i in range(3):
        check_gaussian(held[i], mean[i], sd[i])
    np.testing.assert_allclose(d.program_sigma(targets), sd, rtol=1e-6)


def test_samples_table_draws_the_empirical_law(tmp_path):
    gen = np.random.default_rng(0)
    s_lo = 5.0 + gen.uniform(-1, 1, 500)          # uniform, far from Gaussian
    s_hi = 15.0 + gen.exponential(1.0, 400)        # skewed
    lines = ["target_uS,sample_uS"] + [f"5.0,{float(v)!r}" for v in s_lo] + [f"15.0,{float(v)!r}" for v in s_hi]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "m.yaml").write_text("name: m\nmodel: table\nprogramming: {file: m.csv}\nrange: {clip: nonnegative}\n")
    d = load_device(tmp_path / "m.yaml")
    assert not d.gaussian_programming and (d.g_min, d.g_max) == (5.0, 15.0)
    t, held = program_levels(d, [5.0, 15.0, 10.0])
    assert stats.ks_2samp(held[0], s_lo).pvalue > 1e-3
    assert stats.ks_2samp(held[1], s_hi).pvalue > 1e-3
    assert set(np.unique(held[0])) <= set(np.float32(s_lo))  # only measured values at a measured level
    # half-way: the quantile average of the two laws, mean = average of the two means
    assert abs(held[2].mean() - (s_lo.mean() + s_hi.mean()) / 2) < 5 * 0.8 / np.sqrt(N)
    np.testing.assert_allclose(d.program_sigma(np.float32([5.0])), [s_lo.std()], rtol=1e-5)


@pytest.mark.parametrize("card", ["pcm_ibm.yaml", "gaussian_mlc.yaml", "measured_pcm_drift.yaml"])
def test_deterministic_whatever_the_thread_count(card):
    d = load_device(DEV / card)
    t = np.tile(d.levels(16), 4096).reshape(64, -1)
    old = numba.get_num_threads()
    out = []
    try:
        for k in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(k)
            h = d.program(t, 11, 12)
            out.append((h.tobytes(), d.read(h, 100.0, 13, 12).tobytes()))
    finally:
        numba.set_num_threads(old)
    assert out[0] == out[1]
    h2 = d.program(t, 14, 12)
    assert h2.tobytes() != out[0][0]  # another event key: other noise


def test_builtin_presets_equal_their_cards():
    g = np.linspace(0, 25, 11, dtype=np.float32)
    for name, card in (("pcm", "pcm_ibm.yaml"), ("rram", "rram_wan2022.yaml"), ("gaussian", "gaussian_mlc.yaml"),
                       ("ideal", "ideal.yaml")):
        a, b = load_device(name), load_device(DEV / card)
        np.testing.assert_array_equal(a.program(np.tile(g, 10), 1, 2), b.program(np.tile(g, 10), 1, 2))
        np.testing.assert_array_equal(a.read_sigma(g, 10.0), b.read_sigma(g, 10.0))


def test_example_plugin_by_path_and_statistics():
    d = load_device(DEV / "examples" / "my_device.yaml")
    assert d.name == "my_lognormal_cell" and (d.g_min, d.g_max) == (1.0, 20.0)
    t, held = program_levels(d, [10.0])
    sd = float(d.program_sigma(np.float32([10.0]))[0])
    assert abs(held.mean() - 10.0) < 5 * sd / np.sqrt(N)
    assert abs(held.std() - sd) < 5 * sd / np.sqrt(N)  # log-normal: a looser SE for the std
    np.testing.assert_array_equal(d.program(t, 3, 4), d.program(t, 3, 4))


def test_example_plugin_by_entry_point(monkeypatch, tmp_path):
    """A real installed distribution (a dist-info folder on sys.path) advertising the plug-in."""
    dist = tmp_path / "my_device_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-device-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[bayesim.devices]\nmy_device = my_device:MyDevice\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(DEV / "examples"))
    from bayesim.devices import list_devices

    d = load_device("my_device")
    assert type(d).__name__ == "MyDevice" and d.g_max == 20.0
    assert any(r["name"] == "my_device" and r["kind"] == "plug-in" for r in list_devices())
    # a card may name the entry point as its model and pass params
    card = build_card({"name": "ep_card", "model": "my_device", "params": {"g_max_uS": 30.0}})
    from bayesim.devices import device_from_card

    d2 = device_from_card(card)
    assert d2.g_max == 30.0 and d2.name == "ep_card"


@pytest.mark.parametrize("card", ["pcm_ibm.yaml", "gaussian_mlc.yaml"])
def test_read_moments_give_the_read_law(card):
    """read(held, t) is clip(mean + sd z) with (mean, sd) = read_moments(held, t, cell_key): z recovered from
    the read equals the read stream's own normals (unclipped cells), drift included."""
    d = load_device(DEV / card)
    h = d.program(np.tile(d.levels(16), 256), 3, 4)
    mean, sd = d.read_moments(h, 1e4, 4)
    r = d.read(h, 1e4, 5, 4)
    z = rng.normals(5, h.shape)
    ok = (sd > 0) & (r > d.clip_range[0]) & (r < d.clip_range[1])
    assert ok.mean() > 0.5
    np.testing.assert_allclose(r[ok], (mean + sd * z)[ok], rtol=1e-5, atol=1e-5)
    if card == "pcm_ibm.yaml":
        assert d.gaussian_program and not d.gaussian_programming
        assert np.median(mean[h > 1] / h[h > 1]) < 0.8  # PCM drift over 1e4 s (nu ~ 0.05-0.1, t0 20 s)


def test_log_ladder_noise_is_the_noise_in_rungs_near_sigma_max():
    """Hand-computed: rungs 1, 2, 4, 8, 16 uS (a geometric ladder of 5), programming std 0.8 uS, no read noise or
    drift: the top four gaps 1, 2, 4, 8 uS hold 0.8, 0.4, 0.2, 0.1 rungs of noise (the clipped top rung less),
    median 0.3. A noiseless device has none; on PCM more sigma bits pack the rungs closer, and 8 bits put about 3
    rungs of noise near the top. The spread is sampled from 20,000 cells a rung: known to about 1%."""
    from bayesim.devices.stats import log_ladder_noise

    clean = {"d2d": {"relative": 0.0}, "faults": {"stuck_at_gmin": 0.0, "stuck_at_gmax": 0.0}}
    flat = ComposedDevice(build_card({"name": "flat", "model": "gaussian", "range": {"g_min_uS": 1.0, "g_max_uS": 16.0},
                                      "programming": {"model": "polynomial", "coeffs_uS": [0.8]},
                                      "read": {"model": "none"}, "drift": {"model": "none"}, **clean}))
    assert log_ladder_noise(flat, 5, 1.0) == pytest.approx(0.3, rel=0.03)
    # the card template's 0.1% stuck cells (12 uS off) would set a std; the 1-sigma percentile spread ignores them
    faulty = ComposedDevice(build_card({"name": "flat", "model": "gaussian", "range": {"g_min_uS": 1.0, "g_max_uS": 16.0},
                                        "programming": {"model": "polynomial", "coeffs_uS": [0.8]},
                                        "read": {"model": "none"}, "drift": {"model": "none"}}))
    assert faulty.card.faults.stuck_at_gmax > 0 and log_ladder_noise(faulty, 5, 1.0) == pytest.approx(0.3, rel=0.03)
    assert log_ladder_noise(load_device("ideal"), 256, 1.0) == 0.0
    pcm = [log_ladder_noise(load_device("pcm"), 1 << b, 1.0) for b in (4, 6, 8)]
    assert pcm[0] < pcm[1] < 1.0 < 2.5 < pcm[2] < 4.0


def test_log_ladder_noise_counts_the_spread_of_drift_exponents():
    """A device whose only noise is the cell-to-cell spread of its drift exponent (power law, nu = 0.1 +- 0.02, no
    programming or read noise): at t = 1e4 s with t0 = 1 s each cell reads G r^-nu, r = 1e4, a log-normal of log
    std s = 0.02 ln r = 0.184 around the median G r^-0.1. Its 1-sigma half-width is G sinh(s) and the gap to the
    rung below (half the conductance) is G / 2: 2 sinh(0.184) = 0.371 rungs at every rung. The analytic read std
    at the median drift, which this measure used before, is 0 here."""
    import math

    from bayesim.devices.stats import log_ladder_noise

    drifting = ComposedDevice(build_card({
        "name": "drifting", "model": "gaussian", "range": {"g_min_uS": 1.0, "g_max_uS": 16.0, "clip": "nonnegative"},
        "programming": {"model": "none"}, "read": {"model": "none"}, "d2d": {"relative": 0.0},
        "faults": {"stuck_at_gmin": 0.0, "stuck_at_gmax": 0.0},
        "drift": {"model": "power_law", "nu": 0.1, "nu_std": 0.02, "t0_s": 1.0}}))
    assert float(np.max(drifting.read_sigma(np.float32([8.0, 16.0]), 1e4 - 1))) == 0.0
    expected = 2 * math.sinh(0.02 * math.log(1e4))
    assert log_ladder_noise(drifting, 5, 1e4 - 1) == pytest.approx(expected, rel=0.03)
    assert log_ladder_noise(drifting, 5, 0.0) == 0.0
