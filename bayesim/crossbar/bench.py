"""`bayesim bench`: speed of the crossbar simulator on a fixed workload, as ratios measured in one run.

Workload: one 784x512 Bayesian linear layer, batch 256, S = 32 Monte-Carlo samples, JQ at 4 bits
(mu, sigma and sampled weights), the PCM device card (`load_device("pcm")`: drift, 1/f read noise),
the default crossbar card (256x256 tiles, 8-bit DAC and ADC with per-column max-calibrated ranges).

The analog side runs as `AnalogBNN` does: inputs DAC'd once per batch (`prepare`), then each sample
builds its weights and runs GEMM + ADC (`forward_prepared`).

Reported: time per sample, and its two parts timed apart (the weight kernel; GEMM + ADC); throughput as a ratio of BLAS float32 matmul of the same shapes
(S x [256,784] @ [784,512], timed in the same run); speed as a ratio of `numpy_baseline`, a
straightforward numpy implementation of the same model (np.random normals, np.rint quantization,
per-cell noise, matmul per row tile, DAC/ADC) written here.

`floor` (`bayesim bench --floor`): a lower bound of the weight build from the work every sample must do
per weight (its Gaussian draws and PCM cell reads, timed alone), and the best ratio to BLAS it allows.
"""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numba as nb
import numpy as np

from bayesim import rng
from bayesim.crossbar.kernels import DEVICE_TABLE, _eps_indices, _gather3, _table_fields4

N_IN, N_OUT, BATCH, SAMPLES, BITS = 784, 512, 256, 32, 4
_REPO = Path(__file__).resolve().parents[2]


def _device():
    """The device of the benchmark: the PCM card (devices/pcm_ibm.yaml: aihwkit PCM programming noise,
    per-cell drift and 1/f read noise), through the crossbar's fused device-law path."""
    from bayesim.devices import load_device

    return load_device("pcm"), "pcm (PCM card: programming polynomial, per-cell drift, 1/f read noise)"


def _workload(seed=0):
    from bayesim.bnn.ops import BayesLinearOp, LayerQuant
    from bayesim.bnn.quant import quantize_log, quantize_uniform, uniform_step

    r = np.random.default_rng(seed)
    mu = r.normal(0, 0.05, (N_OUT, N_IN)).astype(np.float32)
    sigma = np.abs(r.normal(0.02, 0.01, (N_OUT, N_IN))).astype(np.float32)
    mu_step = float(uniform_step(mu, BITS))
    sigma_max = float(sigma.max())
    w_step = float(uniform_step(np.abs(mu) + 2 * sigma, BITS))
    q = LayerQuant("jq", BITS, mu_step, BITS, sigma_max, "log", BITS, w_step)
    mu_q = quantize_uniform(mu, mu_step, BITS)
    sg_q = quantize_log(sigma, sigma_max, BITS)
    b = np.zeros(N_OUT, np.float32)
    x = r.uniform(0, 1, (BATCH, N_IN)).astype(np.float32)
    return BayesLinearOp(mu_q, sg_q, b, b, q), x


def _np_read(device, g0, z_nu, t):
    """numpy: PCM read law at t s (drift with the cell's fixed normal z_nu, then 1/f read noise)."""
    dr, rd = device.card.drift, device.card.read
    gr = np.abs(g0) / device.g_max
    lg = np.log(np.maximum(gr, 1e-7))
    nu = np.abs(np.clip(-0.0155 * lg + 0.0244, 0.049, 0.1) + np.clip(-0.0125 * lg - 0.0059, 0.008, 0.045) * z_nu)
    g = g0 * ((t + dr.t0_s) / dr.t0_s) ** -nu
    q = np.minimum(rd.q_coeff / np.maximum(gr ** rd.q_exponent, 1e-3), rd.q_max)
    sd = np.abs(g) * q * np.sqrt(np.log((t + rd.t0_s + rd.t_pulse_s) / (2 * rd.t_pulse_s)))
    return g, sd


