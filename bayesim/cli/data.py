"""`bayesim data prepare|info`: fetch/verify the data sets, generate Ambiguous-MNIST, report split sizes."""
from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="prepare and inspect the Dirty-MNIST data",
                              description="Prepare (download/verify/generate) and inspect the data sets.")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", parser_class=type(p))
    sub.required = True

    prep = sub.add_parser("prepare", help="verify/download MNIST and Fashion-MNIST, generate Ambiguous-MNIST")
    prep.add_argument("--data-dir", default=None, help="data folder (default: $BAYESIM_DATA, else the cache)")
    prep.add_argument("--size", type=int, default=None,
                      help="number of Ambiguous-MNIST images to generate per split (default: the generator's)")
    prep.add_argument("--seed", type=int, default=0, help="Ambiguous-MNIST generator seed (default 0)")
    prep.set_defaults(func=cmd_prepare)

    info = sub.add_parser("info", help="print each split's size and class counts")
    info.add_argument("--data-dir", default=None, help="data folder (default: $BAYESIM_DATA, else the cache)")
    info.add_argument("--json", action="store_true", help="machine-readable JSON output")
    info.add_argument("--normalization", choices=["mnist", "own"], default="mnist",
                      help="normalise Fashion-MNIST with MNIST statistics (default) or its own")
    info.add_argument("--seed", type=int, default=0, help="Ambiguous-MNIST seed (default 0)")
    info.add_argument("--size", type=int, default=None,
                      help="Ambiguous-MNIST images per split (default: official files, else the full generated set)")
    info.set_defaults(func=cmd_info)


def _check_size_and_seed(size, seed) -> None:
    from bayesim.config.schema import INT64_MAX
    from bayesim.errors import DataError

    if size is not None and size < 1:
        raise DataError(f"--size must be >= 1, got {size}")
    if not 0 <= seed <= INT64_MAX:
        raise DataError(f"--seed must be in [0, 2^63 - 1], got {seed}")


def cmd_prepare(args: argparse.Namespace) -> int:
    from bayesim.data.dirty import ambiguous_available, load_ambiguous_checked
    from bayesim.data.sources import MD5, DATASETS, ensure_all, md5_uncompressed
    from bayesim.errors import DataError

    _check_size_and_seed(args.size, args.seed)
    from bayesim.paths import data_dir

    folder = data_dir(args.data_dir)
    print(f"data folder: {folder}")
    found = ensure_all([(ds, split) for ds in DATASETS for split in ("train", "test")], args.data_dir)
    for (ds, base), path in found.items():
        digest = md5_uncompressed(path)
        if digest != MD5[(ds, base)]:
            raise DataError(f"{path}: MD5 of the uncompressed content is {digest}, expected "
                            f"{MD5[(ds, base)]}; delete it and run `bayesim data prepare` again")
        print(f"  ok  {path} (MD5 verified)")
    if not ambiguous_available():
        raise DataError("Ambiguous-MNIST generator (bayesim.data.ambiguous) is not installed")
    for split in ("train", "test"):
        images, labels = load_ambiguous_checked(args.data_dir, split, seed=args.seed, size=args.size,
                                                generate=True, progress=True)
        print(f"  ok  Ambiguous-MNIST {split}: {images.shape[0]} images x {labels.shape[1]} labels")
    from bayesim.data.ambiguous import location

    where = location(folder, args.seed, args.size)
    if where is not None:
        print(f"  Ambiguous-MNIST: {where}" + ("" if where.is_relative_to(folder) else
                                              f" (in the user cache, not in {folder}: it was not writable)"))
    print("data ready")
    return 0


def _summary(x, y, **extra) -> dict:
    import numpy as np

    d = {"n": int(y.shape[0]), "class_counts": np.bincount(y, minlength=10).tolist()}
    if x is not None:
        d["mean"] = round(float(x.mean(dtype=np.float64)), 4)
        d["std"] = round(float(x.std(dtype=np.float64)), 4)
    d.update(extra)
    return d


