"""MNIST and Fashion-MNIST: find the IDX files, download missing ones, decode and cache them.

Files are looked up as `<data_dir>/mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]` (same under
`fashion-mnist/`), then in `cache_dir()/data`. Missing files are downloaded from the public mirrors
(short timeout, MD5 of the uncompressed content checked) into the data folder when it is writable,
else into the cache; when that fails, one `DataError` lists every missing file and where to put it.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import os
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from bayesim.errors import DataError
from bayesim.paths import cache_dir, data_dir as resolve_data_dir, is_writable
from bayesim.data.idx import read_bytes, read_pair

SPLIT_PREFIX = {"train": "train", "test": "t10k"}
DATASETS = {"mnist": "mnist", "fashion": "fashion-mnist"}  # dataset -> sub-folder

#: MD5 of the *uncompressed* IDX files (upstream values).
MD5 = {
    ("mnist", "train-images-idx3-ubyte"): "6bbc9ace898e44ae57da46a324031adb",
    ("mnist", "train-labels-idx1-ubyte"): "a25bea736e30d166cdddb491f175f624",
    ("mnist", "t10k-images-idx3-ubyte"): "2646ac647ad5339dbf082846283269ea",
    ("mnist", "t10k-labels-idx1-ubyte"): "27ae3e4e09519cfbb04c329615203637",
    ("fashion", "train-images-idx3-ubyte"): "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    ("fashion", "train-labels-idx1-ubyte"): "9018921c3c673c538a1fc5bad174d6f9",
    ("fashion", "t10k-images-idx3-ubyte"): "8181f5470baa50b63fa0f6fddb340f0a",
    ("fashion", "t10k-labels-idx1-ubyte"): "15d484375f8d13e6eb1aabb0c3f46965",
}

MIRRORS = {
    "mnist": ["https://ossci-datasets.s3.amazonaws.com/mnist/",
              "https://storage.googleapis.com/cvdf-datasets/mnist/"],
    "fashion": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
}
DOWNLOAD_TIMEOUT_S = 5.0


def file_names(split: str) -> tuple[str, str]:
    """(images, labels) base names (without .gz) of a split."""
    if split not in SPLIT_PREFIX:
        raise DataError(f"unknown split {split!r}; allowed: 'train', 'test'")
    p = SPLIT_PREFIX[split]
    return f"{p}-images-idx3-ubyte", f"{p}-labels-idx1-ubyte"


def _search_dirs(folder: Path) -> list[Path]:
    dirs = [folder]
    cache = cache_dir() / "data"
    if cache.resolve() != folder.resolve():
        dirs.append(cache)
    return dirs


def find_file(dataset: str, base: str, folder: Path) -> Path | None:
    """The existing file for `base` (gz preferred, else raw) in the data folder or the cache, or None. A named
    pipe or other special file in its place is a DataError (reading it would block, and calling it missing would
    send the user to download what is there)."""
    from bayesim._io import not_regular

    sub = DATASETS[dataset]
    for d in _search_dirs(folder):
        for name in (base + ".gz", base):
            p = d / sub / name
            if p.is_file():
                return p
            why = not_regular(p)
            if why:
                raise DataError(f"{p}: {why}; expected the {DATASETS[dataset]} IDX file (gzip or raw)")
    return None


def prepare_command(data_dir: str | os.PathLike | None = None, seed: int = 0, size: int | None = None) -> str:
    """The `bayesim data prepare` command that fetches / generates the data of `data_dir`: with `--data-dir D`
    unless a bare command resolves to the same folder ($BAYESIM_DATA or the cache), and with the Ambiguous-MNIST
    `--size` / `--seed` when they are not the defaults (size None: the full set)."""
    import shlex

    cmd = "bayesim data prepare"
    if data_dir is not None:
        named = Path(data_dir).expanduser()
        if named.absolute() != resolve_data_dir(None).expanduser().absolute():
            cmd += f" --data-dir {shlex.quote(str(data_dir))}"
    return cmd + (f" --size {size}" if size is not None else "") + (f" --seed {seed}" if seed else "")


def has_files(dataset: str, split: str, data_dir: str | os.PathLike | None = None) -> bool:
    """True when both files of the split are present locally (no download attempted)."""
    folder = resolve_data_dir(data_dir)
    return all(find_file(dataset, b, folder) is not None for b in file_names(split))


def md5_uncompressed(path: str | Path) -> str:
    """MD5 hex digest of the file's uncompressed content."""
    return hashlib.md5(read_bytes(path)).hexdigest()


