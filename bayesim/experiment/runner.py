"""Run one experiment: a trained BNN on simulated crossbars, against its software FP32 reference.

    cfg = load_experiment("configs/quickstart.yaml")
    result = run_experiment(cfg, out_dir="out/quickstart")

Steps: resolve the model (shipped default, checkpoint, Pyro import) -> apply the strategy (a model
trained with that strategy and bits is used as stored, otherwise post-training quantization) ->
load the test splits -> software FP32 Monte-Carlo prediction -> AnalogBNN on the device and crossbar
cards (ADC calibrated on MNIST training images) -> metrics, deltas, hardware summary, memory, energy
-> `out_dir/metrics.json` (written atomically).
"""
from __future__ import annotations

import copy
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

from bayesim import __version__
from bayesim._io import write_json_atomic
from bayesim.config import to_dict
from bayesim.errors import BayesimError, ConfigError
from bayesim.experiment.config import ExperimentConfig

RESOURCES = Path(__file__).resolve().parents[1] / "resources"
DEFAULT_MODEL = RESOURCES / "lenet5_default.safetensors"
# Shipped quantization-aware-trained siblings of the default model: (strategy, mu, sigma, w bits) -> file.
SHIPPED_QAT = {("jq", 4, 4, 4): RESOURCES / "lenet5_jq4.safetensors"}
ADC_CALIBRATION_IMAGES = 256
SCALAR_KEYS = ("accuracy", "nll", "brier", "ece", "mean_total_entropy", "mean_aleatoric", "mean_epistemic")


# ---------------------------------------------------------------------------------------------- model
def load_network(spec, normalization: str, hw=None):
    """The trained network named by a `ModelSpec` and a description of where it came from.

    `source: default` is the shipped FP32 LeNet-5, or its shipped QAT sibling when one was trained
    for the requested strategy and bits (`SHIPPED_QAT`; log sigma quantizer).
    """
    from bayesim.bnn import load_model

    if spec.source == "default" and hw is not None and hw.sigma_quantizer == "log":
        qat = SHIPPED_QAT.get((hw.strategy, hw.bits.mu, hw.bits.sigma, hw.bits.w))
        if qat is not None and qat.exists():
            model, _meta = load_model(qat)
            return model, {"kind": "default (shipped QAT)", "path": str(qat)}
    if spec.source == "default":
        if not DEFAULT_MODEL.exists():
            raise BayesimError(f"the shipped default model is missing ({DEFAULT_MODEL}); reinstall bayesim")
        model, _meta = load_model(DEFAULT_MODEL)
        return model, {"kind": "default", "path": str(DEFAULT_MODEL)}
    if spec.source == "checkpoint":
        model, _meta = load_model(spec.path)
        return model, {"kind": "checkpoint", "path": str(spec.path)}
    from bayesim.bnn.pyro_import import import_pyro

    return import_pyro(spec.path, spec.arch, normalization=normalization), \
        {"kind": "pyro", "path": str(spec.path), "arch": spec.arch}


#: `model.quantization` of a run whose weights are as trained and whose activations alone are post-training
#: quantized (hardware.bits.act other than the model was trained with).
ACT_PTQ = "post-training quantization of the activations (weights as trained)"


