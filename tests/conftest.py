"""Shared test fixtures.

Real data comes from $BAYESIM_DATA (CI sets ../shared/data); tests that need it are skipped with a
reason when it is absent. Generated artefacts go to a per-session temporary cache, never into the
(possibly read-only) data folder.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[1]
_DEFAULT_SHARED = _REPO.parent / "shared"


def _shared() -> Path:
    return _DEFAULT_SHARED


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Point the per-user cache at a temporary folder for the whole test session."""
    old = os.environ.get("BAYESIM_CACHE")
    os.environ["BAYESIM_CACHE"] = str(tmp_path_factory.mktemp("bayesim_cache"))
    yield
    if old is None:
        os.environ.pop("BAYESIM_CACHE", None)
    else:
        os.environ["BAYESIM_CACHE"] = old


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real MNIST / Fashion-MNIST folder ($BAYESIM_DATA, else ../shared/data)."""
    d = Path(os.environ.get("BAYESIM_DATA") or _shared() / "data").resolve()
    if not (d / "mnist" / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"real data not found in {d}; set BAYESIM_DATA")
    return d


@pytest.fixture(scope="session")
def shared_models_dir() -> Path:
    d = _shared() / "models"
    if not (d / "pfp_svi_mlp_e40.pt").exists():
        pytest.skip(f"reference Pyro model not found in {d}")
    return d
