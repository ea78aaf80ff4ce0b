"""Data: MNIST / Fashion-MNIST IDX loading and download, Dirty-MNIST assembly, embedded test subset.

`load_test_splits()` gives the three evaluation splits (mnist, ambiguous, ood) normalised with MNIST
statistics; `load_train()` the noisy Dirty-MNIST training set. Ambiguous-MNIST itself lives in
`bayesim.data.ambiguous` (imported lazily: `bayesim.data.ambiguous` or attribute access).
"""
from __future__ import annotations

import importlib

from bayesim.data.dirty import (
    FASHION_MEAN,
    FASHION_STD,
    MNIST_MEAN,
    MNIST_STD,
    SPLITS,
    Split,
    load_test_split,
    load_test_splits,
    load_train,
)
from bayesim.data.sources import load_fashion, load_mnist

__all__ = [
    "load_mnist", "load_fashion", "load_test_split", "load_test_splits", "load_train", "Split", "SPLITS",
    "MNIST_MEAN", "MNIST_STD", "FASHION_MEAN", "FASHION_STD",
]


def __getattr__(name: str):
    if name == "ambiguous":
        return importlib.import_module("bayesim.data.ambiguous")
    if name == "load_ambiguous":
        return importlib.import_module("bayesim.data.ambiguous").load_ambiguous
    raise AttributeError(f"module 'bayesim.data' has no attribute {name!r}")
