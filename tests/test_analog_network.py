"""AnalogBNN: the whole network on crossbars against the software model."""
import numpy as np
import pytest

from bayesim.analog import AnalogBNN
from bayesim.bnn import ModelConfig, build_model, predict_probs
from bayesim.config import build
from bayesim.crossbar import crossbar_from_dict, load_crossbar
from bayesim.devices import load_device
from bayesim.errors import BayesimError

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def _model(strategy="fp", activation=None, seed=0):
    import torch

    torch.manual_seed(seed)
    cfg = build(ModelConfig, {"arch": "lenet5", "init_rho": -3.0,
                              "activation": activation or {"kind": "relu"},
                              "quant": {"strategy": strategy, "mu_bits": 4, "sigma_bits": 4, "w_bits": 4}})
    return build_model(cfg)


def _images(n=24, seed=1):
    return np.random.default_rng(seed).normal(0, 1, (n, 1, 28, 28)).astype(np.float32)


@pytest.mark.parametrize("strategy, activation", [
    ("fp", {"kind": "relu"}),
    ("spq", {"kind": "bounded", "upper": 4.0, "bits": 4}),
])
def test_ideal_crossbar_reproduces_software_probabilities(strategy, activation):
    model = _model(strategy, activation)
    x = _images()
    soft = predict_probs(model, x, samples=3, seed=7)
    hw = AnalogBNN(model.export_ops(), load_device("ideal"), load_crossbar(REPO / "crossbars" / "ideal.yaml"),
                   seed=7)
    probs = hw.predict_probs(x, samples=3, batch_size=10)
    assert probs.shape == soft.shape
    assert np.abs(probs - soft).max() <= 1e-5
    # small tiles: the same network spread over many tiles with digital accumulation
    small = crossbar_from_dict({"name": "small", "tile": {"rows": 16, "cols": 8}, "dac": {"bits": None},
                                "adc": {"bits": None}})
    probs_small = AnalogBNN(model.export_ops(), load_device("ideal"), small, seed=7).predict_probs(x, 3)
    assert np.abs(probs_small - soft).max() <= 1e-5


def test_noisy_device_changes_predictions_but_stays_deterministic():
    model = _model("jq", {"kind": "bounded", "upper": 4.0, "bits": 8})
    x = _images(16)
    card = load_crossbar(REPO / "crossbars" / "default.yaml")
    runs = []
    for _ in range(2):
        hw = AnalogBNN(model.export_ops(), load_device("pcm"), card, seed=3)
        hw.calibrate(_images(32, seed=5))
        runs.append(hw.predict_probs(x, samples=2))
    np.testing.assert_array_equal(runs[0], runs[1])
    soft = predict_probs(model, x, samples=2, seed=3)
    assert np.abs(runs[0] - soft).max() > 1e-4  # PCM noise and 8-bit periphery do change the outputs
    assert hw.stats.adc_conversions > 0 and hw.summary()["tiles"] >= 5


def test_loop_orders_give_identical_results_and_counts(monkeypatch):
    """Batches outer with cached per-sample weights (and the first layer's DAC done once per batch) gives
    the same probabilities and event counts, bit for bit, as samples outer."""
    import bayesim.analog.network as net

    model = _model("jq", {"kind": "bounded", "upper": 4.0, "bits": 8})
    x = _images(20)
    card = load_crossbar(REPO / "crossbars" / "default.yaml")
    results = []
    for budget in (net.WEIGHT_CACHE_BYTES, 0):  # 0: nothing fits, samples outer
        monkeypatch.setattr(net, "WEIGHT_CACHE_BYTES", budget)
        hw = AnalogBNN(model.export_ops(), load_device("pcm"), card, seed=3)
        hw.calibrate(_images(32, seed=5))
        results.append((hw.predict_probs(x, samples=3, batch_size=7), hw.stats.to_dict()))
        assert all(layer._sample_cache is None for layer in hw.layers.values())  # cache released
    np.testing.assert_array_equal(results[0][0], results[1][0])
    assert results[0][1] == results[1][1]


