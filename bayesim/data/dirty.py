"""Dirty-MNIST: MNIST + Ambiguous-MNIST (+ Fashion-MNIST as out-of-distribution), normalised.

Every input is normalised with MNIST statistics by default, as a deployed device would see it (it
does not know which data set an image comes from); `normalization="own"` normalises Fashion-MNIST
with its own statistics to compare with published numbers. Images become float32 [N, 1, 28, 28] =
(pixels/255 - mean) / std.

Test splits: `mnist` (MNIST test, 10,000), `ambiguous` (Ambiguous-MNIST test, one row per distinct
(image, label) pair: each image carries 10 sampled labels), `ood` (Fashion-MNIST test, 10,000).
Without the data folder, the embedded ~1,000-image subsets are used (`Split.subset` is True).

Training set: MNIST train + Ambiguous-MNIST train with one row per (image, label) sample, with Gaussian
noise (std 0.05, normalised units) added once, as the Dirty-MNIST authors' `DirtyMNIST` does.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from dataclasses import dataclass, field

import numba as nb
import numpy as np

from bayesim.errors import ConfigError, DataError
from bayesim.paths import data_dir as resolve_data_dir
from bayesim.paths import data_dir_named
from bayesim.rng import NORMAL_TABLE, derive_key, generator, normal
from bayesim.data.sources import has_files, load_fashion, load_mnist

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530
SPLITS = ("mnist", "ambiguous", "ood")
NORMALIZATIONS = ("mnist", "own")
N_CLASSES = 10


@dataclass(eq=False)
class Split:
    """One evaluation split: normalised images x float32 [N,1,28,28], labels y int64 [N]."""

    name: str
    x: np.ndarray = field(repr=False)
    y: np.ndarray = field(repr=False)
    subset: bool
    source: str

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def class_counts(self) -> list[int]:
        return np.bincount(self.y, minlength=N_CLASSES).tolist()


def stats_for(split: str, normalization: str = "mnist") -> tuple[float, float]:
    """(mean, std) used to normalise `split` ('mnist' | 'ambiguous' | 'ood' | 'train')."""
    if normalization not in NORMALIZATIONS:
        raise ConfigError(f"unknown normalization {normalization!r}; allowed: 'mnist', 'own'",
                          key="normalization")
    if split == "ood" and normalization == "own":
        return FASHION_MEAN, FASHION_STD
    return MNIST_MEAN, MNIST_STD


def normalize(images: np.ndarray, mean: float, std: float) -> np.ndarray:
    """uint8 pixels [N,28,28] (or float in [0,1]) -> float32 [N,1,28,28] = (x - mean) / std."""
    if images.dtype == np.uint8:
        x = images.astype(np.float32)
        x *= np.float32(1.0 / 255.0)
    else:
        x = np.array(images, dtype=np.float32, copy=True)
    x -= np.float32(mean)
    x *= np.float32(1.0 / std)
    return x.reshape(x.shape[0], 1, x.shape[-2], x.shape[-1])


# ---------------------------------------------------------------------------------------- ambiguous
def ambiguous_pairs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (image, label) pairs of an [N, K] label matrix: (image index [P], label [P]).

    Pairs are ordered by image, then label; repeated labels of one image count once.
    """
    s = np.sort(labels, axis=1)
    keep = np.ones(s.shape, dtype=bool)
    keep[:, 1:] = s[:, 1:] != s[:, :-1]
    rows, cols = np.nonzero(keep)
    return rows.astype(np.int64), s[rows, cols].astype(np.int64)


def _ambiguous_module():
    return importlib.import_module("bayesim.data.ambiguous")


def ambiguous_available() -> bool:
    """True when the Ambiguous-MNIST module (generator / official-file loader) is installed."""
    try:
        _ambiguous_module()
    except ModuleNotFoundError as e:
        if e.name == "bayesim.data.ambiguous":
            return False
        raise
    return True


