"""A damaged numba cache file of a bayesim kernel is recompiled with one warning, not an UnpicklingError or
a crash; other packages' caches are left to numba."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

KERNEL = textwrap.dedent("""
    import numba as nb

    @nb.njit(cache=True)
    def plus_one(x):
        return x + 1
    """)
BAYESIM_KERNEL = "import numpy as np; from bayesim import rng; print(rng.normals(np.uint64(7), 3).round(4).tolist())"


def _run(code: str, cwd: Path, cache_dir: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{cwd}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("NUMBA_DISABLE_JIT", None)
    env.pop("NUMBA_CACHE_DIR", None)
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = str(cache_dir)
    return subprocess.run([sys.executable, "-W", "default", "-c", code], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _cache_files(root: Path, pattern: str) -> list[Path]:
    files = sorted(root.rglob(pattern))
    assert files, f"no cache file {pattern} under {root}"
    return files


class _Code:
    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return (eval, (self.code,))


def _code_pickle(code: str) -> bytes:
    import pickle

    return pickle.dumps(_Code(code))


@pytest.mark.parametrize("damage", ["garbage index", "garbage data", "a pickle that is not a kernel",
                                    "folder in place of the index", "an unframed pickle that runs code"])
def test_damaged_cache_file_of_a_bayesim_kernel_recompiles(tmp_path, damage):
    """A real bayesim kernel (rng._fill_normal) cached under NUMBA_CACHE_DIR, in numba's folder for bayesim/."""
    cache = tmp_path / "numba"
    first = _run(BAYESIM_KERNEL, tmp_path, cache)
    assert first.returncode == 0, first.stderr
    if damage == "garbage index":
        damaged = _cache_files(cache, "rng._fill_normal-*.nbi")
        damaged[0].write_bytes(b"\xe7 not a pickle")
    elif damage == "garbage data":
        damaged = _cache_files(cache, "rng._fill_normal-*.nbc")
        for f in damaged:
            f.write_bytes(b"\xe7 not a pickle")
    elif damage == "a pickle that is not a kernel":  # framed with a valid SHA-256, then numba cannot rebuild it
        import pickle

        from bayesim._numba_cache import _FRAME, _digest

        for f in _cache_files(cache, "rng._fill_normal-*.nbc"):
            payload = pickle.dumps(("not", "a", "kernel"))
            f.write_bytes(_FRAME + _digest(f.name, payload) + payload)
        damaged = _cache_files(cache, "rng._fill_normal-*.nbi")
    elif damage == "an unframed pickle that runs code":  # an older bayesim's format is never unpickled
        code = f"__import__('pathlib').Path({str(tmp_path / 'PWNED')!r}).touch()"
        damaged = _cache_files(cache, "rng._fill_normal-*.nbc")
        for f in damaged:
            f.write_bytes(_code_pickle(code))
    else:
        damaged = _cache_files(cache, "rng._fill_normal-*.nbi")
        damaged[0].unlink()
        damaged[0].mkdir()
    second = _run(BAYESIM_KERNEL, tmp_path, cache)
    assert second.returncode == 0 and second.stdout == first.stdout, second.stderr
    if damage == "an unframed pickle that runs code":
        assert not (tmp_path / "PWNED").exists()
        assert "numba cache file" not in second.stderr  # an older bayesim's data file: a silent recompile
        return
    assert str(damaged[0]) in second.stderr
    if damage == "folder in place of the index":
        assert "cannot be written; the kernel runs uncached" in second.stderr
        assert second.stderr.count("numba cache file") == 1
    elif damage == "a pickle that is not a kernel":
        assert "holds a kernel that cannot be rebuilt; recompiling it" in second.stderr
        third = _run(BAYESIM_KERNEL, tmp_path, cache)
        assert third.returncode == 0 and third.stdout == first.stdout and "numba cache file" not in third.stderr
    else:
        msg = "is unreadable; recompiling the kernel (UnpicklingError" if damage == "garbage index" else \
            "is unreadable (not a numba cache data file); recompiling the kernel"
        assert msg in second.stderr
        assert second.stderr.count("unreadable") == 1
        third = _run(BAYESIM_KERNEL, tmp_path, cache)  # the file was rewritten: no warning any more
        assert third.returncode == 0 and third.stdout == first.stdout and "unreadable" not in third.stderr