def numpy_baseline(op, device, card, x, samples, adc_range, t_read=1.0, t_compute=1.0, seed=0):
    """Straightforward numpy implementation of the same model (the benchmark's baseline)."""
    q = op.quant
    g = np.random.default_rng(seed)
    lo = device.clip_range[0]
    span = device.g_max - device.g_min
    m_w = (1 << (q.w_bits - 1)) - 1
    k_mu = np.rint(op.mu_w / np.float32(q.mu_step))
    unit_mu = span / np.maximum(np.abs(k_mu).max(axis=1, keepdims=True), 1)
    gp = device.g_min + np.maximum(k_mu, 0) * unit_mu
    gm = device.g_min + np.maximum(-k_mu, 0) * unit_mu

    def program(t):
        return np.maximum(t + device.program_sigma(t) * g.standard_normal(t.shape, dtype=np.float32), lo)

    def read(held, z_nu, t):
        mean, sd = _np_read(device, held, z_nu, t)
        return np.maximum(mean + sd * g.standard_normal(held.shape, dtype=np.float32), lo)

    held_p, held_m = program(gp), program(gm)
    from bayesim.bnn.quant import log_codes, log_levels

    ladder = np.asarray(device.levels((1 << q.sigma_bits), "log"), np.float64)
    values = log_levels(q.sigma_max, q.sigma_bits)[::-1].astype(np.float64)
    gs = ladder[ladder.size - 1 - log_codes(op.sigma_w, q.sigma_max, q.sigma_bits)].astype(np.float32)
    held_s = program(gs)
    nu_p, nu_m, nu_s = (g.standard_normal(gp.shape, dtype=np.float32) for _ in range(3))  # drawn at programming
    wmax = (np.abs(op.mu_w) + 4.33 * op.sigma_w).max(axis=1, keepdims=True)
    kmax = np.clip(np.rint(wmax / q.w_step), 1, m_w)
    qd = (1 << (card.dac.bits - 1 + (1 if not card.dac.signed else 0))) - 1
    qa = (1 << (card.adc.bits - 1)) - 1
    xs = np.abs(x).max(axis=1, keepdims=True)
    xn = np.clip(np.rint(x / xs * qd), 0, qd) / qd
    rows = card.tile.rows
    out = []
    for s in range(samples):
        rp, rm = read(held_p, nu_p, t_read), read(held_m, nu_m, t_read)
        mu_r = (rp - rm) / unit_mu * q.mu_step
        rs = read(held_s, nu_s, t_read)
        sg_r = np.interp(np.log(np.maximum(rs, 1e-30)), np.log(ladder), values).astype(np.float32)
        w = mu_r + sg_r * g.standard_normal(mu_r.shape, dtype=np.float32)
        kq = np.clip(np.rint(w / q.w_step), -kmax, kmax)
        nu_a, nu_b = (g.standard_normal(gp.shape, dtype=np.float32) for _ in range(2))  # this programming's
        tp = read(program(device.g_min + np.maximum(kq, 0) * span / kmax), nu_a, t_compute)
        tm = read(program(device.g_min + np.maximum(-kq, 0) * span / kmax), nu_b, t_compute)
        wn = ((tp - tm) / span).astype(np.float32)
        y = np.zeros((x.shape[0], wn.shape[0]), np.float32)
        for r, r0 in enumerate(range(0, x.shape[1], rows)):
            u = xn[:, r0:r0 + rows] @ wn[:, r0:r0 + rows].T
            rng_r = adc_range[r]
            u = np.clip(np.rint(u / rng_r * qa), -qa, qa) * rng_r / qa
            y += u * xs * (kmax[:, 0] * q.w_step)
        out.append(y)
    return out


