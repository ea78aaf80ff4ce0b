"""Dirty-MNIST assembly: normalisation, ambiguous pair de-duplication, training noise, embedded subset."""
from __future__ import annotations

import gzip
import importlib.util
import struct
import sys
import types

import numpy as np
import pytest

from bayesim.data import (FASHION_MEAN, FASHION_STD, MNIST_MEAN, MNIST_STD, Split, load_test_split,
                          load_test_splits, load_train)
from bayesim.data import dirty, embedded
from bayesim.errors import ConfigError, DataError

# Fake Ambiguous-MNIST: image i is constant (i+1)/64; labels with known repeats.
FAKE_LABELS = {
    "test": np.array([[1] * 10,                       # one distinct label
                      list(range(10)),                 # ten distinct labels
                      [3, 5, 3, 5, 3, 5, 3, 5, 3, 5],  # two
                      [7, 2, 2, 2, 2, 2, 2, 2, 2, 9]]),  # three: 2, 7, 9
    "train": np.array([[i % 10] * 5 + [(i + 1) % 10] * 5 for i in range(6)]),
}
FAKE_PAIRS = {"test": [(0, 1)] + [(1, k) for k in range(10)] + [(2, 3), (2, 5), (3, 2), (3, 7), (3, 9)]}


def fake_images(n):
    return np.repeat(((np.arange(n) + 1) / 64.0).astype(np.float32)[:, None, None], 28, 1).repeat(28, 2)


@pytest.fixture
def fake_ambiguous(monkeypatch):
    calls = []

    def load_ambiguous(data_dir, split, seed=0, size=None, generate=True, progress=True):
        calls.append(dict(data_dir=data_dir, split=split, seed=seed, size=size, generate=generate))
        labels = FAKE_LABELS[split]
        return fake_images(labels.shape[0]), labels.astype(np.int64)

    mod = types.ModuleType("bayesim.data.ambiguous")
    mod.load_ambiguous = load_ambiguous
    monkeypatch.setitem(sys.modules, "bayesim.data.ambiguous", mod)
    return calls


