"""`bayesim evaluate`: Monte-Carlo evaluation of a BNN on the Dirty-MNIST test splits -> DIR/metrics.json.

    bayesim evaluate --model MODEL.safetensors | --pyro CKPT --arch mlp|lenet5
                     [--samples 32] [--seed 0] [--strategy fp|vpq|spq|jq] [--bits B]
                     [--mu-bits B] [--sigma-bits B] [--w-bits B] [--range max|percentile]
                     [--activation relu|bounded] [--act-upper X|auto] [--act-bits B]
                     [--normalization mnist|own] [--data-dir D] [--limit N] [--embedded] --out DIR

A strategy or bit option re-quantizes the model after training (PTQ, ranges recalibrated); without
them a checkpoint is evaluated as stored (e.g. a QAT model with its frozen ranges).

metrics.json keys (interface):
  "mnist" | "ambiguous" | "ood": {n, accuracy, nll, brier, ece, mean_total_entropy, mean_aleatoric,
                                 mean_epistemic, subset, source}
  "auroc", "aupr": {ood_vs_in_mi, ood_vs_in_total, ood_vs_mnist_mi, ambiguous_vs_mnist_aleatoric}
  "model": {kind, path, arch, quantization ("as stored" | "post-training quantization" |
  "post-training quantization of the activations (weights as stored)" | "none (fp)" | ...), config},
  "strategy", "bits": {mu, sigma, w, act} (null = full precision),
  "activation": {kind, upper, bits}, "memory": {bits_per_weight, total_bits, reduction_vs_fp32, ...},
  "samples", "seed", "normalization", "wall_time_s", "bayesim_version"
"""
from __future__ import annotations

import math

from bayesim.cli import check_data_dir, wrote
from bayesim.errors import BayesimError

STRATEGIES = ("fp", "vpq", "spq", "jq")


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate a BNN on Dirty-MNIST (accuracy, uncertainty, AUROC)",
                       description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="bayesim checkpoint (.safetensors)")
    src.add_argument("--pyro", help="Pyro parameter-store checkpoint (needs --arch)")
    p.add_argument("--arch", help="architecture of --pyro: mlp | lenet5")
    p.add_argument("--samples", type=int, default=32, help="Monte-Carlo weight samples S (default 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strategy", help="fp | vpq | spq | jq (post-training quantization)")
    p.add_argument("--bits", type=int, help="bits of mu, sigma and sampled weights")
    p.add_argument("--mu-bits", type=int)
    p.add_argument("--sigma-bits", type=int)
    p.add_argument("--w-bits", type=int)
    p.add_argument("--range", choices=("max", "percentile"), help="range rule of the uniform grids")
    p.add_argument("--activation", choices=("relu", "bounded"), help="replace the hidden activation")
    p.add_argument("--act-upper", help="clip level of the bounded activation: a number or 'auto' "
                                       "(99.99th percentile on 2000 MNIST training images)")
    p.add_argument("--act-bits", type=int, help="activation bits (bounded activation)")
    p.add_argument("--normalization", choices=("mnist", "own"), help="override the model's normalisation")
    p.add_argument("--data-dir", help="data folder (default: $BAYESIM_DATA or the cache)")
    p.add_argument("--limit", type=int, help="evaluate a seeded random subset of this many rows per split")
    p.add_argument("--embedded", action="store_true", help="use the embedded test subset")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--out", required=True, help="output folder for metrics.json")
    p.set_defaults(func=run)


def _bits(name, v):
    from bayesim.bnn.quant import check_bits

    return None if v is None else check_bits(v, name)


