"""`bayesim data info|prepare`: JSON sizes on the real data, one-line errors with exit code 2."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
import types

import numpy as np
import pytest

from bayesim.cli import main
from bayesim.data import sources

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


@pytest.fixture
def fake_ambiguous(monkeypatch):
    calls = []

    def load_ambiguous(data_dir, split, seed=0, size=None, generate=True, progress=True):
        calls.append(dict(split=split, seed=seed, size=size, generate=generate))
        labels = np.array([[1] * 10, list(range(10)), [3, 5] * 5])
        return np.full((3, 28, 28), 0.5, np.float32), labels

    mod = types.ModuleType("bayesim.data.ambiguous")
    mod.load_ambiguous = load_ambiguous
    mod.location = lambda data_dir, seed=0, size=None: data_dir / "ambiguous-mnist" / f"fake-s{seed}-n{size}.json"
    monkeypatch.setitem(sys.modules, "bayesim.data.ambiguous", mod)
    return calls


def _one_error_line(capsys, rc):
    out = capsys.readouterr()
    assert rc == 2
    lines = [ln for ln in out.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("bayesim: error:"), out.err
    return lines[0]


def test_info_json_on_real_data(data_dir, fake_ambiguous, capsys):
    rc = main(["data", "info", "--json", "--data-dir", str(data_dir)])
    assert rc == 0
    info = json.loads(capsys.readouterr().out)
    assert info["data_dir"] == str(data_dir)
    assert info["train"]["mnist"]["n"] == 60000
    assert info["train"]["mnist"]["class_counts"] == MNIST_TRAIN_COUNTS
    assert info["train"]["ambiguous_pairs"]["n"] == 30 and info["train"]["ambiguous_pairs"]["images"] == 3
    t = info["test"]
    assert t["mnist"]["n"] == 10000 and t["ood"]["n"] == 10000 and t["ambiguous"]["n"] == 13
    assert t["ood"]["class_counts"] == [1000] * 10
    assert not t["mnist"]["subset"] and abs(t["mnist"]["mean"]) < 0.02 and abs(t["mnist"]["std"] - 1) < 0.02
    assert all(c["generate"] is False for c in fake_ambiguous)  # info never generates


def test_info_text_and_own_normalization(data_dir, fake_ambiguous, capsys):
    assert main(["data", "info", "--data-dir", str(data_dir), "--normalization", "own"]) == 0
    out = capsys.readouterr().out
    assert "60000" in out and "5923 6742" in out and "normalization: own" in out
    ood = [ln for ln in out.splitlines() if ln.startswith("test  ood")][0]
    assert abs(float(ood.split()[3])) < 0.02  # Fashion normalised with its own mean


def test_info_embedded_when_no_folder_named_and_missing_when_named(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("BAYESIM_DATA", raising=False)
    monkeypatch.setenv("BAYESIM_CACHE", str(tmp_path / "cache"))
    assert main(["data", "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["train"]["mnist"] is None and info["train"]["ambiguous_pairs"] is None
    for name in ("mnist", "ood"):
        assert info["test"][name]["subset"] is True and info["test"][name]["n"] == 1000
        assert info["test"][name]["class_counts"] == [100] * 10
    assert main(["data", "info"]) == 0
    assert "[embedded subset: no MNIST and Fashion-MNIST test files in the default data folder" in capsys.readouterr().out
    # a named folder without the files: reported missing (no download, no stand-in subset)
    (tmp_path / "empty").mkdir()
    assert main(["data", "info", "--data-dir", str(tmp_path / "empty")]) == 0
    out = capsys.readouterr().out
    assert f"no MNIST test files in {tmp_path / 'empty'}" in out and "[embedded subset]" not in out


def test_info_hints_name_the_folder_and_set_they_are_about(tmp_path, capsys, monkeypatch):
    """The hints gave a bare `bayesim data prepare`, which prepares $BAYESIM_DATA or the cache, not the folder
    named with --data-dir, nor the --size / --seed set shown; the official Ambiguous-MNIST files are looked for in
    two places (and not at all for a --size)."""
    monkeypatch.delenv("BAYESIM_DATA", raising=False)
    monkeypatch.setenv("BAYESIM_CACHE", str(tmp_path / "cache"))
    d = tmp_path / "my data"
    d.mkdir()
    prepare = f"bayesim data prepare --data-dir '{d}'"
    assert main(["data", "info", "--data-dir", str(d)]) == 0
    rows = {" ".join(ln.split()[:2]): ln for ln in capsys.readouterr().out.splitlines()[2:]}
    assert rows["train mnist"].endswith(f"not available (run `{prepare}`)")
    assert rows["test mnist"].endswith(f"no MNIST test files in {d} (`{prepare}` fetches them)")
    assert rows["test ood"].endswith(f"no Fashion-MNIST test files in {d} (`{prepare}` fetches them)")
    assert rows["test ambiguous"].endswith(
        f"Ambiguous-MNIST (seed 0, 6000 per split) is not generated yet and neither amnist_samples.pt nor "
        f"amnist_labels.pt (the official files) is in {d / 'ambiguous-mnist'} or {d}; run `{prepare}` to generate it")
    monkeypatch.setenv("BAYESIM_DATA", str(d))  # the folder a bare command prepares: no --data-dir
    assert main(["data", "info", "--size", "7", "--seed", "3"]) == 0
    rows = {" ".join(ln.split()[:2]): ln for ln in capsys.readouterr().out.splitlines()[2:]}
    assert rows["train ambiguous"].endswith("not available (run `bayesim data prepare --size 7 --seed 3`)")
    assert rows["test ambiguous"].endswith("Ambiguous-MNIST (seed 3, 7 per split) is not generated yet; run "
                                           "`bayesim data prepare --size 7 --seed 3` to generate it")


def test_prepare_names_a_cache_it_cannot_write(data_dir, tmp_path, capsys, monkeypatch):
    """A read-only data folder (../shared/data) and a cache without write permission: one line naming the cache
    folder and how to choose another, exit 2 (it was a PermissionError traceback after the generation)."""
    import bayesim.data.ambiguous as amb

    monkeypatch.setattr(amb, "_generate", lambda *a, **k: pytest.fail("generated with nowhere to save it"))
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o555)
    monkeypatch.setenv("BAYESIM_CACHE", str(cache))
    try:
        line = _one_error_line(capsys, main(["data", "prepare", "--data-dir", str(data_dir), "--size", "5"]))
    finally:
        cache.chmod(0o755)
    assert line.startswith(f"bayesim: error: the user cache folder {cache / 'data' / 'ambiguous-mnist'} cannot be "
                           f"created: {cache} is not writable (permission denied)"), line
    assert "choose a writable cache folder with $BAYESIM_CACHE" in line and str(data_dir) in line
    assert list(cache.iterdir()) == []


def test_info_missing_folder_exit_2(tmp_path, capsys):
    missing = tmp_path / "does-not-exist"
    line = _one_error_line(capsys, main(["data", "info", "--data-dir", str(missing)]))
    assert str(missing) in line and "does not exist" in line


def test_info_corrupt_file_exit_2(tmp_path, capsys):
    for sub in ("mnist", "fashion-mnist"):
        (tmp_path / sub).mkdir()
        for base in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
            (tmp_path / sub / f"{base}.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 9))
    line = _one_error_line(capsys, main(["data", "info", "--data-dir", str(tmp_path)]))
    assert "t10k-images-idx3-ubyte.gz" in line and "truncated" in line


def test_prepare_verifies_and_generates(data_dir, fake_ambiguous, capsys):
    rc = main(["data", "prepare", "--data-dir", str(data_dir), "--size", "3", "--seed", "4"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.count("MD5 verified") == 8 and "data ready" in out
    assert f"Ambiguous-MNIST: {data_dir / 'ambiguous-mnist' / 'fake-s4-n3.json'}\n" in out  # where it is
    assert [(c["split"], c["size"], c["seed"], c["generate"]) for c in fake_ambiguous] == [
        ("train", 3, 4, True), ("test", 3, 4, True)]


def test_prepare_offline_lists_all_files(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sources, "MIRRORS", {"mnist": ["http://bayesim-test.invalid/"],
                                             "fashion": ["http://bayesim-test.invalid/"]})
    target = tmp_path / "fresh"
    line = _one_error_line(capsys, main(["data", "prepare", "--data-dir", str(target)]))
    assert line.count("-ubyte.gz") == 8 and str(target) in line
    assert not target.exists()  # nothing half-made: not even the empty sub-folders


def test_cli_subprocess_exit_code(tmp_path):
    r = subprocess.run([sys.executable, "-m", "bayesim", "data", "info", "--data-dir", str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().count("\n") == 0 and "does not exist" in r.stderr


def test_info_corrupt_ambiguous_file_and_bad_size_exit_2(data_dir, tmp_path, capsys):
    """A corrupt official Ambiguous-MNIST file is an error (not a 'missing' row), and its message does not
    repeat torch's advice to load with weights_only=False; --size below 1 is refused as in `prepare`."""
    for sub in ("mnist", "fashion-mnist"):
        (tmp_path / sub).symlink_to(data_dir / sub)
    (tmp_path / "ambiguous-mnist").mkdir()
    for name in ("amnist_samples.pt", "amnist_labels.pt"):
        (tmp_path / "ambiguous-mnist" / name).write_bytes(b"garbage")
    line = _one_error_line(capsys, main(["data", "info", "--data-dir", str(tmp_path)]))
    assert "amnist_samples.pt: cannot be read as a plain torch tensor file" in line
    assert "weights_only=False" not in line and "will likely succeed" not in line
    for size in ("0", "-1"):
        line = _one_error_line(capsys, main(["data", "info", "--size", size]))
        assert f"--size must be >= 1, got {size}" in line


def test_data_seed_out_of_range_and_a_deeply_nested_manifest_exit_2(tmp_path, capsys):
    from bayesim.data import ambiguous as amb
    from bayesim.errors import DataError

    for cmd in (["data", "prepare"], ["data", "info"]):
        assert main([*cmd, "--data-dir", str(tmp_path), "--seed", "-1"]) == 2
        assert "--seed must be in [0, 2^63 - 1], got -1" in capsys.readouterr().err
    m = tmp_path / "ambiguous-mnist-generated-s0-n10.json"
    m.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(DataError, match=r"unreadable Ambiguous-MNIST manifest \(JSON nested too deeply\)"):
        amb._read_manifest(m)
    assert amb._is_current(m, 10)  # unreadable counts as current, so that loading reports it as corrupt
