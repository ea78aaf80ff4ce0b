"""IDX reader and MNIST / Fashion-MNIST sources: round trips, every corruption, download fallback, real data."""
from __future__ import annotations

import gzip
import hashlib
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from bayesim.data import sources
from bayesim.data.idx import read_idx, read_images, read_labels, read_pair
from bayesim.data.sources import load_fashion, load_mnist
from bayesim.errors import BayesimError, DataError

REPO = Path(__file__).resolve().parents[1]


def idx_bytes(arr: np.ndarray, magic: int | None = None) -> bytes:
    arr = np.asarray(arr, dtype=np.uint8)
    magic = magic if magic is not None else 0x00000800 | arr.ndim
    return struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write(path, data: bytes, gz: bool):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def fake_mnist_folder(root, n_train=30, n_test=20, sub="mnist", seed=1):
    """A data folder with small synthetic IDX files for `sub`; returns the arrays written."""
    rng = np.random.default_rng(seed)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        write(root / sub / f"{prefix}-images-idx3-ubyte.gz", idx_bytes(x), gz=True)
        write(root / sub / f"{prefix}-labels-idx1-ubyte.gz", idx_bytes(y), gz=True)
        out[prefix] = (x, y)
    return out


# ------------------------------------------------------------------------------------------- reader
@pytest.mark.parametrize("gz", [True, False])
def test_round_trip_images_and_labels(tmp_path, gz):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    y = np.array([0, 9, 3, 3, 1, 2, 8], dtype=np.uint8)
    pi = write(tmp_path / "imgs", idx_bytes(x), gz)
    pl = write(tmp_path / "labs", idx_bytes(y), gz)
    xi, yl = read_pair(pi, pl)
    assert xi.dtype == np.uint8 and yl.dtype == np.uint8
    assert xi.shape == (7, 28, 28) and np.array_equal(xi, x)
    assert np.array_equal(yl, y)
    assert np.array_equal(read_idx(pi), x)  # generic reader, no magic expectation


def test_magic_constants():
    assert idx_bytes(np.zeros(3))[:4] == b"\x00\x00\x08\x01"
    assert idx_bytes(np.zeros((1, 28, 28)))[:4] == b"\x00\x00\x08\x03"


def _expect(path, match, fn=read_idx, *args):
    with pytest.raises(DataError) as ei:
        fn(path, *args)
    msg = str(ei.value)
    assert path.name in msg, msg
    assert match in msg, msg
    assert isinstance(ei.value, BayesimError)
    return msg


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_data(tmp_path, gz):
    data = idx_bytes(np.ones((5, 28, 28)))[:-100]
    msg = _expect(write(tmp_path / f"trunc{gz}", data, gz), "truncated")
    assert "5 x 28 x 28 = 3920" in msg and "3820" in msg


def test_header_whose_size_overflows_64_bits(tmp_path):
    """2^31 x 2^31 x 4 = 2^64 values wrapped to 0 in int64 and matched an empty body (then a reshape error)."""
    data = struct.pack(">I3I", 0x00000803, 1 << 31, 1 << 31, 4)
    msg = _expect(write(tmp_path / "wrap", data, False), "truncated")
    assert "= 18446744073709551616 values, file holds 0" in msg


def test_trailing_bytes(tmp_path):
    _expect(write(tmp_path / "long", idx_bytes(np.ones(4)) + b"\x00\x01", False), "trailing bytes")


def test_truncated_header(tmp_path):
    _expect(write(tmp_path / "hdr", idx_bytes(np.ones((2, 28, 28)))[:9], False), "truncated IDX header")
    _expect(write(tmp_path / "tiny", b"\x00\x00", False), "too short")


