"""Damaged numba cache files of bayesim's kernels are recompiled, not fatal.

numba caches each compiled kernel next to its module (`__pycache__/*.nbi` index, `*.nbc` data; or under
NUMBA_CACHE_DIR / the user cache in a folder named after the module's folder) and unpickles them on the
next run; a damaged file (a full disk, a copy cut short, an edit from outside) raises an UnpicklingError
from every call of that kernel until the folder is deleted, and a few damaged bytes inside the compiled
code can crash the process (a segfault or an LLVM abort when numba rebuilds it). For caches of bayesim's
own modules this module turns such a file into a cache miss: one warning naming the file, then the kernel
is compiled again and the file rewritten.
- Each data file is written with a SHA-256 of its name and content in front (`_FRAME`) and used only when
  both match: damage anywhere in it, or another kernel's file copied over it, is caught before numba
  rebuilds anything. A data file without the frame is never used nor unpickled: an older bayesim's (a
  pickle) is recompiled silently, anything else with the warning. (numba's index files are pickles numba
  itself unpickles; whoever can write a cache folder can run code, as with any numba cache.)
- An index that cannot be unpickled is a miss too; so is a data file that passes but whose compiled code
  cannot be rebuilt, or is the code of another signature than the one the index filed it under.
- A cache file that cannot be written (e.g. a folder in its place) leaves the kernel compiled but uncached,
  with one warning.
Other packages' caches are left to numba, also under a NUMBA_CACHE_DIR inside the package.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import warnings

from numba.core import caching, sigutils

_PACKAGE = os.path.dirname(os.path.abspath(__file__))
_MARK = "_bayesim_tolerant"
_warned: set[tuple[str, str]] = set()  # numba reads an index again before saving: one warning per file


def _package_folders() -> list[str]:
    out = []
    for folder, dirs, _ in os.walk(_PACKAGE):
        dirs[:] = [d for d in dirs if d != "__pycache__" and not d.startswith(".")]
        out.append(folder)
    return out


def _package_subpaths(folders) -> set[str]:
    """The cache-folder names numba gives bayesim's source folders outside the tree (NUMBA_CACHE_DIR, the
    user-wide cache): `<folder name>_<sha1 of the folder path>`, unique to each folder."""
    subpath = getattr(getattr(caching, "_CacheLocator", None), "get_suitable_cache_subpath", None)
    if subpath is None:  # another numba: only the in-tree caches are recognised
        return set()
    return {subpath(os.path.join(folder, "x.py")) for folder in folders}


_FOLDERS = _package_folders()
_IN_TREE = {os.path.join(folder, "__pycache__") for folder in _FOLDERS}
_SUBPATHS = _package_subpaths(_FOLDERS)


def _ours(cache_file) -> bool:
    """A cache of a bayesim module: the `__pycache__` of one of the package's folders, or numba's folder for
    one of them (another package's cache under a NUMBA_CACHE_DIR inside the package is not ours)."""
    path = os.path.abspath(cache_file._cache_path)
    return path in _IN_TREE or os.path.basename(path) in _SUBPATHS


def _warn(path: str, what: str, e: BaseException | None = None) -> None:
    if (path, what) in _warned:
        return
    _warned.add((path, what))
    # the exception on one line: LLVM errors span several
    detail = "" if e is None else f" ({type(e).__name__}: {' '.join(str(e).split())})"
    warnings.warn(f"numba cache file {path} {what}{detail}", RuntimeWarning, stacklevel=3)


#: the numba internals wrapped here (as in numba 0.68); with another layout nothing is wrapped
_NEEDED = {"IndexDataCacheFile": ("_load_index", "_load_data", "_save_data", "save", "_data_path", "_dump",
                                  "_open_for_write"),
           "Cache": ("load_overload",)}
#: the frame's head, then 32 bytes of SHA-256(data file name, payload), then the payload. It starts with a
#: whole pickle of None, so a reader without this module (an older bayesim in the same checkout) unpickles
#: None: a silent cache miss, not an error
_FRAME = b"\x80\x05N.bayesim numba cache, sha256:"
_PICKLE_HEAD = b"\x80"  # the PROTO opcode every pickle numba writes (protocol >= 2) starts with


def _digest(name: str, payload: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\0" + payload).digest()


def _read_framed(self, name):
    """The unpickled content of bayesim's data file `name`, or None (a miss) when it is unframed or damaged."""
    path = self._data_path(name)
    with open(path, "rb") as f:  # an OSError goes to numba's own handling (a file removed meanwhile)
        raw = f.read()
    if not raw.startswith(_FRAME):
        # an older bayesim's file (numba's plain pickle: recompiled silently) or one damaged at its start; never
        # used, and never unpickled (its content is not checked)
        if not raw.startswith(_PICKLE_HEAD):
            _warn(path, "is unreadable (not a numba cache data file); recompiling the kernel")
        return None
    head = len(_FRAME) + 32
    payload = raw[head:]
    if raw[len(_FRAME):head] != _digest(name, payload):
        _warn(path, "is damaged (its SHA-256 does not match its content); recompiling the kernel")
        return None
    return pickle.loads(payload)


def install() -> None:
    """Wrap numba's cache-file readers and writers once per process (idempotent). A numba whose caching
    internals differ is left as it is: damaged caches then fail as numba makes them fail."""
    if not all(hasattr(getattr(caching, c, None), a) for c, attrs in _NEEDED.items() for a in attrs):
        return
    cls = caching.IndexDataCacheFile
    if getattr(cls, _MARK, False):
        return
    load_index, load_data, save_data, save = cls._load_index, cls._load_data, cls._save_data, cls.save

    def _load_index(self):
        try:
            return load_index(self)
        except Exception as e:  # noqa: BLE001 - any unpickling failure of a damaged file
            if not _ours(self):
                raise
            if not isinstance(e, IsADirectoryError):  # (a folder: the failed save says so)
                _warn(self._index_path, "is unreadable; recompiling the kernel", e)
            return {}  # no entries: the kernel compiles, and the next save rewrites the index

    def _load_data(self, name):
        if not _ours(self):
            return load_data(self, name)
        try:
            return _read_framed(self, name)
        except OSError:
            raise  # numba's own handling: a data file removed while the index still names it
        except Exception as e:  # noqa: BLE001
            _warn(self._data_path(name), "is unreadable; recompiling the kernel", e)
            return None  # a miss: the kernel compiles, and the save overwrites this file

    def _save_data(self, name, data):
        if not _ours(self):
            return save_data(self, name, data)
        payload = self._dump(data)
        with self._open_for_write(self._data_path(name)) as f:
            f.write(_FRAME + _digest(name, payload) + payload)

    def _save(self, key, data):
        try:
            return save(self, key, data)
        except OSError as e:
            if not _ours(self):
                raise
            _warn(self._index_path, "or its data file cannot be written; the kernel runs uncached", e)

    cls._load_index, cls._load_data, cls._save_data, cls.save = _load_index, _load_data, _save_data, _save
    setattr(cls, _MARK, True)

    # a data file that unpickles but whose compiled code cannot be rebuilt (e.g. a flipped byte in the
    # LLVM bitcode) is a miss too
    cache_cls = caching.Cache
    load_overload = cache_cls.load_overload

    def _load_overload(self, sig, target_context):
        try:
            cres = load_overload(self, sig, target_context)
        except Exception as e:  # noqa: BLE001
            if not _ours(self._cache_file):
                raise
            _warn(self._cache_file._index_path, "holds a kernel that cannot be rebuilt; recompiling it", e)
            return None
        # an index that still loads but sends this signature to another signature's data file (a damaged
        # byte, or two processes saving at once): that kernel would fail on every call
        if cres is not None and _ours(self._cache_file):
            args = tuple(sigutils.normalize_signature(sig)[0])
            if tuple(cres.signature.args) != args:
                _warn(self._cache_file._index_path, "sends a kernel signature to another signature's compiled "
                      "code; recompiling it", TypeError(f"{cres.signature.args} for {args}"))
                return None
        return cres

    cache_cls.load_overload = _load_overload
