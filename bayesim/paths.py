"""Where data and caches live.

Data folder: `--data-dir` > `$BAYESIM_DATA` > the per-user cache (`$BAYESIM_CACHE` or
`~/.cache/bayesim`)/data. Generated artefacts (Ambiguous-MNIST, trained models) go to the data folder
only when it is writable, else to the per-user cache: the given data folder may be read-only (CI).
"""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Per-user writable cache folder (created on demand)."""
    env = os.environ.get("BAYESIM_CACHE")
    if env:
        base = Path(env)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "bayesim"
    return base


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """Resolve the data folder: explicit argument > $BAYESIM_DATA > cache_dir()/data."""
    if explicit:
        return _no_nul(Path(explicit), "the data folder")
    env = os.environ.get("BAYESIM_DATA")
    if env:
        return _no_nul(Path(env), "$BAYESIM_DATA")
    return cache_dir() / "data"


def data_dir_named(explicit: str | os.PathLike | None = None) -> bool:
    """Did the user name the data folder (an argument or $BAYESIM_DATA), rather than leave it to the cache?"""
    return bool(explicit) or bool(os.environ.get("BAYESIM_DATA"))


def beside_config(ref: str | os.PathLike | None, config_file: Path, present=Path.exists) -> str | None:
    """A relative path written in a config file, resolved against that file's folder when something `present`
    accepts is there (else None: the caller keeps it relative to the current folder)."""
    if not ref or Path(ref).expanduser().is_absolute():
        return None
    cand = Path(config_file).parent / ref
    return str(cand) if present(cand) else None


def searched_folders(ref: str | os.PathLike, config_file: Path) -> str:
    """" (looked beside the config, in A, and in B)": where a relative path from a config file was looked for."""
    sub = Path(ref).parent
    return f" (looked beside the config, in {Path(config_file).parent / sub}, and in {Path.cwd() / sub})"


def named_data_dir_problem(value: str | os.PathLike) -> str | None:
    """Why a data folder the user named (a flag or a config key) cannot be used, or None. It must exist even
    where the embedded subsets would leave it unused: a mistyped path must not pass unnoticed."""
    d = Path(value).expanduser()
    if d.is_dir():
        return None
    return (f"{'not a folder' if d.exists() else 'folder not found'}; expected the data folder (mnist/ and "
            f"fashion-mnist/ IDX files)")


def _no_nul(p: Path, what: str) -> Path:
    if "\0" in str(p):
        from bayesim.errors import DataError

        raise DataError(f"{what} {str(p)!r} contains a NUL character; name an existing folder")
    return p


def is_writable(folder: Path) -> bool:
    """True when files may be created in `folder`: the folder, or the nearest existing folder above it,
    accepts new entries. Nothing is created (a failed run leaves no empty folders behind).

    A folder without any write permission bit counts as read-only even for root (who could write
    anyway): a data folder handed over read-only, as ../shared is in CI, is never written into.
    """
    probe = Path(folder)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe.is_dir() and (probe.stat().st_mode & 0o222) != 0 and os.access(probe, os.W_OK | os.X_OK)


def is_card_path(ref: str | os.PathLike) -> bool:
    """Whether a card reference (hardware.device, hardware.crossbar, `devices show NAME`) is a file path rather
    than a name: it ends in .yaml / .yml (any case), or has a folder separator or a leading ~. Anything else is a
    name (`pcm`, `default`), whatever files the current folder holds: a folder or file called `default` there
    must not take the shipped card's place."""
    s = str(ref)
    seps = [os.sep, "/"] + ([os.altsep] if os.altsep else [])
    return s.lower().endswith((".yaml", ".yml")) or any(c in s for c in seps) or s.startswith("~")


def local_path_hint(ref: str) -> str:
    """The hint of an unknown card name: ' (./ref is a file in the current folder; ...)' when a regular file (or
    a link to one) named `ref` is there, so the name was probably meant as its path; for '', '.' and '..', which
    are no names, what to give instead; else ''. A folder of that name gets no hint: ./ref would name a folder,
    not a card."""
    if not ref.strip():
        return " (the reference is empty: give a card name, or the path of a card file such as ./my_card.yaml)"
    if ref in (".", ".."):
        return (f" ({ref!r} is a folder, not a card: give a card name, or the path of a card file such as "
                f"./my_card.yaml)")
    if not Path(ref).is_file():
        return ""
    return f" (./{ref} is a file in the current folder; a card path is written with a / or a .yaml ending, " \
           f"e.g. ./{ref})"