def _fetch(url: str, timeout: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (fixed https/http mirrors)
        return r.read()


def _download(dataset: str, base: str, target_dir: Path) -> Path:
    """Download one file from the mirrors, check its MD5, write it atomically; raises OSError/ValueError."""
    from bayesim._io import write_bytes_atomic

    last: Exception | None = None
    for mirror in MIRRORS[dataset]:
        try:
            blob = _fetch(mirror + base + ".gz", DOWNLOAD_TIMEOUT_S)
            raw = gzip.decompress(blob)
        except (OSError, EOFError, ValueError, zlib.error) as e:  # no network, 404, timeout, bad gzip: next mirror
            last = e
            continue
        digest = hashlib.md5(raw).hexdigest()
        if digest != MD5[(dataset, base)]:
            last = ValueError(f"MD5 mismatch for {mirror}{base}.gz: {digest}")
            continue
        out = target_dir / DATASETS[dataset] / (base + ".gz")
        write_bytes_atomic(out, blob)
        return out
    raise last if last is not None else OSError("no mirror")


def ensure_all(pairs, data_dir: str | os.PathLike | None = None) -> dict[tuple[str, str], Path]:
    """Paths of the files of several (dataset, split) pairs, downloading missing ones.

    Returns {(dataset, base name): path}. When some cannot be downloaded, raises ONE `DataError`
    listing every missing file and the folder to put it in (after the first network failure no
    further download is tried, so an offline machine fails fast).
    """
    folder = resolve_data_dir(data_dir)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{folder}: not a folder; expected the data folder (mnist/ and fashion-mnist/ IDX files)")
    found: dict[tuple[str, str], Path | None] = {}
    for dataset, split in pairs:
        if dataset not in DATASETS:
            raise DataError(f"unknown dataset {dataset!r}; allowed: {', '.join(DATASETS)}")
        for b in file_names(split):
            found[(dataset, b)] = find_file(dataset, b, folder)
    error: Exception | None = None
    for (dataset, b), path in found.items():
        if path is not None or error is not None:
            continue
        target = folder if is_writable(folder / DATASETS[dataset]) else cache_dir() / "data"
        if not is_writable(target / DATASETS[dataset]):  # before a download that could not be saved
            missing = [f"{DATASETS[d]}/{n}.gz" for (d, n), q in found.items() if q is None]
            raise DataError(
                f"data files missing in {folder}: {', '.join(missing)}; they cannot be downloaded: neither the data "
                f"folder {folder} nor the user cache {cache_dir() / 'data'} is writable (permission denied); "
                f"put the files into {folder}/, or choose a writable cache with $BAYESIM_CACHE (or a writable data "
                "folder with --data-dir, data.dir or $BAYESIM_DATA)")
        try:
            found[(dataset, b)] = _download(dataset, b, target)
        except Exception as e:  # network down, no mirror, bad MD5: reported below
            error = e
    still = [f"{DATASETS[d]}/{b}.gz" for (d, b), p in found.items() if p is None]
    if still:
        raise DataError(
            f"data files missing in {folder}: {', '.join(still)}; download failed ({_short(error)}); "
            f"put them into {folder}/ with those sub-folder names, or name a folder holding mnist/ and "
            f"fashion-mnist/: --data-dir (train, evaluate, data), data.dir (a run config) or BAYESIM_DATA")
    return found  # type: ignore[return-value]


def ensure_files(dataset: str, split: str, data_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Paths of the (images, labels) files of a split, downloading missing ones (see `ensure_all`)."""
    found = ensure_all([(dataset, split)], data_dir)
    return tuple(found[(dataset, b)] for b in file_names(split))  # type: ignore[return-value]


def _short(e: Exception | None) -> str:
    if e is None:
        return "unknown error"
    reason = getattr(e, "reason", None)
    return f"{type(e).__name__}: {reason if reason is not None else e}"


def _content_md5(a: np.ndarray) -> str:
    """MD5 of the uncompressed IDX file that decodes to the uint8 array `a` (header rebuilt from its shape)."""
    magic = 0x0800 | a.ndim  # unsigned-byte data, a.ndim dimensions
    h = hashlib.md5(np.array([magic, *a.shape], dtype=">u4").tobytes())
    h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()


#: shape of each official file's array (MNIST and Fashion-MNIST alike)
SHAPES = {"train-images-idx3-ubyte": (60000, 28, 28), "train-labels-idx1-ubyte": (60000,),
          "t10k-images-idx3-ubyte": (10000, 28, 28), "t10k-labels-idx1-ubyte": (10000,)}


def _check_official(dataset: str, path: Path, a: np.ndarray) -> None:
    """Verify a standard file against the MD5 of the official content (computed on the array already read:
    ~13 ms for a test file, ~77 ms for a training images file, once per process and file).

    A file of the official shape whose content differs (a flipped pixel or label) is corrupt: a DataError naming
    it. A file of another shape (a synthetic or cut-down set), or another official file in its place (Fashion-MNIST
    under mnist/), still loads, with one warning: its numbers are not the published data set's."""
    import warnings

    base = path.name[:-3] if path.name.endswith(".gz") else path.name
    want = MD5.get((dataset, base))
    if want is None:
        return
    got = _content_md5(a)
    if got == want:
        return
    if a.shape == SHAPES.get(base) and got not in MD5.values():
        raise DataError(f"{path}: corrupt: it has the official {DATASETS[dataset]} file's size "
                        f"({' x '.join(map(str, a.shape))}) but the MD5 of its content is {got}, not {want}; "
                        f"replace it with a good copy (delete it and run `{prepare_command(path.parent.parent)}`)")
    warnings.warn(f"{path} is not the official {DATASETS[dataset]} file (MD5 of its content differs from "
                  f"{want}): results are not comparable with published numbers", UserWarning, stacklevel=5)


@functools.lru_cache(maxsize=8)
def _load_cached(dataset: str, images: Path, labels: Path, key: tuple) -> tuple[np.ndarray, np.ndarray]:
    x, y = read_pair(images, labels)
    _check_official(dataset, images, x)
    _check_official(dataset, labels, y)
    y64 = y.astype(np.int64)
    y64.flags.writeable = False
    return x, y64


def _load(dataset: str, split: str, data_dir) -> tuple[np.ndarray, np.ndarray]:
    images, labels = ensure_files(dataset, split, data_dir)
    images, labels = images.resolve(), labels.resolve()
    st_i, st_l = images.stat(), labels.stat()
    key = (st_i.st_size, st_i.st_mtime_ns, st_l.st_size, st_l.st_mtime_ns)
    return _load_cached(dataset, images, labels, key)


def load_mnist(split: str, data_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """MNIST `split` ('train' 60,000 | 'test' 10,000): read-only images uint8 [N,28,28], labels int64 [N]."""
    return _load("mnist", split, data_dir)


def load_fashion(split: str, data_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST `split`: read-only images uint8 [N,28,28], labels int64 [N]."""
    return _load("fashion", split, data_dir)