def test_maxpool_kernel_equals_window_max():
    from numpy.lib.stride_tricks import sliding_window_view

    from bayesim.analog.network import _maxpool

    r = np.random.default_rng(0)
    for shape, k, s in [((3, 4, 28, 28), 2, 2), ((2, 3, 13, 11), 3, 2), ((2, 2, 9, 9), 2, 1)]:
        x = r.normal(size=shape).astype(np.float32)
        ref = sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::s, ::s].max(axis=(4, 5))
        np.testing.assert_array_equal(_maxpool(x, k, s), ref)


def test_fused_activation_and_maxpool_match_numpy():
    """The analog forward's one-pass bounded activation equals bnn.quant.quantize_activation bit for bit
    (NaN, signed zeros, infinities, values beyond the bound), and max pooling equals a numpy window max."""
    from bayesim.analog.network import _bounded_activation, _maxpool
    from bayesim.bnn.quant import quantize_activation

    r = np.random.default_rng(0)
    a = r.normal(0, 3, (20, 3, 12, 12)).astype(np.float32)
    a.flat[:8] = [np.nan, -0.0, 0.0, np.inf, -np.inf, 1e30, -1e30, 2.5]
    for upper in (2.5, 1e-3):
        for bits in (None, 1, 4, 8):
            got, want = _bounded_activation(a, upper, bits), quantize_activation(a, upper, bits)
            np.testing.assert_array_equal(got, want)
            assert np.array_equal(np.signbit(got), np.signbit(want))
    for k, s in ((2, 2), (3, 1), (3, 2)):
        ho, wo = (12 - k) // s + 1, (12 - k) // s + 1
        want = np.stack([np.stack([a[:, :, i * s:i * s + k, j * s:j * s + k].max(axis=(2, 3)) for j in range(wo)],
                                  axis=-1) for i in range(ho)], axis=-2)
        np.testing.assert_array_equal(_maxpool(a, k, s), want)


def test_bad_inputs_and_sample_counts_are_refused():
    """A NaN or Inf input would silently give NaN predictions (and, in calibration, NaN ADC ranges for every
    later prediction); a sample count below 1 would return nothing. All are refused with a clear error."""
    from bayesim.errors import BayesimError

    model = _model("jq", {"kind": "bounded", "upper": 4.0, "bits": 8})
    hw = AnalogBNN(model.export_ops(), load_device("pcm"), load_crossbar(REPO / "crossbars" / "default.yaml"),
                   seed=3)
    good = _images(8, seed=5)
    for value in (np.nan, np.inf, -np.inf):
        bad = good.copy()
        bad[3, 0, 5, 5] = value
        calibrated = hw.calibrated
        with pytest.raises(BayesimError, match="calibration inputs: contain NaN or Inf"):
            hw.calibrate(bad)
        assert hw.calibrated == calibrated  # refused before anything changed
        hw.calibrate(good)
        with pytest.raises(BayesimError, match="inputs: contain NaN or Inf"):
            hw.predict_probs(bad, samples=2)
    for samples in (0, -1, 1.5, True):
        with pytest.raises(BayesimError, match="samples: .* is not allowed; a positive integer"):
            hw.predict_probs(good, samples=samples)
    with pytest.raises(BayesimError, match="calibration samples: 0 is not allowed"):
        hw.calibrate(good, samples=0)
    with pytest.raises(BayesimError, match="inputs: empty"):
        hw.predict_probs(good[:0], samples=2)
    assert np.isfinite(hw.predict_probs(good, samples=2)).all()


