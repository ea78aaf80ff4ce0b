"""Atomic file writing: nothing half-written is ever left behind; output paths checked before any work."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from bayesim.errors import BayesimError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    created = []  # folders this write makes, deepest first: removed again if it fails
    d = path.parent
    while not d.exists() and d != d.parent:
        created.append(d)
        d = d.parent
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        yield Path(tmp)
        try:
            os.replace(tmp, path)
        except OSError as e:  # e.g. a folder where the file should go
            raise BayesimError(f"{path}: cannot be written ({e.strerror or e})") from None
    except BaseException:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def write_bytes_atomic(path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def write_text_atomic(path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ------------------------------------------------------------------ input files
def not_regular(path) -> str | None:
    """"is not a regular file (a named pipe)" when `path` exists but is a FIFO, socket or device, which reading
    would block on or misread; None for a regular file (or a link to one), a folder or nothing (the callers say
    "is a folder" / "not found" themselves)."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):  # missing, a broken link, a path with NUL: not this function's message
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    kind = ("a named pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a special file")
    return f"is not a regular file ({kind})"


# ------------------------------------------------------------------ output paths, checked before any work
def check_out_dir(out, what: str = "--out") -> None:
    """Refuse an output folder that cannot be written, before any work and without creating anything.

    It must not be empty, and be a writable folder, or not exist yet with its nearest existing ancestor a
    writable folder (it is created when metrics.json is written); `out/metrics.json` must not be a folder.
    """
    text = os.fspath(out)
    out = Path(text)

    def fail(why: str):
        fix = "give a folder that can be created or written" if what == "--out" else "choose one with --out"
        raise BayesimError(f"{what} {text if text.strip() and text.isprintable() else repr(text)}: {why}; {fix}")

    if not text.strip():  # Path("") is the current folder: an empty --out must not write there
        fail("empty")
    if "\0" in text:
        fail("contains a NUL character")
    try:
        if out.exists():
            if not out.is_dir():
                fail("exists and is not a folder")
            if (out / "metrics.json").is_dir():
                fail("metrics.json in it is a folder")
            _check_folder(out, fail)
        else:
            if out.is_symlink():
                fail("is a broken symbolic link")
            _check_folder(out.absolute().parent, fail)
    except OSError as e:  # e.g. a folder on the way that may not be searched
        fail(f"cannot be checked ({e.strerror or e})")


def check_out_file(path, what: str = "--out") -> None:
    """Refuse an output file path that cannot be written, before any work and without creating anything.

    It must not be empty, a folder or another non-regular file (an existing file is replaced); its folder
    must be writable, or not exist yet with its nearest existing ancestor a writable folder (see
    `check_out_dir`).
    """
    text = os.fspath(path)
    p = Path(text)

    def fail(why: str):
        raise BayesimError(f"{what} {text if text.strip() and text.isprintable() else repr(text)}: {why}; "
                           "give a file path that can be created or written")

    if not text.strip():
        fail("empty")
    if "\0" in text:
        fail("contains a NUL character")
    try:
        if text.endswith(("/", os.sep)) or p.is_dir():
            fail("is a folder")
        if p.exists():
            if not p.is_file():
                fail("exists and is not a regular file")
        elif p.is_symlink():
            fail("is a broken symbolic link")
        _check_folder(p.absolute().parent, fail)
    except OSError as e:  # e.g. a folder on the way that may not be searched
        fail(f"cannot be checked ({e.strerror or e})")


def _check_folder(folder: Path, fail) -> None:
    """`fail(why)` unless `folder` is, or can be created as, a writable folder on a real file system."""
    anc = folder
    while not anc.exists():
        if anc.is_symlink():
            fail(f"{anc} is a broken symbolic link")
        anc = anc.parent
    if not anc.is_dir():
        fail(f"{anc} is not a folder")
    from bayesim.paths import is_writable

    if not is_writable(anc):  # without any write bit it counts as read-only even for root, as data folders do
        fail(f"{anc} is not writable")
    try:  # read-only file systems, and pseudo file systems (/proc, /sys) where nothing can be created
        st = os.statvfs(anc)
        if st.f_flag & getattr(os, "ST_RDONLY", 1):
            fail(f"{anc} is on a read-only file system")
    except (OSError, AttributeError):
        pass
    if _pseudo_fs(anc):
        fail(f"{anc} is on a kernel pseudo file system where files cannot be written")


def _pseudo_fs(path) -> bool:
    """Is `path` on a kernel pseudo file system (proc, sysfs, ...)? Linux only; False when unknown."""
    try:
        mounts = open("/proc/self/mounts", encoding="utf-8", errors="replace").read().splitlines()
    except OSError:
        return False
    real = os.path.realpath(path)
    best, fstype = "", ""
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        mnt = parts[1].replace("\\040", " ")
        if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
            best, fstype = mnt, parts[2]
    return fstype in {"proc", "sysfs", "devpts", "cgroup", "cgroup2", "securityfs", "debugfs", "tracefs",
                      "pstore", "bpf", "configfs", "efivarfs", "fusectl", "mqueue", "hugetlbfs", "binfmt_misc"}
