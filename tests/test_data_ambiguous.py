"""Ambiguous-MNIST: official-file loading, generation (determinism, filter, labels), cache integrity."""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from bayesim.data import ambiguous as amb
from bayesim.errors import DataError

N = 40  # images per split in the generated test set
SEED = 3


def _mnist_train(data_dir: Path):
    from bayesim.data.sources import load_mnist

    return load_mnist("train", data_dir)


_GENERATION_STDERR: list[str] = []  # what the shared generation printed on a stderr that is not a terminal


@pytest.fixture(scope="module")
def generated(data_dir):
    """One small generation (shared by the tests below): images, labels, report, ensemble. It runs with
    progress on and stderr a file (as in CI), which gets plain progress lines instead of a bar."""
    import contextlib
    import io

    x, y = _mnist_train(data_dir)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        out = amb._generate(x, y, N, SEED, progress=True)
    _GENERATION_STDERR.append(err.getvalue())
    return out


# ---------------------------------------------------------------------------------------- generation
def test_same_seed_same_bytes(data_dir, generated):
    images, labels, report, _ = generated
    x, y = _mnist_train(data_dir)
    torch.manual_seed(123)
    images2, labels2, report2 = amb.generate_ambiguous(x, y, N, SEED, progress=False)
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), after)  # the caller's global torch RNG is left untouched
    assert images2.tobytes() == images.tobytes()
    assert labels2.tobytes() == labels.tobytes()
    assert report2["candidates_drawn"] == report["candidates_drawn"]
    # the cache file bytes are reproducible too (fixed zip timestamps)
    assert amb._npz_bytes({"images": amb.to_uint8(images2), "labels": labels2.astype(np.uint8)}) == \
        amb._npz_bytes({"images": amb.to_uint8(images), "labels": labels.astype(np.uint8)})


def test_generation_prints_plain_progress_lines_when_stderr_is_not_a_terminal(generated):
    """A redirected run or a CI log used to sit silent for minutes (tqdm draws no bar there): the start, each
    quarter and the end with its time, one plain line each, and no bar."""
    lines = _GENERATION_STDERR[0].splitlines()
    assert len(lines) == 5, lines
    assert lines[0] == (f"Ambiguous-MNIST: generating {N} images per split (seed {SEED}); the full set takes 3-5 "
                        "minutes on 2 cores")
    for line, quarter in zip(lines[1:4], (25, 50, 75)):
        assert re.fullmatch(rf"Ambiguous-MNIST: {quarter}% \((VAE|ensemble|candidates kept), \d+ s\)", line), line
    report = generated[2]
    assert re.fullmatch(rf"Ambiguous-MNIST: done in \d+ s \(kept {report['candidates_kept']} of "
                        rf"{report['candidates_drawn']} candidates\)", lines[4]), lines[4]
    assert "\r" not in _GENERATION_STDERR[0]  # no progress bar


def test_plain_progress_lines_only_without_a_terminal(monkeypatch, capsys):
    import sys

    lines = amb._PlainLines(progress=False, seed=0, n_per_split=5)
    lines.stage("VAE", 1.0)
    lines.done("x")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    tty = amb._PlainLines(progress=True, seed=0, n_per_split=5)
    tty.stage("candidates kept", 1.0)
    assert capsys.readouterr().err == ""


def test_shapes_ranges_and_labels(generated):
    images, labels, report, ensemble = generated
    assert images.shape == (2 * N, 28, 28) and images.dtype == np.float32
    assert labels.shape == (2 * N, 10) and labels.dtype == np.int64
    assert images.min() >= 0 and images.max() <= 1 and images.max() > 0.5
    # stored as 8-bit pixels: the uint8 round trip is exact
    np.testing.assert_array_equal(amb.to_uint8(images).astype(np.float32) * np.float32(1 / 255), images)
    assert labels.min() >= 0 and labels.max() <= 9
    assert len(np.unique(images.reshape(2 * N, -1), axis=0)) == 2 * N  # no duplicated image
    # labels follow the ensemble's predictive distribution: the share of labels equal to the
    # ensemble's top class matches the mean top probability (800 draws, sd <= 0.018; bound = 4 sd)
    p = ensemble.probs(images).mean(0)
    hits = (labels == p.argmax(1)[:, None]).mean()
    assert abs(hits - p.max(1).mean()) < 0.07
    assert 0.1 < report["kept_fraction"] < 1
    assert report["recipe"]["n_per_split"] == N
    # no class dominates the labels (800 labels; at this size the full set's epochs put 66-91% on one class)
    assert np.bincount(labels.ravel(), minlength=10).max() / labels.size < 0.3