def apply_strategy(model, hw):
    """The network as the hardware strategy stores it.

    A model already trained (QAT) with this strategy and these bits (activation bits included) is used as
    stored; otherwise a copy is post-training quantized (ranges recalibrated from its parameters). Returns (network, how):
    "as trained", "post-training quantization" (of the weights, and of the activations where hardware.bits.act
    differs too), ACT_PTQ (only the activations differ from training: the weights are as trained), "none (fp)"
    (quantization switched off), or "fp weights, B-bit activations".
    """
    from bayesim.bnn import QuantConfig

    q = model.cfg.quant
    b = hw.bits
    want = QuantConfig(strategy=hw.strategy, mu_bits=b.mu, sigma_bits=b.sigma, w_bits=b.w,
                       sigma_quantizer=hw.sigma_quantizer, range=q.range)
    stored_same = (q.mu_bits, q.sigma_bits, q.sigma_quantizer) == (want.mu_bits, want.sigma_bits,
                                                                   want.sigma_quantizer)
    same = q.strategy == want.strategy and (
        want.strategy == "fp"
        or (not want.quantize_stored or stored_same) and (not want.quantize_sampled or q.w_bits == want.w_bits))
    out = model
    if not same:
        out = copy.deepcopy(model)
        out.set_quant(want)
    act_changed = b.act is not None and out.cfg.activation.bits != b.act
    if act_changed:
        if out.cfg.activation.kind != "bounded":
            raise BayesimError(f"hardware.bits.act = {b.act} needs a model with bounded activations; "
                               f"this one uses {out.cfg.activation.kind!r}")
        if out is model:
            out = copy.deepcopy(model)
        uppers = [float(m.upper.item()) for m in out.layers if hasattr(m, "upper")]
        out.set_activation(replace(out.cfg.activation, bits=b.act), uppers)
    if want.strategy == "fp":  # weights at full precision; the software reference keeps activation bits too
        from bayesim.bnn.evaluate import fp_quantization

        return out, fp_quantization(out.cfg.activation.bits)
    if same:  # the weights as trained: what changed, if anything, is only the activations
        return out, ACT_PTQ if act_changed else "as trained"
    return out, "post-training quantization"


def _warn_normalization(cfg: ExperimentConfig, model) -> None:
    """`bayesim run` normalises the inputs as data.normalization says; `bayesim evaluate` as the model's own
    config does (`import-pyro` and `evaluate --pyro`: "own", the Pyro reference's convention). Only the ood
    split (Fashion-MNIST) differs between the two, but its uncertainties do: say so when they disagree."""
    want = cfg.data.normalization
    if cfg.model.source in ("checkpoint", "default") and model.cfg.normalization != want:
        what = "checkpoint" if cfg.model.source == "checkpoint" else "shipped model"
        warnings.warn(f"data.normalization: {want} differs from the {what}'s own convention "
                      f"({model.cfg.normalization}), which `bayesim evaluate` uses; Fashion-MNIST (ood) is "
                      f"normalised differently: set data.normalization: {model.cfg.normalization} to compare with "
                      f"it", UserWarning, stacklevel=3)
    elif cfg.model.source == "pyro" and want != "own":
        warnings.warn(f"data.normalization: {want} for a Pyro model: `bayesim import-pyro` and `evaluate --pyro` "
                      f"use own (the reference's convention) unless told otherwise; Fashion-MNIST (ood) is "
                      f"normalised differently: set data.normalization: own to compare with them", UserWarning,
                      stacklevel=3)


def software_fp32(model):
    """The FP32 software reference: the same network with strategy fp (activation bits kept)."""
    from bayesim.bnn import QuantConfig

    if model.cfg.quant.strategy == "fp":
        return model
    ref = copy.deepcopy(model)
    ref.set_quant(QuantConfig(strategy="fp"))
    return ref


# ---------------------------------------------------------------------------------------------- data
def unique_images(x: np.ndarray):
    """Distinct images of x and the inverse index (Ambiguous-MNIST repeats an image once per label)."""
    flat = np.ascontiguousarray(x).reshape(x.shape[0], -1)
    _, first, inverse = np.unique(flat.view(np.dtype((np.void, flat.dtype.itemsize * flat.shape[1]))).ravel(),
                                  return_index=True, return_inverse=True)
    return x[first], inverse.ravel()


def calibration_images(data_dir, normalization: str, splits: dict) -> tuple[np.ndarray, str]:
    """ADC calibration inputs: the first MNIST training images whenever the data folder has the training
    files (embedded-subset runs too: the ADC ranges are never fitted on the images being evaluated);
    without them, the first images of the mnist split, and the source says so. Training files that are
    present but unreadable are an error, not a reason to fall back."""
    from bayesim.data import MNIST_MEAN, MNIST_STD, load_mnist
    from bayesim.data.sources import has_files, resolve_data_dir

    if has_files("mnist", "train", data_dir):
        imgs, _ = load_mnist("train", data_dir)
        x = imgs[:ADC_CALIBRATION_IMAGES].astype(np.float32)[:, None] / np.float32(255)
        return ((x - np.float32(MNIST_MEAN)) / np.float32(MNIST_STD)).astype(np.float32), \
            f"first {ADC_CALIBRATION_IMAGES} MNIST training images"
    sp = splits.get("mnist") or next(iter(splits.values()))
    x = sp.x[:ADC_CALIBRATION_IMAGES]
    return x, (f"first {len(x)} images of split {sp.name!r}{CALIBRATED_ON_EVALUATED} "
               f"(no MNIST training files in {resolve_data_dir(data_dir)})")