@pytest.mark.parametrize("times", [
    {"t_read_s": float("inf")}, {"t_read_s": float("nan")}, {"t_read_s": -1.0}, {"t_read_s": 2e10},
    {"t_compute_s": -5.0}, {"t_compute_s": float("nan")}, {"t_compute_s": "1"},
], ids=lambda t: "{}={!r}".format(*next(iter(t.items()))))
def test_read_and_compute_times_are_checked_when_built(times):
    """A time outside [0, 1e10] s (as the configs allow), NaN or not a number is refused when the network is built:
    an infinite read time used to crash the drift law's kernels, a negative or NaN one gave normal-looking numbers.
    The message names the keyword the caller passed (t_read_s, t_compute_s; it said the layers' t_read)."""
    (name,) = times
    model = _model("jq", {"kind": "bounded", "upper": 4.0, "bits": 8})
    with pytest.raises(BayesimError, match=rf"^{name} must be a number of seconds in \[0, 1e\+10\], got"):
        AnalogBNN(model.export_ops(), load_device("pcm"), load_crossbar(REPO / "crossbars" / "default.yaml"), seed=3,
                  **times)


def test_stored_arrays_are_programmed_once_and_counted_apart():
    """JQ: the stored mu pair and sigma cell of every weight are programmed once, before any inference, and
    counted in stored_program_events; stats count only the inferences' events (reset after calibration)."""
    model = _model("jq", {"kind": "bounded", "upper": 4.0, "bits": 8})
    hw = AnalogBNN(model.export_ops(), load_device("pcm"), load_crossbar(REPO / "crossbars" / "default.yaml"),
                   seed=3)
    weights = sum(layer.mu.size for layer in hw.layers.values())
    assert hw.stored_program_events == 3 * weights and hw.stats.program_events == 0
    hw.calibrate(_images(8, seed=5))
    assert hw.stored_program_events == 3 * weights and hw.stats.program_events == 0
    hw.predict_probs(_images(4), samples=3)
    assert hw.stats.program_events == 3 * 2 * weights  # JQ: both cells of every weight, for each sample
    fp = AnalogBNN(_model("fp").export_ops(), load_device("pcm"), load_crossbar(REPO / "crossbars" / "default.yaml"),
                   seed=3)
    assert fp.stored_program_events == 0  # fp: nothing stored (digital weights)
    fp.calibrate(_images(8, seed=5))
    fp.predict_probs(_images(4), samples=3)
    assert fp.stats.program_events == 3 * 2 * weights  # each sample's weights are still written to compute cells


@pytest.mark.parametrize("strategy, lumped", [("jq", False), ("vpq", True)])
def test_every_input_draws_its_own_output_noise_whatever_the_batching(strategy, lumped):
    """Output noise (and the lumped path's cell noise) is drawn per input of the whole set, not per row of
    a batch: the same images in a later batch get fresh noise, and batch size 10 gives what 20 gives."""
    import yaml

    raw = yaml.safe_load((REPO / "crossbars" / "default.yaml").read_text())
    raw.update(name="noisy", output_noise=0.05)
    card = crossbar_from_dict(raw)
    model = _model(strategy, {"kind": "bounded", "upper": 4.0, "bits": 8})
    x = _images(10)
    x2 = np.concatenate([x, x])
    out = {}
    for bs in (10, 20):
        hw = AnalogBNN(model.export_ops(), load_device("gaussian_mlc"), card, seed=3, lumped=lumped)
        assert all(layer.lumped == lumped for layer in hw.layers.values())
        hw.calibrate(_images(32, seed=5))
        out[bs] = hw.predict_probs(x2, samples=2, batch_size=bs)
    # the second copy of the images is not the first one's noise again (before: bit-identical)
    assert np.abs(out[10][:, :10] - out[10][:, 10:]).max() > 1e-3
    # a later call (another split) numbers its inputs after the earlier ones': x alone as inputs 10..19
    later = hw.predict_probs(x, samples=2, batch_size=10, first_index=10)
    if lumped:  # BLAS may round a product differently with another row count: an ADC code can flip at a tie
        assert np.abs(out[10] - out[20]).max() < 1e-3
        assert np.abs(later - out[20][:, 10:]).max() < 1e-3
    else:
        np.testing.assert_array_equal(out[10], out[20])
        np.testing.assert_array_equal(later, out[20][:, 10:])
    with pytest.raises(BayesimError, match="first_index must be an integer >= 0"):
        hw.predict_probs(x, samples=1, first_index=-1)