def test_recipe_trains_longer_on_subsets_and_keeps_the_full_recipe():
    full = amb.recipe_for(6000, 60000)
    assert (full.n_train_images, full.vae_epochs, full.lenet_epochs, full.lenet_batch) == (60000, 5, 2, 256)
    small = amb.recipe_for(40, 60000)
    assert (small.n_train_images, small.vae_epochs, small.lenet_epochs, small.lenet_batch) == (6000, 25, 6, 64)
    mid = amb.recipe_for(2000, 60000)
    assert (mid.n_train_images, mid.vae_epochs, mid.lenet_epochs, mid.lenet_batch) == (20000, 8, 2, 64)


def test_version_2_full_set_stays_current(tmp_path):
    """Version 3 changed only the epochs below the full size: a version-2 manifest whose recipe is today's
    is current; one with the old small-size recipe (5 and 2 epochs on 6000 images) is stale."""
    import dataclasses
    import json

    for size, recipe, current in [(6000, amb.recipe_for(6000, 60000), True),
                                  (40, dataclasses.replace(amb.recipe_for(40, 60000), vae_epochs=5, lenet_epochs=2),
                                   False)]:
        man = tmp_path / f"{size}.json"
        man.write_text(json.dumps({"generator_version": 2, "recipe": dataclasses.asdict(recipe), "sha256": {}}))
        assert amb._is_current(man, size) is current
        man.write_text(json.dumps({"generator_version": 1, "recipe": dataclasses.asdict(recipe), "sha256": {}}))
        assert amb._is_current(man, size) is False
    man.write_text(json.dumps({"generator_version": 2, "sha256": {}}))  # no recipe recorded
    assert amb._is_current(man, 40) is False


def test_filter_holds_on_kept_images(generated):
    images, _, report, ensemble = generated
    h, mi = amb.ensemble_uncertainty(images, ensemble)
    r = report["recipe"]
    tol = 1e-5  # recomputation at another batch size / thread count may move the last float bits
    assert np.all(mi <= r["mi_max"] + tol), mi.max()
    assert np.all(h >= r["entropy_min"] - tol) and np.all(h < r["entropy_max"]), (h.min(), h.max())
    assert abs(h.mean() - report["mean_entropy"]) < 1e-3
    # the ensemble's MI on MNIST-like inputs is small but not zero: the filter is not vacuous
    assert report["max_mi"] > 0.005


def test_flattening_moves_mass_to_rare_high_entropy():
    rng = np.random.default_rng(0)
    h = np.concatenate([rng.uniform(0.05, 0.25, 9000), rng.uniform(1.0, 2.0, 1000)])
    w = amb._flatten_weights(h, 0.05, np.log(10), 20, cap=1000.0)
    pick = amb._weighted_sample(w, 200, np.random.default_rng(1))
    assert len(np.unique(pick)) == 200
    # 10 % of the pool is high-entropy; flattened, the ~9 sparse high bins weigh as much each as each of
    # the 2 dense low bins, so ~80 % of the picks are high (200 picks: sd 0.03; bound 0.65 = 5 sd)
    assert (h[pick] >= 1.0).mean() > 0.65
    # a cap of 1 means equal weights: plain uniform subsampling keeps the pool's 10 %
    w1 = amb._flatten_weights(h, 0.05, np.log(10), 20, cap=1.0)
    assert np.all(w1 == w1[0])


# ---------------------------------------------------------------------------------------- cache
def _fake_generate(generated, calls):
    def fake(x, y, n, seed, progress):
        calls.append((n, seed))
        return generated

    return fake


