"""Reproduce the multi-level quantization study on Dirty-MNIST with a Bayesian LeNet-5.

FP32 vs quantization-aware training (QAT) for VPQ, SPQ and JQ at 8, 6, 4, 3 and 2 bits, plus two
ablations at JQ 4 bits (uniform instead of log sigma quantizer; ReLU instead of the bounded
activation). Writes docs/results/quantization.md, quantization.json and quantization.png.

    python examples/reproduce_paper.py [--data-dir D] [--fp-epochs 3] [--qat-rows 60000]
                                      [--eval-limit 5000] [--samples 32] [--seed 0]

Every trained model and every evaluation is cached under --work (default: the user cache), so an
interrupted run resumes where it stopped. `--ship` writes the FP32 model (the package's default)
and the JQ 4-bit QAT model into bayesim/resources/ with their test metrics.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from bayesim._io import write_json_atomic, write_text_atomic
from bayesim.bnn import ActivationConfig, ModelConfig, QuantConfig, load_model, memory_report, predict_probs
from bayesim.bnn.checkpoint import save_model
from bayesim.bnn.train import TrainConfig, TrainData, train
from bayesim.config import to_dict
from bayesim.data import load_test_splits, load_train
from bayesim.experiment.runner import unique_images
from bayesim.metrics import summarize
from bayesim.paths import cache_dir

BITS = (8, 6, 4, 3, 2)
STRATEGIES = ("vpq", "spq", "jq")
REPO = Path(__file__).resolve().parents[1]


def bounded(bits):
    return ActivationConfig(kind="bounded", upper=4.0, learn_upper=True, bits=bits)


def runs(act_bits: int):
    """(name, ModelConfig changes) of every trained model, FP32 first."""
    base = ModelConfig(arch="lenet5", activation=bounded(None), init_rho=-5.5)
    yield "fp32", base
    for strategy in STRATEGIES:
        for b in BITS:
            q = QuantConfig(strategy=strategy, mu_bits=b, sigma_bits=b, w_bits=b)
            yield f"{strategy}{b}", replace(base, quant=q, activation=bounded(act_bits))
    q4 = QuantConfig(strategy="jq", mu_bits=4, sigma_bits=4, w_bits=4)
    yield "jq4_uniform_sigma", replace(base, quant=replace(q4, sigma_quantizer="uniform"),
                                       activation=bounded(act_bits))
    yield "jq4_relu", replace(base, quant=q4, activation=ActivationConfig(kind="relu"))
    for b in (4, 3):  # the remedy for the sampled-weight grid (see the grid diagnosis in the report)
        q = QuantConfig(strategy="jq", mu_bits=b, sigma_bits=b, w_bits=b, range="percentile", percentile=99.0)
        yield f"jq{b}_percentile", replace(base, quant=q, activation=bounded(act_bits))


def evaluate(model, splits, samples, seed):
    probs = {}
    for name, sp in splits.items():
        xu, inv = unique_images(sp.x)
        probs[name] = predict_probs(model, xu, samples, seed, 2000)[:, inv]
    return summarize(probs, {k: s.y for k, s in splits.items()})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir")
    ap.add_argument("--work", default=str(cache_dir() / "paper"), help="models and results cache")
    ap.add_argument("--out", default=str(REPO / "docs" / "results"))
    ap.add_argument("--fp-epochs", type=int, default=3)
    ap.add_argument("--qat-epochs", type=int, default=1)
    ap.add_argument("--qat-rows", type=int, default=60000, help="random training rows per QAT epoch")
    ap.add_argument("--act-bits", type=int, default=8, help="activation bits of the quantized models")
    ap.add_argument("--eval-limit", type=int, default=5000, help="random rows per test split (0: all)")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", help="run only these model names")
    ap.add_argument("--ship", action="store_true", help="write the FP32 and JQ 4-bit models into the package resources")
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    x, y = load_train(args.data_dir, seed=args.seed)
    limit = None if args.eval_limit <= 0 else args.eval_limit
    splits = load_test_splits(args.data_dir, normalization="mnist", limit=limit, seed=args.seed)
    print(f"train rows {len(x)}; test rows " + ", ".join(f"{k} {len(v.y)}" for k, v in splits.items()))
    qat_idx = np.random.default_rng(args.seed).permutation(len(x))[: args.qat_rows]
    fp_path = work / "fp32.safetensors"
    results = {}
    for name, mcfg in runs(args.act_bits):
        if args.only and name not in args.only:
            continue
        ckpt, res_path = work / f"{name}.safetensors", work / f"{name}.json"
        if res_path.exists():
            results[name] = json.loads(res_path.read_text())
            print(f"{name}: cached")
            continue
        t0 = time.perf_counter()
        if not ckpt.exists():
            if name == "fp32":
                tcfg = TrainConfig(model=mcfg, epochs=args.fp_epochs, batch_size=128, lr=2e-3, seed=args.seed,
                                   kl_warmup_epochs=1.0, data=TrainData())
                model, hist = train(tcfg, x, y)
            else:
                tcfg = TrainConfig(model=mcfg, epochs=args.qat_epochs, batch_size=128, lr=5e-4, seed=args.seed,
                                   init_from=str(fp_path), data=TrainData())
                model, hist = train(tcfg, x[qat_idx], y[qat_idx])
            save_model(model, ckpt, training=to_dict(tcfg), history=hist)
        else:
            hist = None
        model, _ = load_model(ckpt)
        t_train = time.perf_counter() - t0
        m = evaluate(model, splits, args.samples, args.seed)
        rec = {"name": name, "strategy": model.cfg.quant.strategy,
               "bits": None if name == "fp32" else model.cfg.quant.mu_bits,
               "activation": to_dict(model.cfg.activation), "sigma_quantizer": model.cfg.quant.sigma_quantizer,
               "metrics": m, "memory": memory_report(model), "train_seconds": t_train,
               "eval_seconds": time.perf_counter() - t0 - t_train, "history": hist}
        write_json_atomic(res_path, rec)
        results[name] = rec
        print(f"{name}: acc {m['mnist']['accuracy']:.4f} AUROC(MI ood vs in) {m['auroc']['ood_vs_in_mi']:.4f} "
              f"({t_train:.0f} s train, {rec['eval_seconds']:.0f} s eval)")
    if args.ship:
        jq4 = "jq4_percentile" if "jq4_percentile" in results else "jq4"  # the better-trained JQ 4-bit model
        for name, file in (("fp32", "lenet5_default.safetensors"), (jq4, "lenet5_jq4.safetensors")):
            if name in results:
                ship(work / f"{name}.safetensors", results[name], args, file)
    if "fp32" in results:
        spent = sum(r["train_seconds"] + r["eval_seconds"] for r in results.values())
        write_report(results, args, Path(args.out), spent)


def ship(path: Path, rec: dict, args, file: str):
    """Write a trained model, with its test metrics in the metadata, into the package's resources
    (the FP32 default model and its JQ 4-bit QAT sibling)."""
    from bayesim.bnn.checkpoint import read_metadata

    meta = read_metadata(path)
    model, _ = load_model(path)
    m = rec["metrics"]
    save_model(model, REPO / "bayesim" / "resources" / file,
               training=meta.get("training"), history=meta.get("history"),
               metrics={"test": {k: m[k] for k in ("mnist", "ambiguous", "ood", "auroc", "aupr")},
                        "samples": args.samples, "seed": args.seed,
                        "evaluated_on": ("full Dirty-MNIST test splits" if args.eval_limit <= 0 else
                                         f"{args.eval_limit} random rows of each test split") + ", MNIST normalisation",
                        "produced_by": "examples/reproduce_paper.py"})


def grid_diagnosis(work: Path, names) -> list[str]:
    """Why low-bit SPQ/JQ collapse: the sampled-weight grid spans max(|mu| + 3 sigma) over the layer, and
    weights whose posterior fell back to the prior (sigma ~ 1) stretch it until most means round to 0."""
    from bayesim.bnn.ops import BayesConvOp, BayesLinearOp

    rows = ["## Sampled-weight grid of the SPQ / JQ models", "",
            "The sampled-weight grid spans max(|mu| + 3 sigma) over each layer (weight and bias). Weights the "
            "network does not use keep a posterior close to the prior N(0, 1), so sigma_max ~ 1 sets the grid "
            "step; at 3 bits (7 levels) nearly every mean then rounds to 0. The rows with grids from the 99th "
            "percentile (`quant.range: percentile`) show what a range that ignores the largest values does.", "",
            "| model | layer | sigma_max | w_step | median abs(mu) | means rounded to 0 |", "|---|---|---|---|---|---|"]
    for name in names:
        model, _ = load_model(work / f"{name}.safetensors")
        layers = [op for op in model.export_ops() if isinstance(op, (BayesLinearOp, BayesConvOp))]
        for i, op in enumerate(layers):
            q = op.quant
            zero = float(np.mean(np.abs(op.mu_w) < q.w_step / 2))
            rows.append(f"| {name} | {i} {tuple(op.mu_w.shape)} | {q.sigma_max:.3f} | {q.w_step:.3f} "
                        f"| {float(np.median(np.abs(op.mu_w))):.3f} | {zero:.0%} |")
    return rows + [""]


def write_report(results: dict, args, out: Path, seconds: float):
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "quantization.json", results)
    fp = results["fp32"]["metrics"]

    def row(name, r):
        m = r["metrics"]
        return (f"| {name} | {m['mnist']['accuracy']:.4f} | {m['mnist']['accuracy'] - fp['mnist']['accuracy']:+.4f} "
                f"| {m['ambiguous']['mean_aleatoric']:.3f} | {m['ood']['mean_epistemic']:.3f} "
                f"| {m['auroc']['ood_vs_in_mi']:.4f} | {m['auroc']['ood_vs_in_mi'] - fp['auroc']['ood_vs_in_mi']:+.4f} "
                f"| {r['memory']['reduction_vs_fp32']:.2f}x |")

    head = ("| model | MNIST acc | vs FP32 | mean aleatoric (ambiguous) | mean MI (ood) | AUROC(MI) ood vs in "
            "| vs FP32 | memory reduction |\n|---|---|---|---|---|---|---|---|")
    lines = ["# Multi-level quantization of a Bayesian LeNet-5 on Dirty-MNIST", "",
             f"Produced by `python examples/reproduce_paper.py --fp-epochs {args.fp_epochs} --qat-epochs "
             f"{args.qat_epochs} --qat-rows {args.qat_rows} --act-bits {args.act_bits} --eval-limit "
             f"{args.eval_limit} --samples {args.samples} --seed {args.seed}`: {seconds / 60:.0f} min of training and "
             "evaluation on 2 CPU cores (sum over the models; per-model times in quantization.json).",
             "",
             f"- FP32: mean-field SVI LeNet-5 with bounded activations (clip level learned from 4.0), "
             f"{args.fp_epochs} epochs on Dirty-MNIST train (MNIST + Ambiguous-MNIST, 120k rows), Adam 2e-3, "
             "batch 128, KL warm-up 1 epoch, seed as above.",
             f"- QAT: each quantized model starts from the FP32 model and is fine-tuned {args.qat_epochs} epoch(s) "
             f"on {args.qat_rows} random training rows (Adam 5e-4) with the strategy's quantizers in the forward "
             f"pass (straight-through gradients); activations {args.act_bits}-bit bounded; mu uniform, sigma on the "
             "log (power-of-two) grid; the same bit width b for mu, sigma and sampled weights.",
             f"- Evaluation: S = {args.samples} Monte-Carlo samples, the software model (`predict_probs`), on "
             + ("the full test splits" if args.eval_limit <= 0 else
                f"a seeded random subset of {args.eval_limit} rows of each test split")
             + " (mnist, ambiguous, ood = Fashion-MNIST, all MNIST-normalised).",
             "- AUROC(MI) ood vs in: mutual information, Fashion-MNIST against MNIST + Ambiguous-MNIST.",
             "- Memory reduction: stored bits per weight against FP32 mu + sigma (64 bits), scales included.", "",
             "## FP32 reference", "", head, row("fp32", results["fp32"]), ""]
    for strategy in STRATEGIES:
        lines += [f"## {strategy.upper()}", "", head]
        lines += [row(f"{strategy} {b} bit", results[f"{strategy}{b}"]) for b in BITS if f"{strategy}{b}" in results]
        lines.append("")
    lines += ["## Ablations at JQ 4 bits (and the percentile range at 3 bits)", "", head]
    for name, label in (("jq4", "JQ 4 bit (log sigma, bounded act.)"), ("jq4_uniform_sigma", "uniform sigma quantizer"),
                        ("jq4_relu", "ReLU instead of bounded activation"),
                        ("jq4_percentile", "grids from the 99th percentile instead of the max"),
                        ("jq3_percentile", "JQ 3 bit, grids from the 99th percentile")):
        if name in results:
            lines.append(row(label, results[name]))
    lines += ["", "![accuracy and AUROC against bits](quantization.png)", ""]
    lines += grid_diagnosis(Path(args.work), [n for n in ("spq4", "spq3", "jq4", "jq3") if n in results])
    write_text_atomic(out / "quantization.md", "\n".join(lines))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for strategy in STRATEGIES:
        bs = [b for b in BITS if f"{strategy}{b}" in results]
        acc = [results[f"{strategy}{b}"]["metrics"]["mnist"]["accuracy"] for b in bs]
        au = [results[f"{strategy}{b}"]["metrics"]["auroc"]["ood_vs_in_mi"] for b in bs]
        axes[0].plot(bs, acc, "o-", label=strategy.upper())
        axes[1].plot(bs, au, "o-", label=strategy.upper())
    for ax, key, label in ((axes[0], "accuracy", "MNIST accuracy"), (axes[1], None, "AUROC(MI) ood vs in")):
        v = fp["mnist"]["accuracy"] if key else fp["auroc"]["ood_vs_in_mi"]
        ax.axhline(v, color="k", ls="--", label="FP32")
        ax.set_xlabel("bits (mu, sigma, sampled weight)")
        ax.set_ylabel(label)
        ax.invert_xaxis()
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = out / ".quantization.png.tmp.png"
    fig.savefig(tmp, dpi=110)
    tmp.replace(out / "quantization.png")


if __name__ == "__main__":
    main()
