"""A damaged numba cache file of a bayesim kernel is recompiled with one warning, not an UnpicklingError."""
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


def _run(folder: Path, install: bool) -> subprocess.CompletedProcess:
    code = ("from bayesim import _numba_cache; _numba_cache.install(); " if install else "") + \
        "import kern; print(kern.plus_one(41))"
    env = {**os.environ, "PYTHONPATH": f"{folder}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("NUMBA_CACHE_DIR", None)
    env.pop("NUMBA_DISABLE_JIT", None)
    return subprocess.run([sys.executable, "-W", "default", "-c", code], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=300)


def _damage(folder: Path, suffix: str) -> list[Path]:
    files = sorted((folder / "__pycache__").glob(f"kern.plus_one-*{suffix}"))
    assert files, f"no {suffix} cache file written"
    for f in files:
        f.write_bytes(b"\xe7 not a pickle")
    return files


@pytest.mark.parametrize("suffix", [".nbi", ".nbc"])
def test_damaged_cache_file_of_a_bayesim_kernel_recompiles(tmp_path, suffix):
    folder = tmp_path / "bayesim_kernels"  # a cache folder named after bayesim counts as bayesim's
    folder.mkdir()
    (folder / "kern.py").write_text(KERNEL)
    first = _run(folder, install=True)
    assert first.returncode == 0 and first.stdout.strip() == "42", first.stderr
    damaged = _damage(folder, suffix)
    second = _run(folder, install=True)
    assert second.returncode == 0 and second.stdout.strip() == "42", second.stderr
    assert "is unreadable (UnpicklingError" in second.stderr and str(damaged[0]) in second.stderr
    assert second.stderr.count("unreadable") == 1
    third = _run(folder, install=True)  # the file was rewritten: no warning any more
    assert third.returncode == 0 and third.stdout.strip() == "42" and "unreadable" not in third.stderr


def test_damaged_cache_of_another_package_is_left_to_numba(tmp_path):
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "kern.py").write_text(KERNEL)
    assert _run(folder, install=True).returncode == 0
    _damage(folder, ".nbc")
    run = _run(folder, install=True)
    assert run.returncode != 0 and "UnpicklingError" in run.stderr