@pytest.fixture()
def patched(monkeypatch, generated, tmp_path):
    """load_ambiguous without real MNIST / generation: returns the fixture set, records calls.

    The per-user cache is a fresh folder for each test.
    """
    import bayesim.data.sources as sources

    monkeypatch.setenv("BAYESIM_CACHE", str(tmp_path / "user-cache"))
    calls: list = []
    monkeypatch.setattr(amb, "_generate", _fake_generate(generated, calls))
    monkeypatch.setattr(sources, "load_mnist", lambda split, d=None: (None, None))
    return calls


def test_cache_round_trip_and_read_only_fallback(tmp_path, generated, patched):
    ro = tmp_path / "ro"
    (ro / "mnist").mkdir(parents=True)
    ro.chmod(0o555)
    try:
        x, y = amb.load_ambiguous(ro, "test", seed=SEED, size=N, progress=False)
    finally:
        ro.chmod(0o755)
    assert not (ro / amb.SUBDIR).exists()  # the read-only data folder was left alone
    cached = Path(os.environ["BAYESIM_CACHE"]) / "data" / amb.SUBDIR / f"{amb.cache_stem(SEED, N)}.json"
    assert cached.is_file() and amb.find_cache(ro, SEED, N) == cached
    np.testing.assert_array_equal(x, generated[0][N:])
    np.testing.assert_array_equal(y, generated[1][N:])
    xt, yt = amb.load_ambiguous(ro, "train", seed=SEED, size=N, generate=False)
    np.testing.assert_array_equal(xt, generated[0][:N])
    assert patched == [(N, SEED)]  # second load came from the cache
    man = amb._read_manifest(cached)
    assert man["seed"] == SEED and man["n_per_split"] == N and len(man["sha256"]) == 2
    assert {"torch_version", "numpy_version", "bayesim_version", "kept_fraction", "recipe"} <= set(man)
    ens = amb.load_ensemble(ro, SEED, N)
    np.testing.assert_array_equal(ens.probs(xt[:5]), generated[3].probs(xt[:5]))


def test_corrupt_cache_detected_and_regenerated(tmp_path, generated, patched):
    d = tmp_path / "data"
    d.mkdir()
    amb.load_ambiguous(d, "train", seed=SEED, size=N, progress=False)
    npz = d / amb.SUBDIR / f"{amb.cache_stem(SEED, N)}.npz"  # writable data folder holds the cache
    assert npz.is_file()
    blob = bytearray(npz.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    npz.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="corrupt") as e:
        amb.load_ambiguous(d, "train", seed=SEED, size=N, generate=False)
    assert str(npz) in str(e.value)
    with pytest.warns(UserWarning, match="regenerating"):
        x, _ = amb.load_ambiguous(d, "train", seed=SEED, size=N, progress=False)
    np.testing.assert_array_equal(x, generated[0][:N])
    assert len(patched) == 2
    amb.load_ambiguous(d, "train", seed=SEED, size=N, generate=False)  # repaired


def test_cache_of_another_generator_version_is_ignored(tmp_path, generated, patched):
    import json

    d = tmp_path / "data"
    d.mkdir()
    amb.load_ambiguous(d, "train", seed=SEED, size=N, progress=False)
    man = d / amb.SUBDIR / f"{amb.cache_stem(SEED, N)}.json"
    m = json.loads(man.read_text())
    m["generator_version"] = 1  # another version, not one whose same-recipe sets stay current
    man.write_text(json.dumps(m))
    assert amb.find_cache(d, SEED, N) is None
    with pytest.raises(DataError, match="not generated yet"):
        amb.load_ambiguous(d, "train", seed=SEED, size=N, generate=False)
    amb.load_ambiguous(d, "train", seed=SEED, size=N, progress=False)  # regenerated, manifest replaced
    assert len(patched) == 2 and amb.find_cache(d, SEED, N) == man


