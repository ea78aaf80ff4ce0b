"""`bayesim bench`: its numpy baseline computes the model the simulator computes, and the report is whole.

No timing is asserted (speed is shown by running the benchmark, never by a timed test)."""
from pathlib import Path

import numpy as np
import pytest

from bayesim.crossbar import AnalogLayer, bench, load_crossbar

REPO = Path(__file__).resolve().parents[1]


def test_numpy_baseline_is_the_same_model_as_the_simulator():
    """Per-output mean and spread over Monte-Carlo samples agree between the fused simulator and the
    straightforward numpy baseline of the benchmark, so the speed ratio compares like with like."""
    device, _ = bench._device()
    card = load_crossbar(REPO / "crossbars" / "default.yaml")
    op, x = bench._workload()
    x = x[:64]
    layer = AnalogLayer(op, device, card, layer_index=0, seed=1)
    layer.calibrate_adc(x, range(2))
    s = 24
    sim = np.stack([layer.forward(x, i + 10) for i in range(s)])
    ref = np.stack(bench.numpy_baseline(op, device, card, x, s, layer.adc_range, seed=3))
    assert sim.shape == ref.shape == (s, 64, bench.N_OUT)
    ref2 = np.stack(bench.numpy_baseline(op, device, card, x, s, layer.adc_range, seed=4))
    m_sim, m_ref = sim.mean(0), ref.mean(0)
    sd_sim, sd_ref = sim.std(0).mean(), ref.std(0).mean()
    # the means differ by what differs between two runs of the baseline itself (sampling noise and the
    # programming noise of the stored mu array): measured 0.133 vs 0.129
    assert np.corrcoef(m_sim.ravel(), m_ref.ravel())[0, 1] > 0.95
    assert np.abs(m_sim - m_ref).mean() < 1.25 * np.abs(ref2.mean(0) - m_ref).mean()
    assert abs(sd_sim / sd_ref - 1) < 0.1
    # and the spread is real: a model without the Bayesian draw or device noise would fail the line above
    assert sd_ref > 0.1 * np.abs(m_ref).mean()


def test_bench_report_names_every_number(monkeypatch):
    r = bench.run(samples=2, repeat=1)
    for key in ("time_per_sample_s", "blas_time_per_sample_s", "numpy_time_per_sample_s"):
        assert r[key] > 0
    assert r["throughput_vs_blas"] == r["rounds"][0]["blas_s"] / r["rounds"][0]["analog_s"]
    stages = r["stages_per_sample_s"]
    assert stages["weight_build"] > 0 and stages["gemm_adc"] > 0 and r["setup_s"] > 0
    assert r["throughput_vs_blas_if_build_free"] == r["rounds"][0]["blas_s"] / r["rounds"][0]["gemm_adc_s"]
    text = bench.format_report(r)
    for line in ("time per sample", "BLAS float32 matmul", "numpy baseline", "throughput vs BLAS", "speed vs numpy",
                 "16-bit inverse-CDF table", "12-bit table", "12-bit quantile table of each level pair",
                 "weight build", "GEMM + ADC", "with a free weight build", "DAC 8 / ADC 8 bits", "target >= 0.5",
                 "once per layer, not in the time per sample", "the pair-law tables"):
        assert line in text
    assert 0 <= r["machine"]["other_processes_cpu_fraction"] <= 1
    assert r["machine"]["cpu"] and f"CPUs ({r['machine']['cpu']})" in text  # ratios depend on the core: named
    for other, busy in ((0.05, False), (0.3, True), (None, False)):
        r["machine"]["other_processes_cpu_fraction"] = other
        assert ("NOTE: other processes used 30% of the machine's CPU time" in bench.format_report(r)) == busy


def test_bench_counts_other_processes_cpu_time(monkeypatch):
    """Other processes' share = (machine busy CPU s - this process's CPU s) / (wall s x CPUs), clipped to [0, 1]."""
    monkeypatch.setattr(bench.os, "cpu_count", lambda: 2)
    assert bench._other_cpu_fraction((0.0, 100.0, 5.0), (2.0, 103.0, 6.0)) == pytest.approx(0.5)  # 3 - 1 of 4
    assert bench._other_cpu_fraction((0.0, 100.0, 5.0), (2.0, 101.0, 6.5)) == 0.0  # this process's own time
    assert bench._other_cpu_fraction((0.0, None, 5.0), (2.0, 101.0, 6.0)) is None  # no /proc/stat
    wall, busy, own = bench._cpu_seconds()
    assert wall > 0 and own > 0 and (busy is None or busy >= own)


def test_bench_floor_adds_up_and_names_its_parts():
    """`bayesim bench --floor`: the floor is the timed parts times their counts per weight, over the layer's
    weights and the threads, and the best ratio is BLAS over floor + GEMM/ADC (no timing is asserted)."""
    r = {"blas_time_per_sample_s": 1e-3, "stages_per_sample_s": {"gemm_adc": 1.2e-3, "weight_build": 2e-3}}
    f = bench.floor(r)
    c = f["ns_per_item_one_thread"]
    assert set(c) == {"eps (16-bit table)", "device (12-bit table)"} and min(c.values()) > 0
    per = c["eps (16-bit table)"] + 4 * c["device (12-bit table)"]
    assert f["floor_ns_per_weight_one_thread"] == pytest.approx(per)
    assert f["weight_build_floor_s"] == pytest.approx(bench.N_IN * bench.N_OUT * per * 1e-9 / f["threads"])
    assert f["best_throughput_vs_blas"] == pytest.approx(1e-3 / (f["weight_build_floor_s"] + 1.2e-3))
    assert f["weight_build_ns_per_weight_one_thread"] == pytest.approx(2e-3 * f["threads"] / (784 * 512) * 1e9)
    text = bench.format_floor(f)
    for phrase in ("eps (16-bit table)", "x 1 per weight", "x 4 per weight",
                   "measured weight build: 2.00 ms", "GEMM + ADC (1.20 ms)", "target >= 0.5"):
        assert phrase in text


def test_bench_floor_counts_are_those_of_the_workload():
    """The draw counts of the floor hold for the benchmark's layer: stored mu/sigma cells read by the fused
    kernel (3 draws), the Bayesian draw (1), the programmed cell pair drawn from its tabulated law (1)."""
    device, _ = bench._device()
    card = load_crossbar(REPO / "crossbars" / "default.yaml")
    op, x = bench._workload()
    layer = AnalogLayer(op, device, card, layer_index=0, seed=1)
    layer.calibrate_adc(x[:4], range(1))  # programs the stored arrays
    assert layer.stored and layer.fused_read and layer.cell_law and layer.quantized and not layer.offset
    assert layer.sampler == "digital" and not layer.lumped
    assert layer.pair_law and layer.summary()["path"] == "pair law (fused device law)"
    assert sum(bench.DRAWS_PER_WEIGHT.values()) == 1 + 3 + 1
