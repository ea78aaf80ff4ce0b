"""`bayesim devices [list|show NAME]`: list the device models and cards; show one with its level overlap."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("devices", help="list device models and cards, show one",
                              description="List built-in device models, cards (devices/ and --cards DIR) and "
                                          "installed plug-ins; `show NAME` prints a device's parameters and "
                                          "the programmed/read distribution of its levels.")
    p.add_argument("--cards", dest="cards_top", action="append", default=[], metavar="DIR",
                   help="extra folder of device cards")
    p.set_defaults(func=cmd_list)
    sub = p.add_subparsers(dest="devices_command", metavar="ACTION", parser_class=type(p))
    ls = sub.add_parser("list", help="list devices (the default)")
    ls.add_argument("--cards", action="append", default=[], metavar="DIR", help="extra folder of device cards")
    ls.set_defaults(func=cmd_list)
    sh = sub.add_parser("show", help="print a device's parameters and level overlap, optionally plot it")
    sh.add_argument("name", help="built-in, card name, card path or plug-in entry point")
    sh.add_argument("--cards", action="append", default=[], metavar="DIR", help="extra folder of device cards")
    sh.add_argument("--levels", type=int, default=None, help="number of levels (default: the card's n_levels, "
                                                              "its measured levels, else 8)")
    sh.add_argument("--spacing", choices=["linear", "log", "measured"], default=None,
                    help="level spacing (default: measured when the device has measured levels, else linear)")
    sh.add_argument("--t-read", type=float, default=1.0, help="read time after programming, s (default 1)")
    sh.add_argument("--samples", type=int, default=2000, help="cells drawn per level (default 2000)")
    sh.add_argument("--seed", type=int, default=0)
    sh.add_argument("--plot", default=None, metavar="FILE.png", help="write histograms per level")
    sh.set_defaults(func=cmd_show)


# parameters that matter for each component model (the others keep their unused defaults)
_RELEVANT = {("programming", "none"): (), ("programming", "polynomial"): ("coeffs_uS",),
             ("programming", "table"): ("file",), ("read", "none"): (), ("read", "polynomial"): ("coeffs_uS",),
             ("read", "pcm"): ("q_coeff", "q_exponent", "q_max", "t_pulse_s", "t0_s"), ("drift", "none"): (),
             ("drift", "power_law"): ("nu", "nu_std", "t0_s"), ("drift", "pcm"): ("t0_s",)}


def _cards(args) -> list:
    """The --cards folders (given before or after the action), each checked to be a folder before anything is
    looked up: a mistyped one is an error naming the flag, even where the name asked for is a built-in."""
    from pathlib import Path

    from bayesim.errors import BayesimError

    folders = [*getattr(args, "cards_top", []), *getattr(args, "cards", [])]
    for f in folders:
        p = Path(f)  # as card_dirs reads it (the shell expands a ~)
        if not p.is_dir():
            raise BayesimError(f"--cards {f}: {'not a folder' if p.exists() else 'folder not found'}; expected a "
                               "folder of device cards (*.yaml)")
    return folders


def cmd_list(args: argparse.Namespace) -> int:
    from bayesim.devices import list_devices

    rows = list_devices(_cards(args))
    w = max(len(r["name"]) for r in rows)
    for r in rows:
        src = r["source"]
        src = (src[:70] + "...") if len(src) > 73 else src
        print(f"{r['name']:<{w}}  {r['kind']:<8}  {r['where']}" + (f"  ({r['note']})" if r.get("note") else "")
              + (f"  [{src}]" if src else ""))
    return 0


#: bounds of `devices show`: levels (a 16-bit cell has 65536) and cells drawn per level
MAX_LEVELS = 65536
MAX_SAMPLES = 1_000_000
MAX_CELLS = 20_000_000  # levels x samples: a few hundred MB of float64 work arrays


def cmd_show(args: argparse.Namespace) -> int:
    import numpy as np

    from bayesim._io import check_out_file
    from bayesim.config.schema import INT64_MAX, to_dict
    from bayesim.devices.composed import PRESETS
    from bayesim.devices.registry import device_class, resolve_device
    from bayesim.devices.stats import level_overlap, max_distinguishable_levels
    from bayesim.errors import BayesimError

    if not 2 <= args.samples <= MAX_SAMPLES:
        raise BayesimError(f"--samples must be in [2, {MAX_SAMPLES}], got {args.samples}")
    if args.levels is not None and not 2 <= args.levels <= MAX_LEVELS:
        raise BayesimError(f"--levels must be in [2, {MAX_LEVELS}], got {args.levels}")
    if not 0 <= args.t_read <= 1e10:
        raise BayesimError(f"--t-read must be in [0, 1e10] s (as hardware.read_time_s), got {args.t_read}")
    if not 0 <= args.seed <= INT64_MAX:
        raise BayesimError(f"--seed must be in [0, 2^63 - 1], got {args.seed}")
    if args.plot is not None:
        check_out_file(args.plot, "--plot")
    dev, card = resolve_device(args.name, _cards(args))
    card = card if card is not None else getattr(dev, "card", None)  # a built-in by name: its preset card
    measured = dev.measured_levels() if hasattr(dev, "measured_levels") else None
    if args.spacing == "measured" and measured is None:
        raise BayesimError(f"--spacing measured: device {dev.name!r} has no measured levels (a programming "
                           "table or samples); choose linear or log")
    spacing = args.spacing or ("measured" if measured is not None and args.levels in (None, len(measured))
                               else "linear")
    n = args.levels or (len(measured) if spacing == "measured" else getattr(dev, "n_levels", None) or 8)
    if n * args.samples > MAX_CELLS:
        raise BayesimError(f"--levels x --samples must be at most {MAX_CELLS:,} cells, got {n} x {args.samples}")
    # The whole report is built before anything is printed: a device that fails while its levels are drawn (a
    # plug-in's NaN) or a plot that cannot be written prints the error alone, not half a table above it.
    lines = [f"device: {dev.name}  ({device_class(dev)})",
             f"range: {dev.g_min:g} .. {dev.g_max:g} uS; gaussian_programming: "
             f"{bool(getattr(dev, 'gaussian_programming', False))}"]
    if card is not None:
        d = to_dict(card)
        lines += [f"{k}: {d[k]}" for k in ("model", "source", "path") if d.get(k)]
        plugin = card.model not in PRESETS  # a plug-in's card: its params, not the built-in components
        for sec in () if plugin else ("range", "programming", "read", "drift", "faults", "d2d"):
            keep = _RELEVANT.get((sec, d[sec].get("model")))
            items = [(k, v) for k, v in d[sec].items() if v not in (None, [], "")
                     and (keep is None or k == "model" or k in keep)]
            lines.append(f"{sec}: " + ", ".join(f"{k}={v}" for k, v in items))
        if d["params"]:
            lines.append("params: " + ", ".join(f"{k}={v}" for k, v in d["params"].items()))
        if d["assumptions"]:
            lines.append("assumptions: " + ", ".join(d["assumptions"]))
    ov = level_overlap(dev, n, spacing, args.t_read, args.samples, args.seed)
    lines += [f"\n{n} {spacing} levels, {args.samples} cells each, read at t = {args.t_read:g} s",
              f"{'level':>5} {'target_uS':>10} {'prog_mean':>10} {'prog_std':>9} {'read_mean':>10} {'read_std':>9}"]
    lines += [f"{i:>5} {ov['levels'][i]:>10.4f} {ov['prog_mean'][i]:>10.4f} {ov['prog_std'][i]:>9.4f} "
              f"{ov['read_mean'][i]:>10.4f} {ov['read_std'][i]:>9.4f}" for i in range(n)]
    lines.append(f"distinguishable at 1 sigma (of these {n}): programmed {ov['distinguishable_programmed']}, "
                 f"read {ov['distinguishable_read']}")
    mx = max_distinguishable_levels(dev, args.t_read)
    lines.append(f"most levels distinguishable at 1 sigma over the range (analytic: programming and read stds at the "
                 f"median drift, without the spread of drift exponents, d2d or faults): "
                 f"{'unlimited (noiseless)' if np.isinf(mx) else int(mx)}")
    if args.plot:
        _plot(dev, ov, args.plot)
        lines.append(f"plot: {args.plot}")
    print("\n".join(lines))
    return 0


def _plot(dev, ov: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from bayesim._io import atomic_path

    fig, axes = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    lo = min(float(ov["programmed"].min()), float(ov["read"].min()))
    hi = max(float(ov["programmed"].max()), float(ov["read"].max()))
    bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 300)
    for ax, what, title in ((axes[0], "programmed", "programmed"),
                            (axes[1], "read", f"read at t = {ov['t_read']:g} s")):
        for i, row in enumerate(ov[what]):
            ax.hist(row, bins=bins, histtype="stepfilled", alpha=0.5, color=f"C{i % 10}")
        for g in ov["levels"]:
            ax.axvline(float(g), color="k", lw=0.5, ls=":")
        ax.set_ylabel("cells")
        ax.set_title(f"{dev.name}: {title} (distinguishable at 1 sigma: {ov['distinguishable_' + what]}"
                     f" of {len(ov['levels'])})", fontsize=10)
    axes[1].set_xlabel("conductance (uS)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