# ---------------------------------------------------------------------------------------------- run
def _predict_splits(predict, splits: dict, samples: int, desc: str, progress: bool) -> dict:
    from tqdm import tqdm

    probs = {}
    first = 0  # the splits' inputs are numbered one after another: no two draw the same output noise
    for name, sp in splits.items():
        xu, inv = unique_images(sp.x)
        # disable=None: no bar unless stderr is a terminal (no carriage-return junk in logs)
        with tqdm(total=samples, desc=f"{desc} {name}", unit="sample", disable=None if progress else True,
                  leave=False) as bar:
            probs[name] = predict(xu, bar, first)[:, inv]
        first += len(xu)
    return probs


def _summarize(probs: dict, splits: dict) -> dict:
    from bayesim.metrics import summarize

    out = summarize(probs, {k: s.y for k, s in splits.items()})
    for name, sp in splits.items():
        out[name]["subset"] = bool(sp.subset)
        out[name]["source"] = sp.source
    return out


def _delta(hw: dict, sw: dict) -> dict:
    d = {}
    for split in hw:
        if split in ("auroc", "aupr"):
            d[split] = {k: hw[split][k] - sw[split][k] for k in hw[split] if k in sw.get(split, {})}
        elif isinstance(hw[split], dict) and split in sw:
            d[split] = {k: hw[split][k] - sw[split][k] for k in SCALAR_KEYS}
    return d


def resolve_crossbar(cfg: ExperimentConfig):
    """(validated card with the run's DAC / ADC bits, its file) for hardware.crossbar: a card path, or a name
    found in ./crossbars, then the shipped cards. A user's card that replaced a shipped card of its name and
    fails to load says so: without that, the shipped card would seem to have broken."""
    from bayesim.crossbar import load_crossbar
    from bayesim.crossbar.card import SHIPPED_CROSSBARS, find_crossbar_cards, override_bits
    from bayesim.paths import is_card_path, local_path_hint

    ref = cfg.hardware.crossbar
    path = Path(ref).expanduser()
    cards = None
    if not is_card_path(ref):  # a name: ./crossbars first, then the shipped cards
        cards = find_crossbar_cards()
        if ref not in cards:
            import difflib

            m = difflib.get_close_matches(ref, list(cards), n=1, cutoff=0.6)
            raise ConfigError(f"no crossbar card {ref!r}; known cards: {', '.join(sorted(cards))}"
                              + (f" (did you mean {m[0]!r}?)" if m else "") + " (or give a path to a .yaml card)"
                              + local_path_hint(ref), key="hardware.crossbar")
        cards.warn_ambiguous(ref)
        path = cards[ref]
    try:
        loaded = load_crossbar(path)
    except ConfigError as e:
        noted = None if cards is None else cards.with_shadow_note(e, ref, SHIPPED_CROSSBARS)
        if noted is None:
            raise
        raise noted from None
    card = override_bits(loaded, path, cfg.hardware.bits.dac, cfg.hardware.bits.adc)
    return card, path


def use_lumped(hw) -> bool:
    """Lumped output noise (`hardware.lumped: on`): exact in distribution, other random numbers than the
    per-weight path, and a second GEMM (x^2 @ sigma^2) per sample: 2.5x slower than per-cell draws on the
    quick start's VPQ run, so it is never chosen by default."""
    return hw.lumped == "on"