def write_idx(path, arr):
    arr = np.asarray(arr, np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(struct.pack(">I", 0x800 | arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
                                   + arr.tobytes()))


@pytest.fixture
def small_folder(tmp_path):
    """Synthetic MNIST (train 200, test 50) and Fashion (test 30) folder."""
    rng = np.random.default_rng(3)
    for sub, prefix, n in (("mnist", "train", 200), ("mnist", "t10k", 50), ("fashion-mnist", "t10k", 30)):
        write_idx(tmp_path / sub / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / sub / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return tmp_path


# ------------------------------------------------------------------------------------------- pairs
def test_ambiguous_pairs_dedup_known_repeats():
    rows, labels = dirty.ambiguous_pairs(FAKE_LABELS["test"])
    assert list(zip(rows.tolist(), labels.tolist())) == FAKE_PAIRS["test"]
    assert rows.dtype == np.int64 and labels.dtype == np.int64


def test_ambiguous_test_split_is_distinct_pairs(small_folder, fake_ambiguous):
    s = load_test_split("ambiguous", small_folder, seed=5, ambiguous_seed=4)
    assert isinstance(s, Split) and not s.subset and len(s) == 16
    assert s.y.tolist() == [p[1] for p in FAKE_PAIRS["test"]]
    want_rows = np.array([p[0] for p in FAKE_PAIRS["test"]])
    expect = ((want_rows + 1) / 64.0 - MNIST_MEAN) / MNIST_STD
    assert s.x.shape == (16, 1, 28, 28) and s.x.dtype == np.float32
    np.testing.assert_allclose(s.x[:, 0, 5, 7], expect, atol=1e-6)
    assert fake_ambiguous[-1]["split"] == "test" and fake_ambiguous[-1]["seed"] == 4
    load_test_split("ambiguous", small_folder, seed=5)  # the experiment seed does not pick the data set
    assert fake_ambiguous[-1]["seed"] == 0


@pytest.mark.parametrize("bad,match", [
    ((np.zeros((0, 28, 28), np.float32), np.zeros((0, 10), np.int64)), "empty"),
    ((np.zeros((2, 28, 28), np.float32), np.zeros((3, 10), np.int64)), "labels have shape"),
    ((np.zeros((2, 28, 28), np.float32), np.full((2, 10), 10)), "labels outside"),
    ((np.full((2, 28, 28), 2.0, np.float32), np.zeros((2, 10), np.int64)), "[0, 1]"),
    ((np.zeros((2, 14, 14), np.float32), np.zeros((2, 10), np.int64)), "expected [N, 28, 28]"),
])
def test_bad_ambiguous_data_refused(small_folder, monkeypatch, bad, match):
    mod = types.ModuleType("bayesim.data.ambiguous")
    mod.load_ambiguous = lambda *a, **k: bad
    monkeypatch.setitem(sys.modules, "bayesim.data.ambiguous", mod)
    with pytest.raises(DataError, match=match.replace("[", r"\[").replace("]", r"\]")):
        load_test_split("ambiguous", small_folder)


# ------------------------------------------------------------------------------------------- splits
def test_normalisation_exact_values(small_folder, fake_ambiguous):
    from bayesim.data import load_fashion, load_mnist

    raw_m, _ = load_mnist("test", small_folder)
    raw_f, _ = load_fashion("test", small_folder)
    splits = load_test_splits(small_folder)
    assert set(splits) == {"mnist", "ambiguous", "ood"}
    np.testing.assert_allclose(splits["mnist"].x[:, 0], (raw_m / 255.0 - 0.1307) / 0.3081, atol=2e-6)
    np.testing.assert_allclose(splits["ood"].x[:, 0], (raw_f / 255.0 - 0.1307) / 0.3081, atol=2e-6)
    own = load_test_split("ood", small_folder, normalization="own")
    np.testing.assert_allclose(own.x[:, 0], (raw_f / 255.0 - 0.2860) / 0.3530, atol=2e-6)
    # "own" changes only the OOD split: MNIST and Ambiguous keep MNIST statistics
    np.testing.assert_array_equal(load_test_split("mnist", small_folder, normalization="own").x, splits["mnist"].x)
    with pytest.raises(ConfigError, match="normalization.*allowed: 'mnist', 'own'"):
        load_test_split("ood", small_folder, normalization="fashion")
    with pytest.raises(ConfigError, match="unknown split 'train'"):
        load_test_split("train", small_folder)


def test_limit_is_seeded_subset(small_folder):
    full = load_test_split("mnist", small_folder)
    a = load_test_split("mnist", small_folder, limit=12, seed=1)
    b = load_test_split("mnist", small_folder, limit=12, seed=1)
    c = load_test_split("mnist", small_folder, limit=12, seed=2)
    assert len(a) == 12 and np.array_equal(a.x, b.x) and not np.array_equal(a.x, c.x)
    flat = full.x.reshape(50, -1)
    rows = [int(np.flatnonzero((flat == r).all(1))[0]) for r in a.x.reshape(12, -1)]
    assert rows == sorted(set(rows))  # distinct rows of the full split, in order
    assert a.y.tolist() == full.y[rows].tolist()
    with pytest.raises(ConfigError, match="limit"):
        load_test_split("mnist", small_folder, limit=0)


def test_embedded_used_without_data(tmp_path, monkeypatch):
    """No folder named and none in the default place: the embedded subset, and its source says why."""
    monkeypatch.delenv("BAYESIM_DATA", raising=False)
    monkeypatch.setenv("BAYESIM_CACHE", str(tmp_path / "cache"))
    for name in ("mnist", "ood"):
        s = load_test_split(name, None)
        assert s.subset and "embedded subset" in s.source
        assert dirty.subset_reason([s.source]).startswith(
            f"no MNIST and Fashion-MNIST test files in the default data folder {tmp_path / 'cache' / 'data'}")
        assert len(s) == 1000 and s.class_counts() == [100] * 10
        assert s.x.shape == (1000, 1, 28, 28) and s.x.dtype == np.float32
    assert dirty.subset_reason([load_test_split("mnist", None, embedded=True).source]) == ""  # asked for


def test_embedded_forced_and_from_real_data(data_dir):
    sub = load_test_split("mnist", data_dir, embedded=True)
    full = load_test_split("mnist", data_dir)
    assert sub.subset and not full.subset and len(full) == 10000
    # every embedded image is an MNIST test image with the same label (first 3 checked exactly)
    flat = full.x.reshape(10000, -1)
    for i in range(3):
        j = np.flatnonzero((flat == sub.x[i].reshape(-1)).all(1))
        assert j.size >= 1 and full.y[j[0]] == sub.y[i]


def test_shipped_embedded_file_has_all_splits():
    z = embedded.load_embedded()
    missing = [n for n in ("mnist", "ambiguous", "ood") if f"{n}_x" not in z]
    if missing == ["ambiguous"] and not dirty.ambiguous_available():
        pytest.xfail("embedded Ambiguous-MNIST part needs bayesim.data.ambiguous: rebuild "
                     "with `python -m bayesim.data.embedded --data-dir D`")
    assert not missing
    assert z["ambiguous_x"].shape[0] == embedded.AMBIGUOUS_PAIRS
    assert embedded.RESOURCE.stat().st_size < 3_000_000


def test_build_embedded_with_fake_ambiguous(data_dir, fake_ambiguous, tmp_path, monkeypatch):
    monkeypatch.setattr(embedded, "AMBIGUOUS_PAIRS", 10)
    out = tmp_path / "e.npz"
    meta = embedded.build_embedded(data_dir, out, seed=0, progress=False)
    assert meta["splits"]["ambiguous"] == {"rows": 10, "of": 16, "images": meta["splits"]["ambiguous"]["images"]}
    z = dict(np.load(out, allow_pickle=False))
    assert z["mnist_x"].dtype == np.uint8 and np.bincount(z["mnist_y"]).tolist() == [100] * 10
    assert np.bincount(z["ood_y"]).tolist() == [100] * 10
    # each stored ambiguous pair is a real (image, label) pair of the fake, image rounded to uint8
    img_id = np.rint(z["ambiguous_x"][:, 0, 0] / 255.0 * 64).astype(int) - 1
    assert set(zip(img_id.tolist(), z["ambiguous_y"].tolist())) <= set(FAKE_PAIRS["test"])
    assert len(set(zip(img_id.tolist(), z["ambiguous_y"].tolist()))) == 10
    # whole images are kept together: every image but possibly the last has all its pairs
    per_img = {i: sum(1 for p in FAKE_PAIRS["test"] if p[0] == i) for i in range(4)}
    counts = np.bincount(img_id, minlength=4)
    assert sum(counts[i] == per_img[i] for i in range(4) if counts[i]) >= len(set(img_id.tolist())) - 1
    s, y, src = embedded.embedded_split("ambiguous", out)
    assert s.shape == (10, 28, 28) and "embedded subset: 10 of 16" in src


def test_corrupt_embedded_file(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(DataError, match="bad.npz"):
        embedded.load_embedded(bad)


# ------------------------------------------------------------------------------------------- training set
def test_train_rows_labels_and_noise(small_folder, fake_ambiguous):
    from bayesim.data import load_mnist

    x, y = load_train(small_folder, seed=7)
    n_amb = FAKE_LABELS["train"].size
    assert x.shape == (200 + n_amb, 1, 28, 28) and x.dtype == np.float32 and y.dtype == np.int64
    assert y[:200].tolist() == (np.arange(200) % 10).tolist()
    assert y[200:].tolist() == FAKE_LABELS["train"].reshape(-1).tolist()
    clean = np.concatenate([dirty.normalize(load_mnist("train", small_folder)[0], MNIST_MEAN, MNIST_STD),
                            dirty.normalize(np.repeat(fake_images(6), 10, 0), MNIST_MEAN, MNIST_STD)])
    noise = (x - clean).astype(np.float64)
    # 203,840 values: the std of the sample std is 0.05/sqrt(2n) ~ 8e-5
    assert abs(noise.std() - 0.05) < 5e-4 and abs(noise.mean()) < 5e-4
    # noise differs between the 10 copies of one ambiguous image (drawn per row, once)
    assert not np.array_equal(x[200], x[201])
    x2, y2 = load_train(small_folder, seed=7)
    assert x2.tobytes() == x.tobytes() and np.array_equal(y, y2)
    x3, _ = load_train(small_folder, seed=8)
    assert not np.array_equal(x3, x)
    assert {c["seed"] for c in fake_ambiguous} == {0}  # the training seed changes the noise, not the data set
    x0, _ = load_train(small_folder, seed=7, noise_std=0.0, ambiguous=False)
    np.testing.assert_array_equal(x0, clean[:200])
    with pytest.raises(ConfigError, match="noise_std"):
        load_train(small_folder, noise_std=-1.0)


def test_ambiguous_module_missing_is_a_data_error(small_folder, monkeypatch):
    monkeypatch.setattr(dirty, "ambiguous_available", lambda: False)
    with pytest.raises(DataError, match="Ambiguous-MNIST is unavailable"):
        load_train(small_folder)
    # evaluation falls back to the embedded subset when only Ambiguous-MNIST is missing
    s = load_test_split("mnist", small_folder)
    assert not s.subset and len(s) == 50


def test_real_splits_sizes_and_classes(data_dir, fake_ambiguous):
    s = load_test_splits(data_dir)
    assert len(s["mnist"]) == 10000 and len(s["ood"]) == 10000 and len(s["ambiguous"]) == 16
    assert s["ood"].class_counts() == [1000] * 10
    assert sum(s["mnist"].class_counts()) == 10000 and min(s["mnist"].class_counts()) == 892
    assert not any(v.subset for v in s.values())
    own = load_test_split("ood", data_dir, normalization="own")
    assert abs(float(own.x.mean())) < 0.02 and abs(float(own.x.std()) - 1) < 0.02
    # with MNIST statistics Fashion sits ~0.5 sd above zero: (0.286 - 0.1307) / 0.3081
    assert abs(float(s["ood"].x.mean()) - (FASHION_MEAN - MNIST_MEAN) / MNIST_STD) < 0.02
    assert FASHION_STD == 0.3530


@pytest.mark.skipif(importlib.util.find_spec("bayesim.data.ambiguous") is None,
                    reason="bayesim.data.ambiguous (Ambiguous-MNIST loader) not yet in the repo")
def test_real_ambiguous_module_with_official_files(data_dir, tmp_path):
    """The real `load_ambiguous` reading official-format files (no generation): first half train."""
    import torch

    folder = tmp_path / "data"
    folder.mkdir()
    for sub in ("mnist", "fashion-mnist"):
        (folder / sub).symlink_to(data_dir / sub)
    labels = np.concatenate([FAKE_LABELS["test"], FAKE_LABELS["test"]])  # 4 train + 4 test images
    (folder / "ambiguous-mnist").mkdir()
    torch.save(torch.from_numpy(fake_images(8)), folder / "ambiguous-mnist" / "amnist_samples.pt")
    torch.save(torch.from_numpy(labels), folder / "ambiguous-mnist" / "amnist_labels.pt")
    s = load_test_splits(folder, generate=False, progress=False)
    assert not any(v.subset for v in s.values()) and len(s["mnist"]) == 10000
    rows = np.array([p[0] for p in FAKE_PAIRS["test"]]) + 4  # test half = images 4..7
    assert s["ambiguous"].y.tolist() == [p[1] for p in FAKE_PAIRS["test"]]
    np.testing.assert_allclose(s["ambiguous"].x[:, 0, 0, 0], ((rows + 1) / 64.0 - MNIST_MEAN) / MNIST_STD, atol=1e-6)
    x, y = load_train(folder, noise_std=0.0, generate=False, progress=False)
    assert x.shape[0] == 60000 + 40 and y[60000:].tolist() == FAKE_LABELS["test"].reshape(-1).tolist()
    np.testing.assert_allclose(x[60000::10, 0, 0, 0], ((np.arange(4) + 1) / 64.0 - MNIST_MEAN) / MNIST_STD, atol=1e-6)


def test_a_named_data_folder_that_does_not_exist_is_an_error(tmp_path, monkeypatch):
    """A mistyped --data-dir (or $BAYESIM_DATA) is refused instead of silently using the embedded subset."""
    from bayesim.data import load_test_splits
    from bayesim.errors import DataError

    with pytest.raises(DataError, match=r"nonexistent: the data folder does not exist"):
        load_test_splits(tmp_path / "nonexistent", limit=5)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match=r"file: the data folder is a file, not a folder"):
        load_test_splits(tmp_path / "file", limit=5)
    monkeypatch.setenv("BAYESIM_DATA", str(tmp_path / "typo"))
    with pytest.raises(DataError, match=r"typo: \$BAYESIM_DATA does not exist"):
        load_test_splits(None, limit=5)
    assert load_test_splits(None, embedded=True, limit=5)["mnist"].subset  # the subset needs no folder
    # a named folder that exists but lacks the files: the missing files (after a download attempt), not the subset
    from bayesim.data import sources

    monkeypatch.setattr(sources, "_fetch", lambda url, timeout: (_ for _ in ()).throw(OSError("offline")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"data files missing in .*empty: mnist/t10k-images-idx3-ubyte\.gz"):
        load_test_splits(tmp_path / "empty", limit=5)
    monkeypatch.setenv("BAYESIM_DATA", str(tmp_path / "empty"))
    with pytest.raises(DataError, match=r"data files missing in .*empty"):
        load_test_splits(None, limit=5)


def test_only_the_splits_asked_for_are_loaded(monkeypatch):
    """A run whose config leaves Ambiguous-MNIST out must not load (or generate) it."""
    import bayesim.data.dirty as dirty

    asked = []
    real = dirty.load_test_split
    monkeypatch.setattr(dirty, "load_test_split", lambda name, *a, **k: asked.append(name) or real(name, *a, **k))
    got = dirty.load_test_splits(None, embedded=True, limit=5, names=("mnist", "ood"))
    assert list(got) == ["mnist", "ood"] and asked == ["mnist", "ood"]