TWO_KERNELS = BAYESIM_KERNEL + "; print([int(k) for k in rng.derive_key_rows(3, ('x',), [1, 2])])"


@pytest.mark.parametrize("damage", ["512 zero bytes", "another kernel's file", "an older bayesim's file"])
def test_data_file_is_used_only_when_its_checksum_matches(tmp_path, damage):
    """512 zeroed bytes 30% into the data file made numba segfault while rebuilding the kernel (exit 139, with
    these very bytes, before the checksum); another kernel's data file copied over it would be rebuilt as
    the wrong kernel. Both are misses with one warning. An unframed pickle (an older bayesim) recompiles
    silently. Every run prints the same numbers."""
    import pickle

    cache = tmp_path / "numba"
    first = _run(TWO_KERNELS, tmp_path, cache)
    assert first.returncode == 0, first.stderr
    (target,) = _cache_files(cache, "rng._fill_normal-*.nbc")
    raw = target.read_bytes()
    if damage == "512 zero bytes":
        k = int(0.3 * len(raw))
        target.write_bytes(raw[:k] + bytes(512) + raw[k + 512:])
    elif damage == "another kernel's file":
        (other,) = _cache_files(cache, "rng._rows-*.nbc")
        target.write_bytes(other.read_bytes())
    else:
        from bayesim._numba_cache import _FRAME

        assert raw.startswith(_FRAME)
        target.write_bytes(pickle.dumps(pickle.loads(raw[len(_FRAME) + 32:])))
    second = _run(TWO_KERNELS, tmp_path, cache)
    assert second.returncode == 0 and second.stdout == first.stdout, second.stderr
    if damage == "an older bayesim's file":
        assert "numba cache file" not in second.stderr
    else:
        assert f"{target} is damaged (its SHA-256 does not match its content)" in second.stderr
        assert second.stderr.count("numba cache file") == 1
    third = _run(TWO_KERNELS, tmp_path, cache)  # rewritten, framed: used without a word
    assert third.returncode == 0 and third.stdout == first.stdout and "numba cache file" not in third.stderr
    from bayesim._numba_cache import _FRAME, _digest

    new = target.read_bytes()
    head = len(_FRAME) + 32
    assert new.startswith(_FRAME) and new[len(_FRAME):head] == _digest(target.name, new[head:])


def test_damaged_cache_of_another_package_is_left_to_numba(tmp_path):
    """Even in a folder whose name contains 'bayesim': only bayesim's own source folders count."""
    folder = tmp_path / "bayesim_like_plugin"
    folder.mkdir()
    (folder / "kern.py").write_text(KERNEL)
    code = "import bayesim.rng, kern; print(kern.plus_one(41))"
    assert _run(code, folder).returncode == 0
    for f in _cache_files(folder / "__pycache__", "kern.plus_one-*.nbc"):
        f.write_bytes(b"\xe7 not a pickle")
    run = _run(code, folder)
    assert run.returncode != 0 and "UnpicklingError" in run.stderr and "numba cache file" not in run.stderr


def test_another_packages_cache_under_a_cache_dir_inside_bayesim_is_not_framed(tmp_path):
    """A NUMBA_CACHE_DIR inside the package folder: a foreign kernel's files there stay plain numba's."""
    import bayesim

    (tmp_path / "kern.py").write_text(KERNEL)
    cache = Path(bayesim.__file__).parent / f".numba_test_{os.getpid()}"
    try:
        assert _run("import bayesim.rng, kern; print(kern.plus_one(41))", tmp_path, cache).returncode == 0
        from bayesim._numba_cache import _FRAME

        files = _cache_files(cache, "kern.plus_one-*.nbc")
        assert not any(f.read_bytes().startswith(_FRAME) for f in files)
    finally:
        import shutil

        shutil.rmtree(cache, ignore_errors=True)


