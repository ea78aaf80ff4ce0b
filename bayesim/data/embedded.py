"""The embedded evaluation subset shipped inside the package (`bayesim/resources/embedded_eval.npz`).

About 1,000 rows of each Dirty-MNIST test split, so evaluation works on a machine without the data
sets: MNIST test (100 per class, seeded stratified draw), Ambiguous-MNIST test (1,000 distinct
(image, label) pairs from seeded-shuffled images), Fashion-MNIST test (100 per class). Images are
stored as uint8 (Ambiguous-MNIST's [0,1] floats rounded to 1/255), labels as uint8; the file is read
with allow_pickle=False.

Rebuild: `python -m bayesim.data.embedded [--data-dir D] [--out PATH] [--seed S]`.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import zipfile
from pathlib import Path

import numpy as np

from bayesim.errors import DataError
from bayesim.rng import derive_key, generator

RESOURCE = Path(__file__).resolve().parents[1] / "resources" / "embedded_eval.npz"
PER_CLASS = 100
AMBIGUOUS_PAIRS = 1000
_NAMES = {"mnist": "MNIST test", "ambiguous": "Ambiguous-MNIST test pairs", "ood": "Fashion-MNIST test"}


def stratified_indices(y: np.ndarray, per_class: int, seed: int, tag: str) -> np.ndarray:
    """Sorted indices of the first `per_class` rows of each class in a seeded permutation."""
    perm = generator(derive_key(seed, "embedded", tag)).permutation(y.shape[0])
    ys = y[perm]
    order = np.argsort(ys, kind="stable")  # grouped by class, permutation order inside a class
    counts = np.bincount(ys)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    take = np.concatenate([order[s:s + min(per_class, c)] for s, c in zip(starts, counts)])
    return np.sort(perm[take])


def _to_uint8(images: np.ndarray) -> np.ndarray:
    if images.dtype == np.uint8:
        return np.ascontiguousarray(images)
    return np.clip(np.rint(np.asarray(images, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def build_embedded(data_dir=None, out_path: str | Path = RESOURCE, seed: int = 0,
                   ambiguous: bool = True, progress: bool = True, ambiguous_size: int | None = None,
                   ambiguous_seed: int = 0) -> dict:
    """Write the embedded subset file from the full data; returns its metadata.

    `ambiguous=False` writes the MNIST and Fashion parts only (when Ambiguous-MNIST is unavailable).
    """
    from bayesim._io import atomic_path
    from bayesim.data.dirty import ambiguous_pairs, load_ambiguous_checked
    from bayesim.data.sources import load_fashion, load_mnist

    arrays: dict[str, np.ndarray] = {}
    meta: dict = {"seed": seed, "ambiguous_seed": ambiguous_seed, "ambiguous_size": ambiguous_size, "splits": {}}
    for name, loader in (("mnist", load_mnist), ("ood", load_fashion)):
        x, y = loader("test", data_dir)
        idx = stratified_indices(y, PER_CLASS, seed, name)
        arrays[f"{name}_x"], arrays[f"{name}_y"] = x[idx], y[idx].astype(np.uint8)
        meta["splits"][name] = {"rows": int(idx.size), "of": int(y.shape[0])}
    if ambiguous:
        images, labels = load_ambiguous_checked(data_dir, "test", seed=ambiguous_seed, size=ambiguous_size,
                                                generate=True,
                                                progress=progress)
        rows, y = ambiguous_pairs(labels)
        # shuffle images, keep each image's pairs together, take the first AMBIGUOUS_PAIRS pairs
        img_perm = generator(derive_key(seed, "embedded", "ambiguous")).permutation(images.shape[0])
        rank = np.empty_like(img_perm)
        rank[img_perm] = np.arange(img_perm.size)
        order = np.argsort(rank[rows], kind="stable")[:AMBIGUOUS_PAIRS]
        arrays["ambiguous_x"] = _to_uint8(images[rows[order]])
        arrays["ambiguous_y"] = y[order].astype(np.uint8)
        meta["splits"]["ambiguous"] = {"rows": int(order.size), "of": int(rows.size),
                                       "images": int(np.unique(rows[order]).size)}
    arrays["meta"] = np.array(json.dumps(meta))
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.chmod(tmp, 0o644)  # package data: readable by every user
    load_embedded.cache_clear()
    return meta


@functools.lru_cache(maxsize=2)
def load_embedded(path: str | Path = RESOURCE) -> dict[str, np.ndarray]:
    """The embedded arrays (read-only), keyed '<split>_x' / '<split>_y' and 'meta' (a JSON string)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise DataError(f"{path}: embedded subset file not found; rebuild it with "
                        f"`python -m bayesim.data.embedded --data-dir D`") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: corrupt embedded subset file ({e})") from None
    for a in out.values():
        a.flags.writeable = False
    return out


def embedded_split(name: str, path: str | Path = RESOURCE) -> tuple[np.ndarray, np.ndarray, str]:
    """(uint8 images [n,28,28], int64 labels [n], source description) of one embedded split."""
    z = load_embedded(path)
    if f"{name}_x" not in z or f"{name}_y" not in z:
        raise DataError(f"{path}: the embedded subset has no {name!r} split; rebuild it with "
                        f"`python -m bayesim.data.embedded --data-dir D` once the data is available")
    x, y = z[f"{name}_x"], z[f"{name}_y"].astype(np.int64)
    if x.ndim != 3 or x.shape[1:] != (28, 28) or x.dtype != np.uint8 or y.shape != (x.shape[0],):
        raise DataError(f"{path}: embedded {name!r} arrays have shapes {x.shape} / {y.shape}")
    try:
        of = json.loads(str(z["meta"]))["splits"][name]["of"]
        total = f" of {of}"
    except (KeyError, ValueError, TypeError):
        total = ""
    return x, y, f"embedded subset: {y.shape[0]}{total} rows of {_NAMES[name]}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bayesim.data.embedded", description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=str(RESOURCE))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ambiguous-size", type=int, default=None,
                   help="Ambiguous-MNIST images per split (default: official files, else the full generated set)")
    p.add_argument("--ambiguous-seed", type=int, default=0, help="Ambiguous-MNIST set seed (default 0)")
    p.add_argument("--no-ambiguous", action="store_true", help="write the MNIST and Fashion parts only")
    args = p.parse_args(argv)
    meta = build_embedded(args.data_dir, args.out, args.seed, ambiguous=not args.no_ambiguous,
                          ambiguous_size=args.ambiguous_size, ambiguous_seed=args.ambiguous_seed)
    size = Path(args.out).stat().st_size
    print(f"wrote {args.out} ({size / 1e6:.2f} MB): {json.dumps(meta['splits'])}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