def _setup_seconds(op, device, card) -> float:
    """Wall time (s) of what a layer does once, before its first sample: programming the stored arrays and,
    on the pair-law path, building its tables (from an empty table cache)."""
    from bayesim.crossbar import AnalogLayer, pairlaw

    layer = AnalogLayer(op, device, card, layer_index=0, seed=2)
    saved = dict(pairlaw._CACHE)
    pairlaw._CACHE.clear()
    try:
        t0 = time.perf_counter()
        layer.program()
        if layer.pair_law:
            layer._pair_tables()
        return time.perf_counter() - t0
    finally:
        pairlaw._CACHE.update(saved)


def _timed(fn) -> float:
    # Let the other phase's thread pools go idle first: OpenBLAS workers spin for ~0.1 s after a
    # multi-threaded GEMM, and on few cores they would be timed as part of the next phase.
    time.sleep(0.3)
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(samples: int = SAMPLES, repeat: int = 3) -> dict:
    """Run the benchmark; returns a JSON-able dict of timings, ratios and precisions.

    The three timings are interleaved in `repeat` rounds (analog S samples, BLAS S products, numpy
    baseline on S/4 samples) so that each round's ratios see the same machine load; medians are reported.
    """
    import numba

    from bayesim.crossbar import AnalogLayer, kernels, load_crossbar, pairlaw

    device, device_note = _device()
    card = load_crossbar(_REPO / "crossbars" / "default.yaml")
    op, x = _workload()
    layer = AnalogLayer(op, device, card, layer_index=0, seed=1)
    layer.calibrate_adc(x, range(2))
    layer.forward(x, 0)  # compile / warm up
    layer.plan_samples(samples + 1)  # the timed loops run samples 1 .. samples
    setup_s = _setup_seconds(op, device, card)
    w = np.ascontiguousarray(op.mu_w)
    np.matmul(x, w.T)
    base_samples = max(1, samples // 4)

    def analog():
        # as AnalogBNN does: the DAC'd inputs are prepared once per batch, then every sample reuses them
        prepared = layer.prepare(x)
        for s in range(samples):
            layer._built = None  # a fresh Monte-Carlo sample every time, even when sample ids repeat
            layer.forward_prepared(prepared, s + 1)

    def blas():
        for _ in range(samples):
            np.matmul(x, w.T)

    def base():
        numpy_baseline(op, device, card, x, base_samples, layer.adc_range)

    prepared = layer.prepare(x)

    def build():  # the analog time's first part: the weight kernel alone
        for s in range(samples):
            layer._built = None
            layer._build(s + 1)

    def products():  # its second part: GEMM + ADC + accumulation on the weights just built
        for s in range(samples):
            layer._forward_prepared(prepared, s + 1)

    rounds = []
    cpu0 = _cpu_seconds()
    for _ in range(repeat):
        ta = _timed(analog) / samples
        tb = _timed(blas) / samples
        tn = _timed(base) / base_samples
        tw = _timed(build) / samples
        tp = _timed(products) / samples
        rounds.append((ta, tb, tn, tw, tp))
    other_cpu = _other_cpu_fraction(cpu0, _cpu_seconds())
    ta, tb, tn, tw, tp = (float(np.median([r[i] for r in rounds])) for i in range(5))
    ratio_blas = float(np.median([r[1] / r[0] for r in rounds]))
    ratio_numpy = float(np.median([r[2] / r[0] for r in rounds]))
    t_analog, t_blas = ta * samples, tb * samples
    macs = samples * BATCH * N_IN * N_OUT
    return {
        "workload": {"layer": f"{N_IN}x{N_OUT}", "batch": BATCH, "samples": samples, "strategy": "jq",
                     "bits": {"mu": BITS, "sigma": BITS, "w": BITS, "dac": card.dac.bits, "adc": card.adc.bits},
                     "crossbar": f"{card.name} ({card.tile.rows}x{card.tile.cols} tiles, {layer.n_rt}x{layer.n_ct})",
                     "device": device_note, "path": layer.summary()["path"]},
        "precision": {"weights_and_products": "float32",
                      "gaussian": f"{rng.NORMAL_BITS}-bit inverse-CDF table for eps (|z| <= "
                                  f"{float(np.abs(rng.NORMAL_TABLE).max()):.2f}), {kernels.DEVICE_NORMAL_BITS}-bit "
                                  "table for the stored cells' read noise" + (
                                      f"; programmed cell pairs: {kernels.DEVICE_NORMAL_BITS}-bit quantile table of "
                                      "each level pair's (G+ - G-) law, from 2^"
                                      f"{pairlaw.N_DRAWS.bit_length() - 1} draws per level (16-bit table normals)"
                                      if layer.pair_law else "; programming noise of the programmed cells"),
                      "dac_bits": card.dac.bits, "adc_bits": card.adc.bits,
                      "numpy_baseline_gaussian": "numpy PCG64 float32 standard_normal (full precision)"},
        "time_per_sample_s": ta,
        "blas_time_per_sample_s": tb,
        "numpy_time_per_sample_s": tn,
        "stages_per_sample_s": {"weight_build": tw, "gemm_adc": tp},
        "setup_s": setup_s,
        "throughput_vs_blas": ratio_blas,
        "throughput_vs_blas_if_build_free": float(np.median([r[1] / r[4] for r in rounds])),
        "speedup_vs_numpy": ratio_numpy,
        "rounds": [{"analog_s": a, "blas_s": b, "numpy_s": n, "weight_build_s": w, "gemm_adc_s": g}
                   for a, b, n, w, g in rounds],
        "analog_gmacs": macs / t_analog / 1e9,
        "blas_gmacs": macs / t_blas / 1e9,
        "targets": {"throughput_vs_blas": 0.5, "speedup_vs_numpy": 4.0},
        "machine": {"cpus": os.cpu_count(), "cpu": _cpu_model(), "numba_threads": numba.get_num_threads(),
                    "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
                    "other_processes_cpu_fraction": other_cpu,
                    "python": platform.python_version(), "numpy": np.__version__},
    }


def _cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else platform) and the LLVM target numba compiles for:
    ratios to BLAS depend on the core (SIMD width, caches, memory bandwidth), so a report names it."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), name)
    except OSError:
        pass
    try:
        import llvmlite.binding as ll

        return f"{name}, LLVM target {ll.get_host_cpu_name()}"
    except Exception:  # llvmlite is numba's; the name alone is still worth printing
        return name