def run_experiment(cfg: ExperimentConfig, out_dir: str | Path | None = None, progress: bool = True,
                   log=print) -> dict:
    """Run `cfg`; return the metrics dict and write it to `out_dir/metrics.json` when given."""
    from bayesim.analog import AnalogBNN
    from bayesim.bnn import memory_report, predict_probs
    from bayesim.data import load_test_splits
    from bayesim.devices.registry import resolve_device

    t0 = time.perf_counter()
    hw = cfg.hardware
    # Resolve every card and the model before any simulation starts: bad input fails fast.
    try:
        device, device_card = resolve_device(hw.device)
    except ConfigError:
        raise  # a bad card: the message names its file and key
    except BayesimError as e:
        raise ConfigError(str(e), key="hardware.device") from e
    card, card_path = resolve_crossbar(cfg)
    model, model_info = load_network(cfg.model, cfg.data.normalization, hw)
    _warn_normalization(cfg, model)
    qmodel, how = apply_strategy(model, hw)
    splits = load_test_splits(cfg.data.dir, normalization=cfg.data.normalization, embedded=cfg.data.embedded,
                              limit=cfg.data.limit, progress=progress, names=tuple(cfg.data.splits))
    for name, sp in splits.items():
        if len(sp.y) == 0:
            raise BayesimError(f"data split {name!r} is empty; nothing to evaluate")
    S = cfg.samples
    if S == 1:
        from bayesim.metrics.uncertainty import ONE_SAMPLE_NOTE

        warnings.warn(ONE_SAMPLE_NOTE, UserWarning, stacklevel=2)

    software = None
    if cfg.software_reference:
        ref = software_fp32(qmodel)
        sw_probs = _predict_splits(
            lambda x, bar, first: _software_predict(predict_probs, ref, x, S, cfg.seed, cfg.batch_size, bar),
            splits, S, "software", progress)
        software = _summarize(sw_probs, splits)
        del sw_probs

    t_hw = time.perf_counter()
    analog = AnalogBNN(qmodel.export_ops(), device, card, seed=cfg.seed, sampler=hw.sampler,
                       t_read_s=hw.read_time_s, lumped=use_lumped(hw), t_compute_s=hw.compute_delay_s,
                       drift_compensation=hw.drift_compensation)
    fallback = sorted({layer.lumped_reason for layer in analog.layers.values() if layer.lumped_reason})
    if fallback:
        warnings.warn(f"hardware.lumped: on falls back to per-cell draws where the lumped noise is not exact "
                      f"(strategy {hw.strategy}, sampler {hw.sampler}): {'; '.join(fallback)}", UserWarning,
                      stacklevel=2)
    if hw.drift_compensation != "none" and not any(layer.stored for layer in analog.layers.values()):
        warnings.warn(f"hardware.drift_compensation: {hw.drift_compensation} has nothing to compensate: strategy "
                      f"{hw.strategy} with the {hw.sampler} sampler stores no mu/sigma arrays (it applies to vpq and "
                      f"jq with sampler digital)", UserWarning, stacklevel=2)
    x_cal, cal_source = calibration_images(cfg.data.dir, cfg.data.normalization, splits)
    analog.calibrate(x_cal)
    hw_probs = _predict_splits(lambda x, bar, first: analog.predict_probs(x, S, cfg.batch_size, progress=bar,
                                                                         first_index=first),
                               splits, S, "hardware", progress)
    hardware = _summarize(hw_probs, splits)
    hw_time = time.perf_counter() - t_hw
    del hw_probs

    levels = _levels_per_cell(analog, qmodel.cfg.quant, card, device, hw)
    n_images = sum(len(unique_images(sp.x)[0]) for sp in splits.values())
    st = analog.stats
    energy = st.energy_J(card)
    summ = analog.summary()
    q, a = qmodel.cfg.quant, qmodel.cfg.activation
    result = {
        **hardware,
        "model": {**model_info, "arch": qmodel.cfg.arch, "quantization": how, "config": to_dict(qmodel.cfg)},
        "strategy": q.strategy,
        "bits": {"mu": q.mu_bits if q.quantize_stored else None,
                 "sigma": q.sigma_bits if q.quantize_stored else None,
                 "w": q.w_bits if q.quantize_sampled else None,
                 "act": a.bits, "dac": card.dac.bits, "adc": card.adc.bits},
        "activation": {"kind": a.kind, "bits": a.bits},
        "memory": memory_report(qmodel),
        "samples": S,
        "seed": cfg.seed,
        "normalization": cfg.data.normalization,
        "software_fp32": software,
        "delta": _delta(hardware, software) if software else None,
        "hardware": {
            "device": getattr(device, "name", hw.device),
            "device_card": None if device_card is None or not device_card.path
            else str(Path(device_card.path).resolve()),  # absolute: the run may have started in any folder
            "crossbar": card.name,
            "crossbar_card": str(Path(card_path).resolve()),
            "sampler": hw.sampler,
            "read_time_s": hw.read_time_s,
            "compute_delay_s": hw.compute_delay_s,
            "drift_compensation": hw.drift_compensation,
            "tiles": summ["tiles"],
            "cells": summ["cells"],
            "cell_area_um2": card.cell_area_um2,
            "array_area_mm2": summ["cells"] * card.cell_area_um2 * 1e-6,  # the cells alone, no periphery
            "layers": summ["layers"],
            "adc_calibration": cal_source,
            "mc_forward_passes": n_images * S,
            "adc_conversions_per_inference": st.adc_conversions / n_images,
            "dac_conversions_per_inference": st.dac_conversions / n_images,
            "adc_saturation_rate": st.adc_saturated / max(st.adc_conversions, 1),
            "dac_clip_rate": st.dac_clipped / max(st.dac_conversions, 1),
            "dac_signed": card.dac.signed,
            "levels_per_cell": levels,
            "ir_drop_model": card.ir_drop.model,
            "ir_drop_max": st.ir_drop_max if card.ir_drop.model != "none" else None,
            "program_events": st.program_events,
            "energy_per_inference_J": {k: v / n_images for k, v in energy.items()},
            "stored_program_events": analog.stored_program_events,
            "stored_program_energy_J": analog.stored_program_events * card.energy.program_J,
            "simulation_time_s": hw_time,
        },
        "config": to_dict(cfg),
        "wall_time_s": time.perf_counter() - t0,
        "bayesim_version": __version__,
    }
    if out_dir is not None:
        write_json_atomic(Path(out_dir) / "metrics.json", result)
    return result