def load_ambiguous_checked(data_dir, split: str, seed: int = 0, size: int | None = None,
                           generate: bool = True, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Ambiguous-MNIST `split` through `bayesim.data.ambiguous.load_ambiguous`, validated.

    Returns images float32 [N,28,28] in [0,1] and labels int64 [N,K].
    """
    if not ambiguous_available():
        raise DataError("Ambiguous-MNIST is unavailable: module bayesim.data.ambiguous is not installed")
    folder = resolve_data_dir(data_dir)
    images, labels = _ambiguous_module().load_ambiguous(
        folder, split, seed=seed, size=size, generate=generate, progress=progress)
    images = np.asarray(images)
    labels = np.asarray(labels)
    what = f"Ambiguous-MNIST {split} (data folder {folder})"
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{what}: images have shape {images.shape}, expected [N, 28, 28]")
    if labels.ndim != 2 or labels.shape[0] != images.shape[0]:
        raise DataError(f"{what}: labels have shape {labels.shape}, expected [{images.shape[0]}, K]")
    if images.shape[0] == 0 or labels.shape[1] == 0:
        raise DataError(f"{what}: empty split")
    if labels.min() < 0 or labels.max() >= N_CLASSES:
        raise DataError(f"{what}: labels outside 0..{N_CLASSES - 1}")
    if not np.all(np.isfinite(images)) or images.min() < 0 or images.max() > 1:
        raise DataError(f"{what}: images must be finite and lie in [0, 1]")
    return images.astype(np.float32, copy=False), labels.astype(np.int64, copy=False)


# ---------------------------------------------------------------------------------------- test splits
def full_data_available(data_dir=None) -> bool:
    """True when the data folder holds the MNIST and Fashion-MNIST test files (nothing downloaded)."""
    return has_files("mnist", "test", data_dir) and has_files("fashion", "test", data_dir)


def _full_raw(name: str, data_dir, generate: bool, progress: bool, ambiguous_size: int | None,
              ambiguous_seed: int):
    folder = resolve_data_dir(data_dir)
    if name == "mnist":
        x, y = load_mnist("test", data_dir)
        return x, y, f"MNIST test ({folder / 'mnist'})"
    if name == "ood":
        x, y = load_fashion("test", data_dir)
        return x, y, f"Fashion-MNIST test ({folder / 'fashion-mnist'})"
    images, labels = load_ambiguous_checked(data_dir, "test", seed=ambiguous_seed, size=ambiguous_size,
                                            generate=generate, progress=progress)
    rows, y = ambiguous_pairs(labels)
    return images[rows], y, f"Ambiguous-MNIST test, distinct (image, label) pairs of {images.shape[0]} images"


def _take(x: np.ndarray, y: np.ndarray, limit: int | None, seed: int, name: str):
    if limit is None or limit >= y.shape[0]:
        return x, y
    if limit < 1:
        raise ConfigError(f"limit must be >= 1, got {limit}", key="limit")
    idx = np.sort(generator(derive_key(seed, "dirty-limit", name)).permutation(y.shape[0])[:limit])
    return x[idx], y[idx]


def load_test_split(name: str, data_dir: str | os.PathLike | None = None, normalization: str = "mnist",
                    seed: int = 0, embedded: bool | None = None, limit: int | None = None,
                    generate: bool = True, progress: bool = True, ambiguous_size: int | None = None,
                    ambiguous_seed: int = 0) -> Split:
    """One Dirty-MNIST test split ('mnist' | 'ambiguous' | 'ood'), normalised.

    embedded=None: full data when the data folder holds MNIST and Fashion-MNIST (Ambiguous-MNIST is
    loaded or generated, `generate`), else the embedded subset, whose `source` then says why; a data folder
    the user named (`data_dir` or $BAYESIM_DATA) always gives full data, as False does: a folder that lacks
    the files is an error listing them (after a download attempt), never a silent fallback to the subset.
    True forces the subset; False forces full data (downloading what is missing). `limit` keeps a random
    subset of that many rows drawn with `seed`. `ambiguous_seed` and `ambiguous_size` (images per split;
    None = the official files or the full generated set) name the Ambiguous-MNIST set: the data set stays
    fixed whatever the experiment's seed.
    """
    if name not in SPLITS:
        raise ConfigError(f"unknown split {name!r}; allowed: {', '.join(SPLITS)}", key="split")
    mean, std = stats_for(name, normalization)
    use_embedded = embedded is True
    why = ""
    if not use_embedded:
        check_named_folder(data_dir)
    if embedded is None:
        if name == "ambiguous" and not ambiguous_available():
            use_embedded, why = True, "the Ambiguous-MNIST module is not installed"
        elif not data_dir_named(data_dir) and not full_data_available(data_dir):
            use_embedded = True
            why = (f"no MNIST and Fashion-MNIST test files in the default data folder {resolve_data_dir(None)}; "
                   "`bayesim data prepare` fetches them, or name a folder that holds them (--data-dir, data.dir "
                   "in a run config, or $BAYESIM_DATA)")
    if use_embedded:
        from bayesim.data.embedded import embedded_split

        x, y, source = embedded_split(name)
    else:
        x, y, source = _full_raw(name, data_dir, generate, progress, ambiguous_size, ambiguous_seed)
    if y.shape[0] == 0:
        raise DataError(f"{name} split is empty ({source})")
    n_all = y.shape[0]
    x, y = _take(x, y, limit, seed, name)
    if y.shape[0] < n_all:
        source += f"; seeded {y.shape[0]}-row limit (seed {seed})"
    if why:
        source += _BECAUSE + why  # last: subset_reason reads to the end
    y = np.ascontiguousarray(y, dtype=np.int64)
    return Split(name=name, x=normalize(x, mean, std), y=y, subset=use_embedded, source=source)


_BECAUSE = "; used because "


def subset_reason(sources) -> str:
    """Why the embedded subset replaced the full splits, from the splits' `source` texts ("" when it was asked
    for, or not used)."""
    for s in sources:
        if _BECAUSE in (s or ""):
            return s.split(_BECAUSE, 1)[1]
    return ""


def check_named_folder(data_dir) -> Path:
    """The data folder (see bayesim.paths.data_dir); one the user named (argument or $BAYESIM_DATA) must
    exist: a mistyped path would otherwise fall back to the embedded subset without a word. The default
    cache folder may be missing."""
    folder = resolve_data_dir(data_dir)
    if data_dir_named(data_dir) and not folder.is_dir():
        how = "is a file, not a folder" if folder.exists() else "does not exist"
        src = "the data folder" if data_dir else "$BAYESIM_DATA"
        raise DataError(f"{folder}: {src} {how}; name an existing folder (or leave it out to use the embedded "
                        "test subset)")
    return folder


def load_test_splits(data_dir: str | os.PathLike | None = None, normalization: str = "mnist", seed: int = 0,
                     embedded: bool | None = None, limit: int | None = None, generate: bool = True,
                     progress: bool = True, ambiguous_size: int | None = None,
                     ambiguous_seed: int = 0, names=SPLITS) -> dict[str, Split]:
    """The test splits `names` (default all three: 'mnist', 'ambiguous', 'ood'), keyed by name (see
    `load_test_split`); a split not asked for is not loaded (nor Ambiguous-MNIST generated for it)."""
    return {n: load_test_split(n, data_dir, normalization, seed, embedded, limit, generate, progress,
                               ambiguous_size, ambiguous_seed)
            for n in names}


# ---------------------------------------------------------------------------------------- training set
@nb.njit(parallel=True, cache=True)
def _add_noise(flat, key, std, table):
    for i in nb.prange(flat.size):
        flat[i] += std * normal(key, i, table)


def add_noise(x: np.ndarray, seed: int, noise_std: float) -> None:
    """Add N(0, noise_std^2) in place, a pure function of (seed, element index)."""
    if noise_std < 0 or not np.isfinite(noise_std):
        raise ConfigError(f"noise_std must be finite and >= 0, got {noise_std}", key="noise_std")
    if noise_std == 0 or x.size == 0:
        return
    _add_noise(x.reshape(-1), np.uint64(derive_key(seed, "dirty-mnist-train-noise")), np.float32(noise_std),
               NORMAL_TABLE)


def load_train(data_dir: str | os.PathLike | None = None, seed: int = 0, noise_std: float = 0.05,
               ambiguous: bool = True, generate: bool = True, progress: bool = True,
               ambiguous_size: int | None = None, ambiguous_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Dirty-MNIST training set: x float32 [N,1,28,28] (MNIST-normalised + noise), y int64 [N].

    MNIST train (60,000 rows) followed, when `ambiguous`, by Ambiguous-MNIST train with one row per
    (image, label) sample (K rows per image). Noise of std `noise_std` is added once with `seed`;
    `ambiguous_seed` / `ambiguous_size` name the Ambiguous-MNIST set (see `load_test_split`).
    """
    xm, ym = load_mnist("train", data_dir)
    images = labels = None
    if ambiguous:
        images, labels = load_ambiguous_checked(data_dir, "train", seed=ambiguous_seed, size=ambiguous_size,
                                                generate=generate, progress=progress)
    n_m = xm.shape[0]
    n = n_m + (labels.size if labels is not None else 0)
    x = np.empty((n, 1, 28, 28), dtype=np.float32)
    x[:n_m] = normalize(xm, MNIST_MEAN, MNIST_STD)
    y = np.empty(n, dtype=np.int64)
    y[:n_m] = ym
    if labels is not None:
        m, k = labels.shape
        # one row per (image, label) sample, written by broadcasting (no repeated temporary)
        x[n_m:].reshape(m, k, 1, 28, 28)[:] = normalize(images, MNIST_MEAN, MNIST_STD)[:, None]
        y[n_m:] = labels.reshape(-1)
    add_noise(x, seed, noise_std)
    return x, y
