"""User-facing errors.

Every bad input (a malformed file, an unknown key, a value out of range, a corrupt data set,
NaN in a checkpoint) raises a `BayesimError` whose message names the file, the key and what is
allowed. The command line prints that message on one line and exits with code 2.
"""
from __future__ import annotations


class BayesimError(ValueError):
    """An error caused by the user's input; its message is complete and self-contained."""


class ConfigError(BayesimError):
    """A configuration / card / checkpoint value that is missing, unknown or out of range.

    `source` is the file (or "<dict>"), `key` the dotted key path inside it.
    """

    def __init__(self, message: str, source: str | None = None, key: str | None = None):
        self.source = source
        self.key = key
        self.message = message
        where = ""
        if source and key:
            where = f"{source}: {key}: "
        elif source:
            where = f"{source}: "
        elif key:
            where = f"{key}: "
        super().__init__(where + message)


class DataError(BayesimError):
    """A data file that is missing, truncated or corrupt."""


class DataMissing(DataError):
    """A data set that is not there yet (not generated, nothing in the folder): a report may list it as
    missing, where a file that is there but unreadable stays an error."""