def test_nowhere_to_save_is_said_before_generating(tmp_path, patched, monkeypatch):
    """A read-only data folder and a user cache that cannot be written: one DataError naming the cache folder
    and $BAYESIM_CACHE, before any generation (it used to generate for minutes, then fail with a traceback)."""
    ro_data, ro_cache = tmp_path / "ro-data", tmp_path / "ro-cache"
    for d in (ro_data, ro_cache):
        d.mkdir()
        d.chmod(0o555)
    monkeypatch.setenv("BAYESIM_CACHE", str(ro_cache))
    try:
        with pytest.raises(DataError) as e:
            amb.load_ambiguous(ro_data, "train", seed=SEED, size=N, progress=False)
    finally:
        for d in (ro_data, ro_cache):
            d.chmod(0o755)
    assert str(e.value) == (f"the user cache folder {ro_cache / 'data' / amb.SUBDIR} cannot be created: {ro_cache} is "
                            f"not writable (permission denied), and neither is the data folder {ro_data}: the "
                            "generated Ambiguous-MNIST cannot be saved; choose a writable cache folder with "
                            "$BAYESIM_CACHE (or a writable data folder with --data-dir, data.dir or $BAYESIM_DATA)")
    assert patched == [] and list(ro_cache.iterdir()) == [] and list(ro_data.iterdir()) == []


def test_missing_generated_set_without_generation(tmp_path):
    with pytest.raises(DataError, match="not generated yet"):
        amb.load_ambiguous(tmp_path, "test", size=7, generate=False)
    with pytest.raises(DataError, match="split"):
        amb.load_ambiguous(tmp_path, "val", size=7)
    with pytest.raises(DataError, match="positive integer"):
        amb.load_ambiguous(tmp_path, "test", size=0)


# ---------------------------------------------------------------------------------------- official files
def _write_official(folder: Path, samples, labels):
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(samples, folder / amb.OFFICIAL_SAMPLES)
    torch.save(labels, folder / amb.OFFICIAL_LABELS)


def test_official_files_loaded_and_split(tmp_path):
    g = torch.Generator().manual_seed(0)
    s = torch.rand((6, 1, 28, 28), generator=g)
    l = torch.randint(0, 10, (6, 10), generator=g)
    _write_official(tmp_path / amb.SUBDIR, s, l)
    x, y = amb.load_ambiguous(tmp_path, "train", generate=False)
    assert x.shape == (3, 28, 28) and x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(x, s[:3, 0].numpy())
    np.testing.assert_array_equal(y, l[:3].numpy())
    x, y = amb.load_ambiguous(tmp_path, "test", generate=False)
    np.testing.assert_array_equal(x, s[3:, 0].numpy())
    np.testing.assert_array_equal(y, l[3:].numpy())
    # an explicit size asks for a generated set: the official files are not used
    with pytest.raises(DataError, match="not generated yet"):
        amb.load_ambiguous(tmp_path, "test", size=3, generate=False)


def test_a_named_pipe_as_an_official_file_is_named(tmp_path):
    """A FIFO named amnist_samples.pt was taken for no file (and the set generated instead)."""
    fifo = tmp_path / amb.SUBDIR / amb.OFFICIAL_SAMPLES
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    with pytest.raises(DataError, match=rf"{fifo}: is not a regular file \(a named pipe\); expected the official"):
        amb.load_ambiguous(tmp_path, "test", generate=False)