def test_an_older_reader_sees_a_framed_file_as_a_miss():
    """numba without this module unpickles a framed data file as None (a cache miss), not an error."""
    import pickle

    from bayesim._numba_cache import _FRAME, _digest

    payload = pickle.dumps(("some", "kernel"))
    assert pickle.loads(_FRAME + _digest("x.nbc", payload) + payload) is None


def _swap_index_entries(index: Path) -> None:
    """Swap the data files of the index's two entries (what a damaged byte or a save race can leave)."""
    import pickle

    with open(index, "rb") as f:
        version = pickle.load(f)
        stamp, overloads = pickle.loads(f.read())
    (k0, v0), (k1, v1) = overloads.items()
    overloads[k0], overloads[k1] = v1, v0
    with open(index, "wb") as f:
        pickle.dump(version, f, protocol=-1)
        f.write(pickle.dumps((stamp, overloads)))


def test_an_index_that_files_a_signature_under_another_ones_code_recompiles(tmp_path):
    """Two signatures of rng._fill_normal (1-d and 2-d output) with their data files swapped in the index:
    every call failed (incompatible shape) before; now one warning, the right numbers, then silence."""
    code = ("import numpy as np; from bayesim import rng; print(rng.normals(np.uint64(7), 3).round(4).tolist()); "
            "print(rng.normals(np.uint64(7), (2, 2)).round(4).tolist())")
    cache = tmp_path / "numba"
    first = _run(code, tmp_path, cache)
    assert first.returncode == 0, first.stderr
    (index,) = _cache_files(cache, "rng._fill_normal-*.nbi")
    _swap_index_entries(index)
    second = _run(code, tmp_path, cache)
    assert second.returncode == 0 and second.stdout == first.stdout, second.stderr
    assert f"{index} sends a kernel signature to another signature's compiled code" in second.stderr
    third = _run(code, tmp_path, cache)
    assert third.returncode == 0 and third.stdout == first.stdout and "numba cache file" not in third.stderr


def test_in_tree_cache_of_a_bayesim_kernel_is_framed_and_checked(tmp_path):
    """Without NUMBA_CACHE_DIR the cache lives in the package's own __pycache__ (a copy of the package here)."""
    import shutil

    import bayesim

    shutil.copytree(Path(bayesim.__file__).parent, tmp_path / "bayesim",
                    ignore=shutil.ignore_patterns("__pycache__", "*.safetensors", "*.npz"))
    first = _run(BAYESIM_KERNEL, tmp_path)
    assert first.returncode == 0, first.stderr
    (data,) = _cache_files(tmp_path / "bayesim" / "__pycache__", "rng._fill_normal-*.nbc")
    from bayesim._numba_cache import _FRAME

    raw = data.read_bytes()
    assert raw.startswith(_FRAME)
    k = int(0.3 * len(raw))
    data.write_bytes(raw[:k] + bytes(512) + raw[k + 512:])
    second = _run(BAYESIM_KERNEL, tmp_path)
    assert second.returncode == 0 and second.stdout == first.stdout, second.stderr
    assert f"{data} is damaged" in second.stderr


def test_install_leaves_a_numba_with_other_internals_alone(monkeypatch):
    """With numba caching internals it does not know, install() wraps nothing and raises nothing."""
    from numba.core import caching

    from bayesim import _numba_cache

    monkeypatch.setitem(_numba_cache._NEEDED, "Cache", ("load_overload", "no_such_method"))
    monkeypatch.delattr(caching.IndexDataCacheFile, _numba_cache._MARK, raising=False)
    before = caching.IndexDataCacheFile._load_index
    _numba_cache.install()
    assert caching.IndexDataCacheFile._load_index is before