def prepare_model(args):
    """Load / import the model and apply the strategy, bit and activation options. -> (model, info)."""
    from dataclasses import replace

    from bayesim.bnn.checkpoint import load_model
    from bayesim.bnn.config import ActivationConfig
    from bayesim.bnn.evaluate import fp_quantization
    from bayesim.bnn.pyro_import import import_pyro

    if args.strategy is not None and args.strategy not in STRATEGIES:
        import difflib

        m = difflib.get_close_matches(str(args.strategy), STRATEGIES, n=1)
        raise BayesimError(f"--strategy {args.strategy!r} is not allowed; choose one of {', '.join(STRATEGIES)}"
                           + (f" (did you mean {m[0]!r}?)" if m else ""))
    bits = {k: _bits(f"--{k.replace('_', '-')}", getattr(args, k)) for k in ("bits", "mu_bits", "sigma_bits",
                                                                           "w_bits", "act_bits")}
    check_limits(args)
    check_data_dir(args.data_dir)
    if args.pyro:
        if args.arch not in ("mlp", "lenet5"):
            raise BayesimError("--pyro needs --arch mlp or --arch lenet5")
        model = import_pyro(args.pyro, args.arch, normalization=args.normalization or "own")
        info = {"kind": "pyro", "path": str(args.pyro)}
    else:
        model, _meta = load_model(args.model, expect_arch=args.arch)
        info = {"kind": "checkpoint", "path": str(args.model)}
    if args.normalization:
        model.cfg = replace(model.cfg, normalization=args.normalization)
    q = model.cfg.quant
    requant = args.strategy is not None or any(bits[k] is not None for k in ("bits", "mu_bits", "sigma_bits", "w_bits")) \
        or args.range is not None
    if requant:
        given = [f"--{k.replace('_', '-')} {bits[k]}" for k in ("bits", "mu_bits", "sigma_bits", "w_bits")
                 if bits[k] is not None] + ([f"--range {args.range}"] if args.range is not None else [])
        if given and (args.strategy or q.strategy) == "fp":
            flag = given[0]
            why = "with --strategy fp" if args.strategy else "without --strategy: the model's strategy is fp"
            raise BayesimError(f"{flag} has no effect {why} (full precision); give --strategy vpq, spq or jq")
        b = bits["bits"]
        warn_unused_bits(bits, args.strategy or q.strategy, bool(args.strategy))
        q = replace(q, strategy=args.strategy or q.strategy,
                    mu_bits=bits["mu_bits"] or b or q.mu_bits, sigma_bits=bits["sigma_bits"] or b or q.sigma_bits,
                    w_bits=bits["w_bits"] or b or q.w_bits,
                    range=args.range or ("max" if q.range == "learned" else q.range))
        model.set_quant(q)
    act_before = model.cfg.activation
    if args.activation or args.act_upper or bits["act_bits"] is not None:
        a = model.cfg.activation
        kind = args.activation or ("bounded" if (args.act_upper or bits["act_bits"]) else a.kind)
        uppers = None
        upper = a.upper
        if args.act_upper == "auto":
            uppers = _auto_uppers(model, args.data_dir)
        elif args.act_upper is not None:
            upper = act_upper(args.act_upper)
        if kind == "relu" and bits["act_bits"] is not None:
            raise BayesimError("--act-bits needs --activation bounded (a ReLU has no upper end to quantize)")
        if kind == "bounded" and args.act_upper is None:
            if a.kind != "bounded":
                raise BayesimError("--activation bounded / --act-bits on a ReLU model needs --act-upper X or auto: "
                                   "the model has no clip level of its own")
            uppers = model.activation_uppers()  # keep each layer's own (possibly learned) clip level
        act = ActivationConfig(kind=kind, upper=upper, bits=bits["act_bits"] if kind == "bounded" else None)
        model.set_activation(act, uppers)
    act_bits = model.cfg.activation.bits
    if q.strategy == "fp":
        info["quantization"] = fp_quantization(act_bits)
    elif requant:
        info["quantization"] = "post-training quantization"
    elif act_bits is not None and act_bits != act_before.bits:
        info["quantization"] = ACT_PTQ_STORED
    elif model.cfg.activation != act_before:
        info["quantization"] = "as stored; activations changed by the flags (not quantized)"
    else:
        info["quantization"] = "as stored"
    return model, info


#: `model.quantization` of an evaluation whose weights are the checkpoint's and whose activations alone are
#: post-training quantized (--act-bits other than the model's own)
ACT_PTQ_STORED = "post-training quantization of the activations (weights as stored)"