def _levels_per_cell(analog, q, card, device, hw) -> dict:
    """How many levels the run asks of one cell, against what the device card declares: {mu, sigma, w (None where
    the strategy programs no such array), device_n_levels (the card's published count, None if it gives none),
    sigma_noise_rungs (the stored log sigma array's read spread in rungs near its top, `log_ladder_noise`; None
    without such an array)}. A differential pair holds a b-bit weight as 2^(b-1) levels per cell, an offset
    column as 2^b - 1; a log sigma array has 2^b rungs on one cell."""
    from bayesim.devices.stats import log_ladder_noise

    stored = any(layer.stored for layer in analog.layers.values())
    per_cell = (lambda b: 1 << (b - 1)) if card.mapping.kind == "differential" else (lambda b: (1 << b) - 1)
    log_sigma = stored and q.sigma_quantizer == "log"
    return {"mu": per_cell(q.mu_bits) if stored else None,
            "sigma": (1 << q.sigma_bits) if stored else None,
            "w": per_cell(q.w_bits) if q.quantize_sampled else None,
            "device_n_levels": getattr(device, "n_levels", None),
            "sigma_noise_rungs": log_ladder_noise(device, 1 << q.sigma_bits, hw.read_time_s) if log_sigma else None}


def _software_predict(predict_probs, model, x, samples, seed, batch_size, bar):
    out = predict_probs(model, x, samples, seed, batch_size)
    bar.update(samples)
    return out


#: Above this fraction of clipped DAC conversions the printed table warns: the inputs the hardware saw
#: differ from the network's, whatever the device.
DAC_CLIP_WARN = 0.01
ADC_SATURATION_WARN = 0.01
#: in `adc_calibration` when the ADC ranges were fitted on a test split (no MNIST training files)
CALIBRATED_ON_EVALUATED = ", images that are also evaluated"
SIGMA_SHORTFALL_WARN = 0.1  # mean relative shortfall of the device sampler's realised sigma
_TABLE_LABELS = {"nll": "nll (nats)", "mean_aleatoric": "aleatoric (nats)", "mean_epistemic": "epistemic MI (nats)"}


