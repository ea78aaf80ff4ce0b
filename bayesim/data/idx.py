"""IDX file reader (the MNIST / Fashion-MNIST format), gzip or raw.

An IDX file is a 4-byte magic (0x00 0x00, a type code, the number of dimensions), one big-endian
uint32 per dimension, then the data. MNIST uses type 0x08 (uint8): labels are 0x00000801 (1-D),
images 0x00000803 (N x rows x cols). Every defect (bad gzip, truncated data, wrong magic, a count
that does not match) raises `DataError` naming the file; nothing is reshaped blindly.
"""
from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from bayesim.errors import DataError

LABELS_MAGIC = 0x00000801
IMAGES_MAGIC = 0x00000803
_GZIP_MAGIC = b"\x1f\x8b"


def read_bytes(path: str | Path) -> bytes:
    """The file's uncompressed content (gunzipped when it starts with the gzip magic)."""
    from bayesim._io import not_regular

    path = Path(path)
    why = not_regular(path)
    if why:  # a named pipe would block the read
        raise DataError(f"{path}: {why}; expected an IDX file (gzip or raw)")
    if path.is_dir():
        raise DataError(f"{path}: is a folder; expected an IDX file (gzip or raw)")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
        raise DataError(f"{path}: corrupt or truncated gzip data ({e}); delete it and download it again") from None


def parse_idx(data: bytes, name: str, expect_magic: int | None = None) -> np.ndarray:
    """Decode IDX bytes into a read-only uint8 array; `name` is used in error messages."""
    if len(data) < 4:
        raise DataError(f"{name}: too short for an IDX file ({len(data)} bytes)")
    magic = int.from_bytes(data[:4], "big")
    if data[0] != 0 or data[1] != 0 or data[2] != 0x08 or data[3] == 0:
        raise DataError(
            f"{name}: not a uint8 IDX file (magic 0x{magic:08x}; expected 0x{LABELS_MAGIC:08x} for labels "
            f"or 0x{IMAGES_MAGIC:08x} for images)")
    if expect_magic is not None and magic != expect_magic:
        kind = "labels" if expect_magic == LABELS_MAGIC else "images"
        raise DataError(f"{name}: wrong IDX magic 0x{magic:08x}; expected 0x{expect_magic:08x} ({kind})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name}: truncated IDX header ({len(data)} bytes, need {header} for {ndim} dimensions)")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = math.prod(dims)  # Python ints: a product of big dimensions must not wrap around
    have = len(data) - header
    if have != expected:
        what = "truncated" if have < expected else "has trailing bytes"
        raise DataError(
            f"{name}: {what}: header says {' x '.join(map(str, dims))} = {expected} values, "
            f"file holds {have}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_idx(path: str | Path, expect_magic: int | None = None) -> np.ndarray:
    """Read an IDX file (gzip or raw) into a read-only uint8 array."""
    return parse_idx(read_bytes(path), str(path), expect_magic)


def read_images(path: str | Path, rows: int | None = 28, cols: int | None = 28) -> np.ndarray:
    """uint8 images [N, rows, cols] from an IDX3 file; checks the image size when given."""
    x = read_idx(path, IMAGES_MAGIC)
    if (rows is not None and x.shape[1] != rows) or (cols is not None and x.shape[2] != cols):
        raise DataError(f"{path}: images are {x.shape[1]}x{x.shape[2]}, expected {rows}x{cols}")
    return x


def read_labels(path: str | Path, n_classes: int | None = 10) -> np.ndarray:
    """uint8 labels [N] from an IDX1 file; checks they lie in [0, n_classes)."""
    y = read_idx(path, LABELS_MAGIC)
    if n_classes is not None and y.size and int(y.max()) >= n_classes:
        raise DataError(f"{path}: label {int(y.max())} out of range 0..{n_classes - 1}")
    return y


def read_pair(images_path: str | Path, labels_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 28, 28] and labels uint8 [N]; the two counts must agree."""
    x = read_images(images_path)
    y = read_labels(labels_path)
    if x.shape[0] != y.shape[0]:
        raise DataError(
            f"{images_path} holds {x.shape[0]} images but {labels_path} holds {y.shape[0]} labels")
    return x, y
