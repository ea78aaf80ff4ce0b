"""Evaluate a BNN on the Dirty-MNIST test splits: predictive samples -> `bayesim.metrics.summarize`.

The result (written as metrics.json by `bayesim evaluate`) has, per split ("mnist", "ambiguous",
"ood"): n, accuracy, nll, brier, ece, mean_total_entropy, mean_aleatoric, mean_epistemic, subset,
source; "auroc" and "aupr": ood_vs_in_mi, ood_vs_in_total, ood_vs_mnist_mi, ambiguous_vs_mnist_aleatoric;
and "model", "strategy", "bits" {mu, sigma, w, act}, "activation", "memory" (`memory_report`),
"samples", "seed", "normalization", "wall_time_s", "bayesim_version".
"""
from __future__ import annotations

import time

from bayesim import __version__
from bayesim.errors import BayesimError


def evaluate_splits(model, splits: dict, samples: int, seed: int, batch_size: int = 1000) -> dict:
    """Metrics of `model` on `splits` (name -> object with x [N,1,28,28] float32 and y [N] int64)."""
    from bayesim.bnn.predict import predict_probs
    from bayesim.metrics import summarize

    if not splits:
        raise BayesimError("no data splits to evaluate")
    probs, labels = {}, {}
    for name, sp in splits.items():
        if len(sp.y) == 0:
            raise BayesimError(f"data split {name!r} is empty (0 rows); nothing to evaluate")
        probs[name] = predict_probs(model, sp.x, samples, seed, batch_size)
        labels[name] = sp.y
    out = summarize(probs, labels)
    for name, sp in splits.items():
        out[name]["subset"] = bool(getattr(sp, "subset", False))
        out[name]["source"] = str(getattr(sp, "source", ""))
    return out


def fp_quantization(act_bits: int | None) -> str:
    """`model.quantization` of a network whose weights are full precision (strategy fp), for metrics.json."""
    return "none (fp)" if act_bits is None else f"fp weights, {act_bits}-bit activations"


def evaluate_model(model, splits: dict, samples: int, seed: int, model_info: dict | None = None,
                   batch_size: int = 1000) -> dict:
    """Full metrics.json content for `model` on `splits`."""
    from bayesim.bnn.memory import memory_report
    from bayesim.config.schema import to_dict

    t0 = time.perf_counter()
    if samples == 1:
        import warnings

        from bayesim.metrics.uncertainty import ONE_SAMPLE_NOTE

        warnings.warn(ONE_SAMPLE_NOTE, UserWarning, stacklevel=2)
    metrics = evaluate_splits(model, splits, samples, seed, batch_size)
    q, a = model.cfg.quant, model.cfg.activation
    uppers = [float(m.upper.item()) for m in model.layers if hasattr(m, "upper")]
    return {
        **metrics,
        "model": {**(model_info or {}), "arch": model.cfg.arch, "config": to_dict(model.cfg)},
        "strategy": q.strategy,
        "bits": {"mu": q.mu_bits if q.quantize_stored else None,
                 "sigma": q.sigma_bits if q.quantize_stored else None,
                 "w": q.w_bits if q.quantize_sampled else None,
                 "act": a.bits},
        "activation": {"kind": a.kind, "upper": uppers if a.kind == "bounded" else None, "bits": a.bits},
        "memory": memory_report(model),
        "samples": int(samples),
        "seed": int(seed),
        "normalization": model.cfg.normalization,
        "wall_time_s": time.perf_counter() - t0,
        "bayesim_version": __version__,
    }


def summary_table(metrics: dict) -> str:
    """A short human-readable table of the main numbers (entropies and NLL in nats; the ood split has no digit
    labels, so only its entropies are shown)."""
    rows = [f"{'split':<10} {'acc':>7} {'nll':>7} {'ece':>7} {'H_tot':>7} {'alea':>7} {'MI':>7}"]
    for s in ("mnist", "ambiguous", "ood"):
        if s in metrics:
            m = metrics[s]
            labelled = "" if s == "ood" else f"{m['accuracy']:7.4f} {m['nll']:7.4f} {m['ece']:7.4f}"
            rows.append(f"{s:<10} {labelled:>23} "
                        f"{m['mean_total_entropy']:7.4f} {m['mean_aleatoric']:7.4f} {m['mean_epistemic']:7.4f}")
    rows.append("(nll and entropies in nats)")
    subset = [s for s in ("mnist", "ambiguous", "ood") if metrics.get(s, {}).get("subset")]
    if subset:
        from bayesim.data.dirty import subset_reason

        why = subset_reason(metrics[s].get("source") for s in subset)
        rows.append(f"[EMBEDDED SUBSET of the test splits: {', '.join(subset)}" + (f"; {why}]" if why else "]"))
    for k, v in metrics.get("auroc", {}).items():
        rows.append(f"AUROC {k}: {v:.4f}")
    mem = metrics.get("memory")
    if mem:
        rows.append(f"memory: {mem['bits_per_weight']:.2f} bits/weight, {mem['reduction_vs_fp32']:.2f}x vs FP32")
    return "\n".join(rows)

