"""Unreadable numba cache files of bayesim's kernels are recompiled, not fatal.

numba caches each compiled kernel next to its module (`__pycache__/*.nbi` index, `*.nbc` data) and
unpickles them on the next run; a damaged file (a full disk, a copy cut short, an edit from outside)
raises an UnpicklingError from every call of that kernel until the folder is deleted. For caches of
bayesim's own modules this module turns such a file into a cache miss: one warning naming the file,
then the kernel is compiled again and the file rewritten. Other packages' caches are left to numba.
"""
from __future__ import annotations

import os
import warnings

from numba.core import caching

_PACKAGE = os.path.dirname(os.path.abspath(__file__))
_MARK = "_bayesim_tolerant"
_warned: set[str] = set()  # numba reads an index again before saving: one warning per file


def _ours(cache_file) -> bool:
    """A cache of a bayesim module: its folder is in the package, or (NUMBA_CACHE_DIR) named after it."""
    path = os.path.abspath(cache_file._cache_path)
    return path.startswith(_PACKAGE) or "bayesim" in path


def _warn(path: str, e: BaseException) -> None:
    if path in _warned:
        return
    _warned.add(path)
    warnings.warn(f"numba cache file {path} is unreadable ({type(e).__name__}: {e}); recompiling the kernel "
                  f"and rewriting it", RuntimeWarning, stacklevel=3)


def install() -> None:
    """Wrap numba's cache-file readers once per process (idempotent)."""
    cls = caching.IndexDataCacheFile
    if getattr(cls, _MARK, False):
        return
    load_index, load_data = cls._load_index, cls._load_data

    def _load_index(self):
        try:
            return load_index(self)
        except Exception as e:  # noqa: BLE001 - any unpickling failure of a damaged file
            if not _ours(self):
                raise
            _warn(self._index_path, e)
            return {}  # no entries: the kernel compiles, and the next save rewrites the index

    def _load_data(self, name):
        try:
            return load_data(self, name)
        except OSError:
            raise  # numba's own handling: a data file removed while the index still names it
        except Exception as e:  # noqa: BLE001
            if not _ours(self):
                raise
            _warn(self._data_path(name), e)
            return None  # a miss: the kernel compiles, and the save overwrites this file

    cls._load_index, cls._load_data = _load_index, _load_data
    setattr(cls, _MARK, True)
