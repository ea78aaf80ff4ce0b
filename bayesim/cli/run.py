"""`bayesim run CONFIG.yaml [--out DIR] [--set key=value ...]`: one experiment on simulated hardware."""
from __future__ import annotations


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
    out = Path(args.out) if args.out else Path("out") / cfg.name
    check_out_dir(out, "--out" if args.out else "the output folder")
    try:
        result = run_experiment(cfg, out, progress=not args.no_progress)
    except ConfigError as e:
        if e.source is None and e.key:  # a config value that named no usable card: say which file
            raise ConfigError(e.message, source=args.config or "<built-in quickstart>", key=e.key) from e
        raise
    print(result_table(result))
    print(f"wrote {out / 'metrics.json'}")
    return 0


def check_out_dir(out, what: str = "--out") -> None:
    """Refuse an output folder that cannot be written, before any work and without creating anything.

    It must be a writable folder, or not exist yet with its nearest existing ancestor a writable folder
    (it is created when metrics.json is written); `out/metrics.json` must not be a folder.
    """
    import os
    from pathlib import Path

    from bayesim.errors import BayesimError

    out = Path(out)

    def fail(why: str):
        fix = "give a folder that can be created or written" if what == "--out" else "choose one with --out"
        raise BayesimError(f"{what} {out}: {why}; {fix}")

    if out.exists():
        if not out.is_dir():
            fail("exists and is not a folder")
        if (out / "metrics.json").is_dir():
            fail("metrics.json in it is a folder")
        anc = out
    else:
        if out.is_symlink():
            fail("is a broken symbolic link")
        anc = out.absolute().parent
        while not anc.exists():
            if anc.is_symlink():
                fail(f"{anc} is a broken symbolic link")
            anc = anc.parent
        if not anc.is_dir():
            fail(f"{anc} is not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        fail(f"{anc} is not writable")
    try:  # read-only file systems, and pseudo file systems (/proc, /sys) where nothing can be created
        st = os.statvfs(anc)
        if st.f_flag & getattr(os, "ST_RDONLY", 1):
            fail(f"{anc} is on a read-only file system")
    except (OSError, AttributeError):
        pass
    if _pseudo_fs(anc):
        fail(f"{anc} is on a kernel pseudo file system where files cannot be written")


def _pseudo_fs(path) -> bool:
    """Is `path` on a kernel pseudo file system (proc, sysfs, ...)? Linux only; False when unknown."""
    import os

    try:
        mounts = open("/proc/self/mounts", encoding="utf-8", errors="replace").read().splitlines()
    except OSError:
        return False
    real = os.path.realpath(path)
    best, fstype = "", ""
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        mnt = parts[1].replace("\\040", " ")
        if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
            best, fstype = mnt, parts[2]
    return fstype in {"proc", "sysfs", "devpts", "cgroup", "cgroup2", "securityfs", "debugfs", "tracefs",
                      "pstore", "bpf", "configfs", "efivarfs", "fusectl", "mqueue", "hugetlbfs", "binfmt_misc"}
