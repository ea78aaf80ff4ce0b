"""A damaged numba cache file of a bayesim kernel is recompiled with one warning, not an UnpicklingError;
other packages' caches are left to numba."""
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


@pytest.mark.parametrize("damage", ["garbage index", "garbage data", "a pickle that is not a kernel",
                                    "folder in place of the index"])
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
    elif damage == "a pickle that is not a kernel":  # unpickles, then numba cannot rebuild it
        import pickle

        for f in _cache_files(cache, "rng._fill_normal-*.nbc"):
            f.write_bytes(pickle.dumps(("not", "a", "kernel")))
        damaged = _cache_files(cache, "rng._fill_normal-*.nbi")
    else:
        damaged = _cache_files(cache, "rng._fill_normal-*.nbi")
        damaged[0].unlink()
        damaged[0].mkdir()
    second = _run(BAYESIM_KERNEL, tmp_path, cache)
    assert second.returncode == 0 and second.stdout == first.stdout, second.stderr
    assert str(damaged[0]) in second.stderr
    if damage == "folder in place of the index":
        assert "cannot be written; the kernel runs uncached" in second.stderr
        assert second.stderr.count("numba cache file") == 1
    elif damage == "a pickle that is not a kernel":
        assert "holds a kernel that cannot be rebuilt; recompiling it" in second.stderr
        third = _run(BAYESIM_KERNEL, tmp_path, cache)
        assert third.returncode == 0 and third.stdout == first.stdout and "numba cache file" not in third.stderr
    else:
        assert "is unreadable; recompiling the kernel (UnpicklingError" in second.stderr
        assert second.stderr.count("unreadable") == 1
        third = _run(BAYESIM_KERNEL, tmp_path, cache)  # the file was rewritten: no warning any more
        assert third.returncode == 0 and third.stdout == first.stdout and "unreadable" not in third.stderr


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
    assert run.returncode != 0 and "UnpicklingError" in run.stderr and "bayesim: " not in run.stderr


def test_install_leaves_a_numba_with_other_internals_alone(monkeypatch):
    """With numba caching internals it does not know, install() wraps nothing and raises nothing."""
    from numba.core import caching

    from bayesim import _numba_cache

    monkeypatch.setitem(_numba_cache._NEEDED, "Cache", ("load_overload", "no_such_method"))
    monkeypatch.delattr(caching.IndexDataCacheFile, _numba_cache._MARK, raising=False)
    before = caching.IndexDataCacheFile._load_index
    _numba_cache.install()
    assert caching.IndexDataCacheFile._load_index is before
