"""`bayesim run CONFIG.yaml [--out DIR] [--set key=value ...]`: one experiment on simulated hardware."""
from __future__ import annotations

from bayesim._io import check_out_dir
from bayesim.cli import wrote


def register(sub) -> None:
    p = sub.add_parser("run", help="run a trained BNN on simulated crossbars (metrics.json + table)",
                       description="Run one experiment config: software FP32 vs the network on a device "
                                   "and crossbar card under a quantization strategy.")
    p.add_argument("config", nargs="?", help="experiment YAML (default: the built-in quickstart: shipped "
                                             "LeNet-5, JQ 4 bits, PCM, default crossbar, S = 32)")
    p.add_argument("--out", help="output folder for metrics.json (default: out/<config name>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set hardware.bits.w=3 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


#: `bayesim run` without a config: configs/quickstart.yaml (every other key of it is the default).
BUILTIN_QUICKSTART = {"name": "quickstart", "data": {"embedded": True}}


def run(args) -> int:
    from pathlib import Path

    from bayesim.errors import ConfigError
    from bayesim.experiment import load_experiment, result_table, run_experiment

    if args.config:
        cfg = load_experiment(args.config, args.overrides)
    else:
        cfg = load_experiment(None, args.overrides, base=BUILTIN_QUICKSTART, source="<built-in quickstart>")
    if args.out is not None and not args.out.strip():
        raise ConfigError("--out is empty; give a folder (or leave --out out to write to out/<config name>)")
    out = Path(args.out) if args.out else Path("out") / cfg.name
    check_out_dir(out, "--out" if args.out else "the output folder")
    try:
        result = run_experiment(cfg, out, progress=not args.no_progress)
    except ConfigError as e:
        if e.source is None and e.key:  # a config value that named no usable card: say which file
            from bayesim.experiment.config import from_set

            source = args.config or "<built-in quickstart>"
            raise ConfigError(e.message, source=f"{source} (--set)" if from_set(e.key, args.overrides) else source,
                              key=e.key) from e
        raise
    print(result_table(result))
    wrote(f"wrote {out / 'metrics.json'}")
    return 0