def result_table(result: dict) -> str:
    """The printed summary: software FP32 vs hardware per split, AUROCs, hardware costs."""
    sw = result.get("software_fp32") or {}
    rows = [f"{'split':<10} {'metric':<20} {'software':>9} {'hardware':>9} {'delta':>9}"]
    for split in ("mnist", "ambiguous", "ood"):
        if split not in result:
            continue
        # ood (Fashion-MNIST) has no digit labels: only its uncertainties mean something
        keys = ("mean_aleatoric", "mean_epistemic") if split == "ood" else ("accuracy", "nll", "ece",
                                                                           "mean_aleatoric", "mean_epistemic")
        for k in keys:
            h = result[split][k]
            s = sw.get(split, {}).get(k)
            label = _TABLE_LABELS.get(k, k)
            rows.append(f"{split:<10} {label:<20} {_f(s):>9} {h:9.4f} {_f(None if s is None else h - s):>9}")
    for k, h in result.get("auroc", {}).items():
        s = sw.get("auroc", {}).get(k)
        rows.append(f"{'auroc':<10} {k:<20} {_f(s):>9} {h:9.4f} {_f(None if s is None else h - s):>9}")
    hwd = result["hardware"]
    mem = result["memory"]
    from bayesim.data.dirty import subset_reason

    subset = any(result[s].get("subset") for s in ("mnist", "ambiguous", "ood") if s in result)
    model = result["model"]
    rows.append(f"model {model['arch']} {model.get('kind', '')} | {model['quantization']}".replace("  ", " "))
    if result["strategy"] != "fp":
        how = model["quantization"]
        rows.append("  (the software column is the same network with its weights at full precision and its "
                    "activations as here, so the deltas include the weight quantization"
                    + (")" if how == "as trained"
                       else ", as trained; the activations' post-training quantization is in both columns)"
                       if how == ACT_PTQ
                       else ": post-training here, its software-only effect is what `bayesim evaluate --strategy S "
                            "--bits B` shows)"))
    rows.append(f"strategy {result['strategy']} bits {result['bits']} | device {hwd['device']} | crossbar "
                f"{hwd['crossbar']} | {hwd['tiles']} tiles, {hwd['cells']} cells"
                + (f" ({hwd['array_area_mm2']:.3g} mm^2 of cells)" if hwd.get("array_area_mm2") else "")
                + f" | sampler {hwd['sampler']}")
    rows.append(f"memory {mem['bits_per_weight']:.2f} bits/weight ({mem['reduction_vs_fp32']:.2f}x less than FP32) | "
                f"per inference (one image, all S = {result['samples']} passes): ADC conversions "
                f"{hwd['adc_conversions_per_inference']:.3g}, energy {hwd['energy_per_inference_J']['total']:.3g} J | "
                f"ADC saturation {hwd['adc_saturation_rate']:.2%} | DAC clipped {hwd['dac_clip_rate']:.2%}")
    gains = [l["drift_gains"] for l in hwd.get("layers", []) if l.get("drift_gains")]
    if gains:
        lo = min(min(g["mu"]["min"], g["sigma"]["min"]) for g in gains)
        hi = max(max(g["mu"]["max"], g["sigma"]["max"]) for g in gains)
        span = ("1 (the cells did not drift)" if lo == hi == 1.0 else f"{lo:.4g}" if f"{lo:.4g}" == f"{hi:.4g}"
                else f"{lo:.4g}-{hi:.4g}")
        rows.append(f"drift compensation (global, per tile) at t = {hwd['read_time_s']:g} s: digital gains "
                    f"{span} on the stored mu/sigma arrays")
    if hwd.get("ir_drop_max") is not None:
        from bayesim.crossbar.card import EXACT_IR_MAX_CELLS
        from bayesim.crossbar.irdrop import FIRST_ORDER_MAX_DROP

        rows.append(f"IR drop: a cell loses up to {hwd['ir_drop_max']:.1%} of its ideal current")
        if hwd.get("ir_drop_model") == "first_order" and hwd["ir_drop_max"] > FIRST_ORDER_MAX_DROP:
            rows.append(f"WARNING: the first-order IR-drop model is outside its range above a "
                        f"{FIRST_ORDER_MAX_DROP:.0%} drop (its error grows as the square of the drop); use "
                        f"ir_drop.model: exact on tiles of at most {EXACT_IR_MAX_CELLS} cells (rows x cols), or a lower "
                        f"r_wire_ohm, in crossbar "
                        f"card {hwd['crossbar_card']}")
    if hwd["adc_saturation_rate"] > ADC_SATURATION_WARN:
        rows.append(f"WARNING: the ADC saturated on {hwd['adc_saturation_rate']:.1%} of its conversions: column "
                    f"currents beyond its range are clipped; see adc.range, adc.percentile and adc.full_scale in crossbar card "
                    f"{hwd['crossbar_card']}")
    short = [(l["layer"], l["sigma_shortfall"]) for l in hwd.get("layers", []) if l.get("sigma_shortfall")]
    short = [(i, s) for i, s in short if s["mean_relative_shortfall"] > SIGMA_SHORTFALL_WARN]
    if short:
        rows.append("WARNING: the device's own spread falls short of the trained sigma (sampler device): "
                    + "; ".join(f"layer {i}: {s['fraction_short']:.0%} of weights short, those by "
                                f"{s['mean_relative_shortfall'] / s['fraction_short']:.0%} on average"
                                for i, s in short)
                    + "; the epistemic uncertainty is then the device's, not the model's")
    lv = hwd.get("levels_per_cell") or {}
    if (lv.get("sigma_noise_rungs") or 0.0) > 1.0:
        rows.append(f"WARNING: the stored sigma array's cells are noisier than its log ladder is fine: near sigma_max "
                    f"their read spread (programming, drift and read noise) spans {lv['sigma_noise_rungs']:.1f} rungs of its "
                    f"{lv['sigma']}, "
                    f"and each rung is a factor 2 in sigma, so the largest sigmas read off by about a factor "
                    f"{2 ** lv['sigma_noise_rungs']:.0f}; fewer hardware.bits.sigma (or sigma_quantizer: uniform) "
                    f"keeps the trained sigma")
    asked = {k: lv[k] for k in ("mu", "sigma", "w") if lv.get(k)}
    n_dev = lv.get("device_n_levels")
    if n_dev and asked and max(asked.values()) > n_dev:
        rows.append(f"NOTE: the device card declares {n_dev} programmable levels; this run asks "
                    + ", ".join(f"{v} for {k}" for k, v in asked.items() if v > n_dev)
                    + " per cell, and programs them as if the cell had them (its noise model decides how they overlap)")
    if CALIBRATED_ON_EVALUATED in str(hwd.get("adc_calibration", "")):
        rows.append(f"NOTE: the ADC ranges were calibrated on the {hwd['adc_calibration']} (put the MNIST "
                    f"training files in the data folder to calibrate on those)")
    if hwd["dac_clip_rate"] > DAC_CLIP_WARN:
        why = "a fixed dac.range smaller than the inputs" if hwd.get("dac_signed", False) \
            else "an unsigned DAC applies no negative input"
        rows.append(f"WARNING: the DAC clipped {hwd['dac_clip_rate']:.1%} of the inputs it converted: the inputs "
                    f"fall outside its range ({why}); see dac.signed, dac.scaling and dac.range in crossbar card "
                    f"{hwd['crossbar_card']}")
    rows.append(f"S = {result['samples']}, seed {result['seed']}, wall time {result['wall_time_s']:.1f} s"
                + ("  [EMBEDDED SUBSET of the test splits" + (f": {why}]" if (why := subset_reason(
                    result[s].get("source") for s in ("mnist", "ambiguous", "ood") if s in result)) else "]")
                   if subset else ""))
    return "\n".join(rows)


def _f(v) -> str:
    return "-" if v is None else f"{v:.4f}"
