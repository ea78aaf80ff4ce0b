"""`bayesim train CONFIG.yaml`: SVI training (or QAT fine-tuning) of a Bayesian network.

The YAML maps onto `bayesim.bnn.train.TrainConfig` (model: arch / widths / activation / prior / quant;
epochs, batch_size, lr, seed, kl_warmup_epochs, init_from, data: {data_dir, limit}, out, device, num_threads).
Relative `init_from` and `data.data_dir` in the file are relative to its folder where the checkpoint / folder is
there, else to the current folder (as `model.path` and `data.dir` of run configs); `out` and the flags' paths are
relative to the current folder.
"""
from __future__ import annotations

from pathlib import Path

from bayesim.cli import check_data_dir, wrote


def register(sub) -> None:
    p = sub.add_parser("train", help="train a Bayesian network (SVI; QAT with a strategy)",
                       description=__doc__.splitlines()[0])
    p.add_argument("config", help="training config YAML (see configs/train_*.yaml)")
    p.add_argument("--out", help="checkpoint path (overrides `out` of the config)")
    p.add_argument("--epochs", type=int, help="override epochs")
    p.add_argument("--limit", type=int, help="train on a seeded random subset of this many rows (quick runs)")
    p.add_argument("--data-dir", help="data folder (default: $BAYESIM_DATA or the cache)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="override device")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from bayesim.bnn.train import TrainConfig, train_and_save
    from bayesim.config.schema import build, load_yaml

    check_data_dir(args.data_dir)
    raw = load_yaml(args.config)
    over = {"epochs": args.epochs, "device": args.device}
    raw.update({k: v for k, v in over.items() if v is not None})
    if args.no_progress:
        raw["progress"] = False
    if args.limit is not None or args.data_dir is not None:
        data = dict(raw.get("data") or {})
        if args.limit is not None:
            data["limit"] = args.limit
        if args.data_dir is not None:
            data["data_dir"] = args.data_dir
        raw["data"] = data
    flags = [f for f, v in (("--epochs", args.epochs), ("--limit", args.limit), ("--data-dir", args.data_dir),
                            ("--device", args.device)) if v is not None]
    source = f"{args.config} (with {', '.join(flags)})" if flags else str(args.config)
    cfg = build(TrainConfig, raw, source=source)
    cfg = _init_from_beside_config(cfg, Path(args.config))
    if args.data_dir is None:  # a --data-dir stays relative to the current folder, as on any command line
        cfg = _data_dir_beside_config(cfg, Path(args.config))
    _, history, path = train_and_save(cfg, out=args.out, source=str(args.config))
    last = history[-1]
    wrote(f"wrote {path} (last epoch, {last['rows']} training rows: train acc {last['accuracy']:.4f}, negative ELBO "
          f"{last['neg_elbo']:.4f} nats per image = the epoch's mean cross-entropy + KL / N_train at the epoch's end)")
    return 0


def _data_dir_beside_config(cfg, config: Path):
    """`data.data_dir` relative to the config file where that folder is there, else to the current folder (the
    rule of `data.dir` in run configs); one found in neither place is a ConfigError naming the config, the key
    and both places."""
    from dataclasses import replace

    from bayesim.errors import ConfigError
    from bayesim.paths import beside_config, named_data_dir_problem, searched_folders

    ref = cfg.data.data_dir
    if not ref:
        return cfg
    if (found := beside_config(ref, config, Path.is_dir)):
        return replace(cfg, data=replace(cfg.data, data_dir=found))
    why = named_data_dir_problem(ref)
    if why:
        p = Path(ref).expanduser()
        what, _, expected = why.partition("; ")  # "folder not found" (where it was looked for); "expected ..."
        where = "" if p.is_absolute() else searched_folders(p / "x", config)
        raise ConfigError(f"{p}: {what}{where}; {expected}, or null for $BAYESIM_DATA / the user cache",
                          str(config), "data.data_dir")
    return cfg


def _init_from_beside_config(cfg, config: Path):
    """`init_from` relative to the config file where a file is there, else to the current folder (the rule of
    `model.path` in run configs); a missing one is a ConfigError naming the config, the key and both places."""
    from dataclasses import replace

    from bayesim.errors import ConfigError
    from bayesim.paths import beside_config, searched_folders

    from bayesim._io import not_regular

    if not cfg.init_from:
        return cfg
    for cand in (Path(config).parent / cfg.init_from, Path(cfg.init_from).expanduser()):
        if (why := not_regular(cand)):  # a named pipe is there, not missing
            raise ConfigError(f"{cand}: {why}; expected a bayesim checkpoint (.safetensors)", str(config), "init_from")
    if (found := beside_config(cfg.init_from, config, Path.is_file)):
        return replace(cfg, init_from=found)
    p = Path(cfg.init_from).expanduser()
    if not p.is_file():
        where = "" if p.is_absolute() else searched_folders(p, config)
        raise ConfigError(f"{p}: checkpoint not found{where}", str(config), "init_from")
    return cfg
