"""`bayesim import-pyro CKPT --arch mlp|lenet5 --out MODEL`: convert a Pyro mean-field checkpoint.

Also from a YAML config: `bayesim import-pyro --config X.yaml` with keys checkpoint, arch, out,
normalization ("own": Fashion-MNIST normalised with its own statistics, the reference's convention);
relative paths in it are relative to the config file's folder (a checkpoint found only in the current folder
is taken from there). The output path is checked before importing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bayesim.cli import wrote
from bayesim.config.schema import spec


@dataclass(frozen=True)
class ImportConfig:
    checkpoint: str = spec()
    arch: Literal["mlp", "lenet5"] = spec()
    out: str = spec()
    normalization: Literal["mnist", "own"] = "own"


def register(sub) -> None:
    p = sub.add_parser("import-pyro", help="import a Pyro parameter-store checkpoint (mean-field guide)",
                       description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", nargs="?", help="Pyro checkpoint (.pt)")
    p.add_argument("--arch", choices=("mlp", "lenet5"))
    p.add_argument("--out", help="output model (.safetensors)")
    p.add_argument("--normalization", choices=("mnist", "own"), default=None,
                   help="input normalisation of the OOD split the model expects (default own)")
    p.add_argument("--config", help="YAML with checkpoint, arch, out, normalization")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from bayesim._io import check_out_file, not_regular
    from bayesim.bnn.checkpoint import save_model
    from bayesim.bnn.pyro_import import import_pyro
    from bayesim.config.schema import build, load_yaml
    from bayesim.errors import BayesimError, ConfigError

    raw = load_yaml(args.config) if args.config else {}
    for k in ("checkpoint", "arch", "out", "normalization"):
        v = getattr(args, k)
        if v is not None:
            raw[k] = v
    if not args.config and any(raw.get(k) is None for k in ("checkpoint", "arch", "out")):
        raise BayesimError("import-pyro needs CKPT, --arch mlp|lenet5 and --out MODEL (or --config X.yaml)")
    cfg = build(ImportConfig, raw, source=args.config or "<command line>")
    cfg = _resolve_paths(cfg, args)
    if args.checkpoint is None:  # from the config file: name it and the key
        ck, what = Path(cfg.checkpoint), "expected a Pyro parameter-store file (.pt)"
        if ck.is_dir():
            raise ConfigError(f"{ck} is a folder; {what}", args.config, "checkpoint")
        if (why := not_regular(ck)):
            raise ConfigError(f"{ck}: {why}; {what}", args.config, "checkpoint")
        if not ck.is_file():
            raise ConfigError(f"{ck}: file not found; {what}", args.config, "checkpoint")
    check_out_file(cfg.out, "--out" if args.out is not None else f"{args.config}: out:")
    model = import_pyro(cfg.checkpoint, cfg.arch, normalization=cfg.normalization)
    path = save_model(model, cfg.out, source={"kind": "pyro", "checkpoint": str(cfg.checkpoint)})
    wrote(f"wrote {path} ({cfg.arch}, {model.n_weights} Bayesian weights)")
    return 0


def _resolve_paths(cfg: ImportConfig, args) -> ImportConfig:
    """Relative paths in a config file are relative to that file's folder: the checkpoint when it exists
    there or nowhere else, else as written (the current folder), as `model.path` of experiment configs;
    `out` always.
    Paths given on the command line stay relative to the current folder."""
    import os
    from dataclasses import replace

    folder = os.path.dirname(args.config or "")
    new = {}
    for k in ("checkpoint", "out"):
        v = getattr(cfg, k)
        if folder and getattr(args, k) is None and v.strip() and not os.path.isabs(v):
            cand = os.path.join(folder, v)  # keeps a trailing '/': out must not name a folder
            if k == "out" or os.path.exists(cand) or not os.path.exists(v):
                new[k] = cand  # (a checkpoint found in neither place is reported at its config-relative path)
    return replace(cfg, **new)