def test_official_files_in_data_root(tmp_path):
    s = torch.full((2, 28, 28), 0.5, dtype=torch.float64)
    l = torch.tensor([[1] * 10, [2] * 10], dtype=torch.int32)
    _write_official(tmp_path, s, l)
    x, y = amb.load_ambiguous(tmp_path, "test", generate=False)
    assert x.dtype == np.float32 and np.all(x == 0.5) and y.tolist() == [[2] * 10]


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("what, samples, labels, match", [
    ("range", torch.full((2, 28, 28), 1.5), torch.zeros((2, 10), dtype=torch.long), "samples.pt.*\\[0, 1\\]"),
    ("nan", torch.full((2, 28, 28), float("nan")), torch.zeros((2, 10), dtype=torch.long), "samples.pt.*finite"),
    ("odd", torch.rand(3, 28, 28), torch.zeros((3, 10), dtype=torch.long), "samples.pt.*N even"),
    ("shape", torch.rand(2, 27, 28), torch.zeros((2, 10), dtype=torch.long), "samples.pt.*shape"),
    ("int pixels", torch.zeros((2, 28, 28), dtype=torch.uint8), torch.zeros((2, 10), dtype=torch.long),
     "samples.pt.*dtype"),
    ("label rows", torch.rand(2, 28, 28), torch.zeros((4, 10), dtype=torch.long), "labels.pt.*shape"),
    ("label range", torch.rand(2, 28, 28), torch.full((2, 10), 10), "labels.pt.*0..9"),
    ("float labels", torch.rand(2, 28, 28), torch.zeros((2, 10)), "labels.pt.*dtype"),
    ("not a tensor", {"x": torch.rand(2, 28, 28)}, torch.zeros((2, 10), dtype=torch.long), "samples.pt.*tensor"),
    ("code", _Evil(), torch.zeros((2, 10), dtype=torch.long), "samples.pt.*weights_only"),
])
def test_malformed_official_files(tmp_path, what, samples, labels, match):
    _write_official(tmp_path / amb.SUBDIR, samples, labels)
    with pytest.raises(DataError, match=match):
        amb.load_ambiguous(tmp_path, "train")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_garbage_and_half_official_files(tmp_path):
    d = tmp_path / amb.SUBDIR
    d.mkdir()
    (d / amb.OFFICIAL_SAMPLES).write_bytes(b"not a torch file at all")
    with pytest.raises(DataError, match="labels.pt is missing"):
        amb.load_ambiguous(tmp_path, "train")
    torch.save(torch.zeros((2, 10), dtype=torch.long), d / amb.OFFICIAL_LABELS)
    with pytest.raises(DataError, match="amnist_samples.pt: cannot be read"):
        amb.load_ambiguous(tmp_path, "train")
    (d / amb.OFFICIAL_SAMPLES).write_bytes(pickle.dumps(np.zeros(3)))
    with pytest.raises(DataError, match="amnist_samples.pt"):
        amb.load_ambiguous(tmp_path, "train")


def test_every_file_the_manifest_lists_is_verified(tmp_path, generated, patched):
    """A damaged scoring ensemble (or any other file the manifest lists) makes the cache corrupt: reported
    without generation, regenerated with it; it used to pass unnoticed by `data prepare` / `data info`."""
    import json

    d = tmp_path / "data"
    d.mkdir()
    amb.load_ambiguous(d, "train", seed=SEED, size=N, progress=False)
    man = d / amb.SUBDIR / f"{amb.cache_stem(SEED, N)}.json"
    ens = man.with_name(f"{amb.cache_stem(SEED, N)}.ensemble.safetensors")
    ens.write_bytes(b"ensemble weights")
    m = json.loads(man.read_text())
    m["sha256"][ens.name] = amb._sha256(ens)
    man.write_text(json.dumps(m))
    amb.load_ambiguous(d, "train", seed=SEED, size=N, generate=False)  # intact: accepted
    ens.write_bytes(b"ensemble weightz")
    with pytest.raises(DataError, match=rf"{ens.name}: SHA-256 does not match .* the cache is corrupt"):
        amb.load_ambiguous(d, "train", seed=SEED, size=N, generate=False)
    ens.unlink()
    ens.mkdir()
    with pytest.raises(DataError, match=rf"{ens.name} is missing or not a file"):
        amb.load_ambiguous(d, "train", seed=SEED, size=N, generate=False)


def test_location_names_the_official_file_or_the_cache(tmp_path, monkeypatch):
    """What `bayesim data prepare` prints as Ambiguous-MNIST's place: the official file, a cached set, or None."""
    from bayesim.data import ambiguous as amb

    monkeypatch.setenv("BAYESIM_CACHE", str(tmp_path / "cache"))
    assert amb.location(tmp_path, 0, None) is None
    assert amb.location(tmp_path, 0, 7) is None
    sub = tmp_path / amb.SUBDIR
    sub.mkdir()
    (sub / amb.OFFICIAL_SAMPLES).write_bytes(b"x")
    (sub / amb.OFFICIAL_LABELS).write_bytes(b"x")
    assert amb.location(tmp_path, 0, None) == sub / amb.OFFICIAL_SAMPLES
    assert amb.location(tmp_path, 0, 7) is None  # a sized set is always the generated one