def check_limits(args) -> None:
    """--samples, --seed, --batch-size and --limit within the bounds `bayesim run` allows (the experiment config's
    samples, seed, batch_size and data.limit; integers fit in 64 bits)."""
    import dataclasses

    from bayesim.config.schema import INT64_MAX
    from bayesim.experiment.config import DataSpec, ExperimentConfig

    md = {f.name: f.metadata for f in dataclasses.fields(ExperimentConfig)}
    md["limit"] = {f.name: f.metadata for f in dataclasses.fields(DataSpec)}["limit"]
    for flag, key in (("--samples", "samples"), ("--seed", "seed"), ("--batch-size", "batch_size"),
                      ("--limit", "limit")):
        lo, hi, v = md[key]["lo"], md[key]["hi"], getattr(args, key)
        hi = INT64_MAX if hi is None else hi
        if v is not None and not lo <= v <= hi:
            raise BayesimError(f"{flag} {v} is out of range; allowed {lo} to {hi}")


def act_upper(text: str) -> float:
    """The clip level --act-upper gives: a finite number > 0 that float32 (the activations' precision) holds as
    a normal number, i.e. 1.1755e-38 to 3.4028e+38 (1e-50 would become 0, 1e39 infinity)."""
    from bayesim.config.schema import FLOAT32_MAX, FLOAT32_TINY

    allowed = "must be a finite number > 0 (or 'auto'); allowed 1.1755e-38 to 3.4028e+38 (float32)"
    try:
        upper = float(text)
    except ValueError:
        raise BayesimError(f"--act-upper {text!r}: {allowed}") from None
    if not (math.isfinite(upper) and upper > 0):
        raise BayesimError(f"--act-upper {text}: {allowed}")
    if not FLOAT32_TINY <= upper <= FLOAT32_MAX:
        raise BayesimError(f"--act-upper {text}: not representable in float32 (it would become "
                           f"{'0' if upper < FLOAT32_TINY else 'inf'}); {allowed}")
    return upper


def warn_unused_bits(bits: dict, strategy: str, named: bool) -> None:
    """Warn about a bit flag the strategy does not quantize with (it would be ignored without a word): VPQ
    quantizes the stored mu and sigma only (no --w-bits), SPQ the sampled weights only (no --mu-bits /
    --sigma-bits); --bits sets whichever the strategy uses. (Strategy fp is refused before: nothing is
    quantized.)"""
    import warnings

    from bayesim.bnn.config import QuantConfig

    q = QuantConfig(strategy=strategy)
    used = {"mu_bits": q.quantize_stored, "sigma_bits": q.quantize_stored, "w_bits": q.quantize_sampled}
    what = {"vpq": "the stored mu and sigma only (--mu-bits, --sigma-bits)",
            "spq": "the sampled weights only (--w-bits)"}.get(strategy, "")
    source = f"--strategy {strategy}" if named else f"the model's strategy {strategy}"
    for key, use in used.items():
        if bits[key] is not None and not use:
            warnings.warn(f"--{key.replace('_', '-')} {bits[key]} has no effect with {source}: it quantizes "
                          f"{what}; the flag is ignored", UserWarning, stacklevel=2)


def _auto_uppers(model, data_dir):
    from bayesim.bnn.models import activation_upper_from_data
    from bayesim.data import MNIST_MEAN, MNIST_STD, load_mnist
    from bayesim.data.dirty import normalize

    x, _ = load_mnist("train", data_dir)
    return activation_upper_from_data(model, normalize(x[:2000], MNIST_MEAN, MNIST_STD))


def run(args) -> int:
    import json
    from pathlib import Path

    from bayesim._io import check_out_dir, write_json_atomic
    from bayesim.bnn.evaluate import evaluate_model, summary_table
    from bayesim.data import load_test_splits

    check_out_dir(args.out)
    model, info = prepare_model(args)
    splits = load_test_splits(args.data_dir, normalization=model.cfg.normalization, seed=args.seed,
                              embedded=True if args.embedded else None, limit=args.limit)
    for name, sp in splits.items():
        if len(sp.y) == 0:
            raise BayesimError(f"data split {name!r} is empty (0 rows); nothing to evaluate")
    metrics = evaluate_model(model, splits, args.samples, args.seed, info, batch_size=args.batch_size)
    out = Path(args.out)
    write_json_atomic(out / "metrics.json", json.loads(json.dumps(metrics, default=float)))
    print(summary_table(metrics))
    wrote(f"wrote {out / 'metrics.json'}")
    return 0