def collect_info(data_dir: str | None, normalization: str = "mnist", seed: int = 0,
                 ambiguous_size: int | None = None) -> dict:
    """Sizes and class counts of every split; nothing is downloaded or generated here. A named folder
    (`data_dir` or $BAYESIM_DATA) without a split's files reports them missing; with no folder named and
    none in the default place, the test splits are the embedded subset (as `bayesim run` and `evaluate`)."""
    from bayesim.data.dirty import (SPLITS, ambiguous_available, check_named_folder,
                                    load_ambiguous_checked, load_test_split)
    from bayesim.data.sources import has_files, load_mnist, prepare_command
    from bayesim.errors import DataMissing
    from bayesim.paths import data_dir_named

    folder = check_named_folder(data_dir)
    out: dict = {"data_dir": str(folder), "normalization": normalization, "train": {}, "test": {}}
    if has_files("mnist", "train", data_dir):
        _, y = load_mnist("train", data_dir)
        out["train"]["mnist"] = _summary(None, y)
    else:
        out["train"]["mnist"] = None
    amb_train = None
    if ambiguous_available() and has_files("mnist", "train", data_dir):
        try:
            _, labels = load_ambiguous_checked(data_dir, "train", seed=seed, size=ambiguous_size, generate=False,
                                               progress=False)
            amb_train = _summary(None, labels.reshape(-1), images=int(labels.shape[0]))
        except DataMissing:
            amb_train = None  # not generated yet (a corrupt file is an error)
    out["train"]["ambiguous_pairs"] = amb_train
    named = data_dir_named(data_dir)
    files = {"mnist": ("mnist", "MNIST"), "ood": ("fashion", "Fashion-MNIST")}
    for name in SPLITS:
        if named and name in files and not has_files(files[name][0], "test", data_dir):
            out["test"][name] = {"n": 0, "missing": f"no {files[name][1]} test files in {folder} "
                                                    f"(`{prepare_command(data_dir)}` fetches them)"}
            continue
        try:
            s = load_test_split(name, data_dir, normalization=normalization, generate=False, progress=False,
                                ambiguous_size=ambiguous_size, ambiguous_seed=seed)
        except DataMissing as e:
            if name == "ambiguous":  # not generated yet: report it (a corrupt file is an error)
                out["test"][name] = {"n": 0, "missing": str(e)}
                continue
            raise
        out["test"][name] = _summary(s.x, s.y, subset=s.subset, source=s.source)
    return out


def cmd_info(args: argparse.Namespace) -> int:
    _check_size_and_seed(args.size, args.seed)
    info = collect_info(args.data_dir, args.normalization, args.seed, args.size)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"data folder: {info['data_dir']}  (normalization: {info['normalization']})")
    rows = [("train", "mnist", info["train"]["mnist"]), ("train", "ambiguous pairs", info["train"]["ambiguous_pairs"])]
    rows += [("test", k, v) for k, v in info["test"].items()]
    from bayesim.data.sources import prepare_command

    # the command that makes the missing parts of *this* folder and set (--data-dir, --size, --seed as given)
    prepare = prepare_command(args.data_dir, args.seed, args.size)
    print(f"{'set':<6}{'split':<17}{'rows':>7}  {'mean':>7} {'std':>6}  class counts 0..9")
    for part, name, d in rows:
        if not d or not d.get("n"):
            why = (d or {}).get("missing", f"not available (run `{prepare}`)")
            print(f"{part:<6}{name:<17}{'-':>7}  {why}")
            continue
        mean = f"{d['mean']:7.3f}" if "mean" in d else " " * 7
        std = f"{d['std']:6.3f}" if "std" in d else " " * 6
        tag = "  [embedded subset]" if d.get("subset") else ""
        print(f"{part:<6}{name:<17}{d['n']:>7}  {mean} {std}  {' '.join(map(str, d['class_counts']))}{tag}")
    from bayesim.data.dirty import subset_reason

    why = subset_reason(d.get("source") for d in info["test"].values() if d)
    if why:
        print(f"[embedded subset: {why}]")
    return 0