#: above this share of the machine's CPU time taken by other processes while the bench ran, its times are
#: not this code's alone
BUSY_OTHER_CPU_FRACTION = 0.1


def _cpu_seconds():
    """(wall s, CPU s busy on the whole machine, CPU s of this process) now; the machine's from /proc/stat
    (Linux), None elsewhere."""
    t = os.times()
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        busy = (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait (guests are in user)
    except (OSError, ValueError, IndexError):
        busy = None
    return time.perf_counter(), busy, t.user + t.system


def _other_cpu_fraction(a, b) -> float | None:
    """Share of the machine's CPU time (wall x CPUs) that other processes used between two _cpu_seconds()."""
    if a[1] is None or b[1] is None:
        return None
    wall = b[0] - a[0]
    other = (b[1] - a[1]) - (b[2] - a[2])
    return float(min(max(other / (wall * (os.cpu_count() or 1)), 0.0), 1.0)) if wall > 0 else None


def _fmt_load(v) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def format_report(r: dict) -> str:
    w, p = r["workload"], r["precision"]
    lines = [
        f"bayesim bench: {w['layer']} layer, batch {w['batch']}, S = {w['samples']}, {w['strategy'].upper()} "
        f"{w['bits']['w']} bits, DAC {w['bits']['dac']} / ADC {w['bits']['adc']} bits",
        f"  device:    {w['device']}",
        f"  crossbar:  {w['crossbar']}; path: {w['path']}",
        f"  precision: {p['weights_and_products']} weights and products; Gaussian: {p['gaussian']}; "
        f"baseline Gaussian: {p['numpy_baseline_gaussian']}",
        f"  time per sample:     {r['time_per_sample_s'] * 1e3:8.2f} ms   ({r['analog_gmacs']:.1f} GMAC/s)",
        f"  BLAS float32 matmul: {r['blas_time_per_sample_s'] * 1e3:8.2f} ms   ({r['blas_gmacs']:.1f} GMAC/s)",
        f"  numpy baseline:      {r['numpy_time_per_sample_s'] * 1e3:8.2f} ms",
        f"  of the time per sample: weight build {r['stages_per_sample_s']['weight_build'] * 1e3:.2f} ms, "
        f"GEMM + ADC {r['stages_per_sample_s']['gemm_adc'] * 1e3:.2f} ms (timed apart; with a free weight build "
        f"the ratio to BLAS would be {r['throughput_vs_blas_if_build_free']:.2f})",
        f"  once per layer, not in the time per sample: {r['setup_s'] * 1e3:.0f} ms (programming the stored arrays"
        + (", the pair-law tables)" if "pair law" in w["path"] else ")"),
        f"  throughput vs BLAS:  {r['throughput_vs_blas']:.2f}  (target >= {r['targets']['throughput_vs_blas']})",
        f"  speed vs numpy:      {r['speedup_vs_numpy']:.1f}x (target >= {r['targets']['speedup_vs_numpy']}x)",
        f"  machine: {r['machine']['cpus']} CPUs ({r['machine'].get('cpu', 'unknown CPU')}), "
        f"{r['machine']['numba_threads']} numba threads, "
        f"load average {_fmt_load(r['machine']['load_average_1min'])} (ratios are medians of {len(r['rounds'])} interleaved rounds)",
    ]
    other = r["machine"].get("other_processes_cpu_fraction")
    if other is not None and other > BUSY_OTHER_CPU_FRACTION:
        lines.append(f"  NOTE: other processes used {other:.0%} of the machine's CPU time while the bench ran: these "
                     f"times and ratios are not this code's alone; rerun on a quiet machine")
    return "\n".join(lines)


# ------------------------------------------------------------------ floor: the work no kernel can skip

#: Table draws per weight and sample in the benchmark's workload (JQ, digital sampler, PCM on the pair-law
#: path): the Bayesian draw eps; the read noise of the three stored cells (mu pair, sigma cell); the weight of
#: the programmed cell pair, one lookup in its 12-bit quantile table (the same work as a 12-bit Gaussian
#: draw: a hash field, a table load).
DRAWS_PER_WEIGHT = {"eps (16-bit table)": 1, "device (12-bit table)": 4}
_FLOOR_CELLS = 256  # one row tile of the default card: the unit the weight kernel works on


@nb.njit(cache=True)
def _device_draws(key, reps, table, out):
    """reps x 4 x _FLOOR_CELLS device-noise draws made as the weight kernel makes them (one counter hash
    -> four 12-bit table indices, SIMD; then the lookups, scalar loads), summed into out."""
    n = out.shape[0]
    ib = np.empty((4, n), np.int32)
    y = np.empty((4, n), np.float32)
    for r in range(reps):
        _table_fields4(key + np.uint64(r), 0, 1, n, ib[0], ib[1], ib[2], ib[3])
        _gather3(table, ib[0], ib[1], ib[2], n, y[0], y[1], y[2])
        for k in range(n):
            y[3, k] = table[ib[3, k]]
        for k in range(n):
            out[k] += (y[0, k] + y[1, k]) + (y[2, k] + y[3, k])


@nb.njit(cache=True)
def _eps_draws(key, reps, table, out):
    """reps x _FLOOR_CELLS Bayesian draws as the weight kernel makes them (16-bit table), summed into out."""
    n = out.shape[0]
    idx = np.empty(n, np.int32)
    for r in range(reps):
        _eps_indices(key + np.uint64(r), r * n, n, idx)
        for k in range(n):
            out[k] += table[idx[k]]


def _ns_per_item(fn, items_per_call: int, reps: int = 4000, rounds: int = 5) -> float:
    """Best of `rounds` timings of fn(reps), in ns per item (the floor is a lower bound: best case)."""
    fn(2)
    best = np.inf
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn(reps)
        best = min(best, time.perf_counter() - t0)
    return best / (reps * items_per_call) * 1e9


def floor(r: dict | None = None, samples: int = SAMPLES, repeat: int = 3) -> dict:
    """A lower bound of the weight build, from what every sample must do per weight: its table draws
    (DRAWS_PER_WEIGHT), each timed alone on one thread, hot in L1 cache, as the weight kernel makes them
    (over a 256-cell row tile). Everything else the build does (stored-array streaming, sigma decode,
    quantization, clipping) counts as free, and the threads as scaling perfectly. With the run's own
    GEMM + ADC and BLAS times `r` (run() if None), it bounds the best throughput ratio to BLAS this
    physics allows with these primitives."""
    import numba

    r = run(samples=samples, repeat=repeat) if r is None else r
    n = _FLOOR_CELLS
    acc = np.zeros(n, np.float32)
    cost = {
        "eps (16-bit table)": _ns_per_item(lambda k: _eps_draws(np.uint64(7), k, rng.NORMAL_TABLE, acc), n),
        "device (12-bit table)": _ns_per_item(lambda k: _device_draws(np.uint64(7), k, DEVICE_TABLE, acc),
                                              4 * n),
    }
    per_weight = sum(DRAWS_PER_WEIGHT[k] * cost[k] for k in DRAWS_PER_WEIGHT)
    threads = numba.get_num_threads()
    weights = N_IN * N_OUT
    build_floor = weights * per_weight * 1e-9 / threads
    tb, tg, tw = r["blas_time_per_sample_s"], r["stages_per_sample_s"]["gemm_adc"], r["stages_per_sample_s"]["weight_build"]
    return {"ns_per_item_one_thread": cost, "draws_per_weight": dict(DRAWS_PER_WEIGHT),
            "floor_ns_per_weight_one_thread": per_weight,
            "threads": threads, "weights": weights,
            "weight_build_floor_s": build_floor, "weight_build_s": tw,
            "weight_build_ns_per_weight_one_thread": tw * threads / weights * 1e9,
            "gemm_adc_s": tg, "blas_s": tb,
            "best_throughput_vs_blas": tb / (build_floor + tg),
            "target_throughput_vs_blas": 0.5}


def format_floor(f: dict) -> str:
    c = f["ns_per_item_one_thread"]
    d = f["draws_per_weight"]
    lines = [
        "floor of the weight build: what every sample must do per weight, each part timed alone on one thread "
        "(hot in L1 cache), the rest counted as free, threads as scaling perfectly",
        *(f"  table draw, {k}: {c[k]:6.3f} ns  x {d[k]} per weight" for k in d),
        f"  floor: {f['floor_ns_per_weight_one_thread']:.2f} ns per weight per thread = "
        f"{f['weight_build_floor_s'] * 1e3:.2f} ms per sample on {f['threads']} threads "
        f"(measured weight build: {f['weight_build_s'] * 1e3:.2f} ms, "
        f"{f['weight_build_ns_per_weight_one_thread']:.2f} ns per weight per thread)",
        f"  with this run's GEMM + ADC ({f['gemm_adc_s'] * 1e3:.2f} ms) and BLAS ({f['blas_s'] * 1e3:.2f} ms): best "
        f"throughput vs BLAS {f['best_throughput_vs_blas']:.2f} (target >= {f['target_throughput_vs_blas']})",
    ]
    return "\n".join(lines)