def test_bad_gzip(tmp_path):
    _expect(write(tmp_path / "bad.gz", b"\x1f\x8b" + b"not really gzip data at all", False), "gzip")
    blob = gzip.compress(idx_bytes(np.arange(100) % 10))
    _expect(write(tmp_path / "cut.gz", blob[: len(blob) // 2], False), "gzip")


def test_wrong_magic(tmp_path):
    labels = write(tmp_path / "labels.gz", idx_bytes(np.arange(10) % 10), True)
    images = write(tmp_path / "images.gz", idx_bytes(np.zeros((10, 28, 28))), True)
    _expect(labels, "wrong IDX magic 0x00000801", read_images)
    _expect(images, "wrong IDX magic 0x00000803", read_labels)
    _expect(write(tmp_path / "junk", b"\x12\x34\x56\x78" + bytes(64), False), "not a uint8 IDX file")
    _expect(write(tmp_path / "floats", b"\x00\x00\x0d\x01" + struct.pack(">I", 2) + bytes(8), False),
            "not a uint8 IDX file")


def test_count_and_shape_mismatch(tmp_path):
    images = write(tmp_path / "im.gz", idx_bytes(np.zeros((10, 28, 28))), True)
    labels = write(tmp_path / "lb.gz", idx_bytes(np.zeros(9)), True)
    with pytest.raises(DataError) as ei:
        read_pair(images, labels)
    msg = str(ei.value)
    assert "im.gz" in msg and "lb.gz" in msg and "10 images" in msg and "9 labels" in msg
    _expect(write(tmp_path / "small.gz", idx_bytes(np.zeros((3, 27, 28))), True), "27x28", read_images)
    _expect(write(tmp_path / "lab11", idx_bytes(np.array([1, 11])), False), "label 11 out of range", read_labels)


def test_missing_file(tmp_path):
    _expect(tmp_path / "nothere.gz", "not found")


# ------------------------------------------------------------------------------------------- sources
def test_load_from_folder_with_files(tmp_path):
    arrays = fake_mnist_folder(tmp_path)
    x, y = load_mnist("test", tmp_path)
    assert np.array_equal(x, arrays["t10k"][0]) and y.dtype == np.int64
    assert np.array_equal(y, arrays["t10k"][1])
    assert not x.flags.writeable and not y.flags.writeable  # shared cached arrays are read-only
    with pytest.raises(DataError, match="unknown split 'val'"):
        load_mnist("val", tmp_path)


def test_content_other_than_the_official_file_warns(tmp_path, data_dir):
    """Valid IDX files with other content load, with one warning each naming the file (synthetic data here;
    the official Fashion-MNIST test files copied under mnist/ too); the official files load silently."""
    fake_mnist_folder(tmp_path)
    with pytest.warns(UserWarning, match=r"t10k-images-idx3-ubyte.gz is not the official mnist file") as rec:
        load_mnist("test", tmp_path)
    assert len(rec) == 2 and "t10k-labels-idx1-ubyte.gz" in str(rec[1].message)
    swapped = tmp_path / "swapped"
    for base in sources.file_names("test"):
        src = sources.find_file("fashion", base, data_dir)
        write(swapped / "mnist" / src.name, src.read_bytes(), gz=False)
    with pytest.warns(UserWarning, match=r"swapped/mnist/t10k-images-idx3-ubyte.gz is not the official mnist"):
        load_mnist("test", swapped)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_mnist("test", data_dir)
        load_fashion("test", data_dir)


def test_an_official_file_with_one_changed_byte_is_corrupt(tmp_path, data_dir, monkeypatch, capsys):
    """A flipped pixel or label in a file of the official size loaded with a warning only (exit 0): it is a
    DataError naming the file (exit 2 at the command line). A file of another size, or another official file in
    its place, still loads with the warning (the test above)."""
    from bayesim.cli import main

    for base, offset in (("t10k-images-idx3-ubyte", 16 + 5000), ("t10k-labels-idx1-ubyte", 8 + 17)):
        d = tmp_path / base
        for b in sources.file_names("test"):
            raw = gzip.decompress(sources.find_file("mnist", b, data_dir).read_bytes())
            if b == base:
                raw = bytearray(raw)
                raw[offset] ^= 0x01
            write(d / "mnist" / f"{b}.gz", bytes(raw), gz=True)
        bad = d / "mnist" / f"{base}.gz"
        with pytest.raises(DataError, match=rf"{bad}: corrupt: it has the official mnist file's size \(10000"
                                            rf".*\) but the MD5 of its content is [0-9a-f]{{32}}, not "
                                            rf"{sources.MD5[('mnist', base)]}; replace it with a good copy"):
            load_mnist("test", d)
    monkeypatch.setenv("BAYESIM_DATA", str(tmp_path / base))
    assert main(["evaluate", "--model", str(REPO / "bayesim" / "resources" / "lenet5_default.safetensors"),
                 "--limit", "10", "--samples", "1", "--out", str(tmp_path / "ev")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"bayesim: error: {bad}: corrupt"), err
    assert not (tmp_path / "ev").exists()


def test_a_named_pipe_in_place_of_a_data_file_is_named(tmp_path, monkeypatch):
    """A FIFO where an IDX file belongs was called missing (and a download tried); reading it would block."""
    import os

    monkeypatch.setattr(sources, "_fetch", lambda url, timeout: pytest.fail("no download for a file that is there"))
    fake_mnist_folder(tmp_path)
    fifo = tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz"
    fifo.unlink()
    os.mkfifo(fifo)
    with pytest.raises(DataError, match=rf"{fifo}: is not a regular file \(a named pipe\); expected the mnist IDX"):
        load_mnist("test", tmp_path)
    with pytest.raises(DataError, match=rf"{fifo}: is not a regular file \(a named pipe\); expected an IDX file"):
        read_idx(fifo)


def test_raw_uncompressed_files_accepted(tmp_path):
    x = np.full((3, 28, 28), 7, np.uint8)
    write(tmp_path / "fashion-mnist" / "t10k-images-idx3-ubyte", idx_bytes(x), False)
    write(tmp_path / "fashion-mnist" / "t10k-labels-idx1-ubyte", idx_bytes(np.array([1, 2, 3])), False)
    xf, yf = load_fashion("test", tmp_path)
    assert np.array_equal(xf, x) and yf.tolist() == [1, 2, 3]


def test_missing_files_one_error_listing_them(tmp_path, monkeypatch):
    calls = []

    def offline(url, timeout):
        calls.append(url)
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(sources, "_fetch", offline)
    (tmp_path / "mnist").mkdir()
    write(tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz", idx_bytes(np.zeros(2)), True)
    with pytest.raises(DataError) as ei:
        load_mnist("test", tmp_path)
    msg = str(ei.value)
    assert "mnist/t10k-images-idx3-ubyte.gz" in msg
    assert "t10k-labels" not in msg  # present files are not listed
    assert str(tmp_path) in msg and "offline" in msg
    assert calls and calls[0].endswith("t10k-images-idx3-ubyte.gz")


def test_a_data_folder_that_is_a_file_is_named_before_any_download(tmp_path, monkeypatch, capsys):
    from bayesim.bnn.checkpoint import read_metadata
    from bayesim.cli import main

    monkeypatch.setattr(sources, "_fetch", lambda url, timeout: pytest.fail("no download for a file"))
    f = tmp_path / "a_file"
    f.write_text("x")
    with pytest.raises(DataError, match=r"a_file: not a folder; expected the data folder"):
        load_mnist("test", f)
    assert main(["data", "prepare", "--data-dir", str(f)]) == 2
    assert "a_file: not a folder" in capsys.readouterr().err
    with pytest.raises(BayesimError, match=r": is a folder, not a checkpoint file"):
        read_metadata(tmp_path)


def test_failed_atomic_write_leaves_no_folders(tmp_path):
    from bayesim._io import atomic_path

    target = tmp_path / "a" / "b" / "f.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole" and sorted(p.name for p in target.parent.iterdir()) == ["f.bin"]


def test_unreachable_mirror_fails_fast(tmp_path, monkeypatch):
    import time

    monkeypatch.setattr(sources, "MIRRORS", {"mnist": ["http://bayesim-test.invalid/"], "fashion": []})
    t0 = time.perf_counter()
    with pytest.raises(DataError) as ei:
        sources.ensure_all([("mnist", "train"), ("fashion", "test")], tmp_path)
    assert time.perf_counter() - t0 < 15
    msg = str(ei.value)
    for f in ["mnist/train-images-idx3-ubyte.gz", "mnist/train-labels-idx1-ubyte.gz",
              "fashion-mnist/t10k-images-idx3-ubyte.gz", "fashion-mnist/t10k-labels-idx1-ubyte.gz"]:
        assert f in msg
    assert "\n" not in msg


def test_download_verifies_md5_and_writes_into_data_folder(tmp_path, monkeypatch):
    labels = idx_bytes(np.array([4, 2, 0], dtype=np.uint8))
    images = idx_bytes(np.zeros((3, 28, 28), dtype=np.uint8))
    content = {"t10k-labels-idx1-ubyte": labels, "t10k-images-idx3-ubyte": images}
    md5 = dict(sources.MD5)
    for base, raw in content.items():
        md5[("mnist", base)] = hashlib.md5(raw).hexdigest()
    monkeypatch.setattr(sources, "MD5", md5)
    monkeypatch.setattr(sources, "_fetch", lambda url, timeout: gzip.compress(content[url.rsplit("/", 1)[1][:-3]]))
    x, y = load_mnist("test", tmp_path)
    assert y.tolist() == [4, 2, 0] and x.shape == (3, 28, 28)
    assert (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").is_file()
    # a mirror serving different bytes is refused (MD5 mismatch), nothing is written
    md5[("fashion", "t10k-labels-idx1-ubyte")] = "0" * 32
    monkeypatch.setattr(sources, "_fetch", lambda url, timeout: gzip.compress(labels))
    with pytest.raises(DataError, match="MD5 mismatch"):
        load_fashion("test", tmp_path)
    assert not (tmp_path / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").exists()


# ------------------------------------------------------------------------------------------- real data
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def test_real_mnist(data_dir):
    x, y = load_mnist("train", data_dir)
    assert x.shape == (60000, 28, 28) and x.dtype == np.uint8
    assert np.bincount(y).tolist() == MNIST_TRAIN_COUNTS
    xt, yt = load_mnist("test", data_dir)
    assert xt.shape == (10000, 28, 28) and yt.shape == (10000,)
    assert np.bincount(yt, minlength=10).sum() == 10000


def test_real_fashion(data_dir):
    x, y = load_fashion("test", data_dir)
    assert x.shape == (10000, 28, 28)
    assert np.bincount(y).tolist() == [1000] * 10


@pytest.mark.parametrize("ds,base", [("mnist", "t10k-images-idx3-ubyte"), ("mnist", "t10k-labels-idx1-ubyte"),
                                     ("fashion", "t10k-images-idx3-ubyte"), ("fashion", "t10k-labels-idx1-ubyte")])
def test_real_md5(data_dir, ds, base):
    path = sources.find_file(ds, base, data_dir)
    assert sources.md5_uncompressed(path) == sources.MD5[(ds, base)]


def test_real_normalised_mnist_test_moments(data_dir):
    from bayesim.data import MNIST_MEAN, MNIST_STD
    from bayesim.data.dirty import normalize

    x, _ = load_mnist("test", data_dir)
    z = normalize(x, MNIST_MEAN, MNIST_STD)
    assert z.shape == (10000, 1, 28, 28) and z.dtype == np.float32
    assert abs(float(z.mean())) < 0.02 and abs(float(z.std()) - 1) < 0.02
