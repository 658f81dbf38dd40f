"""Errors a user can act on: a bad config, missing or malformed data, wrong weights.

The command line reports these in one line (exit status 2); every other exception is a bug and
keeps its traceback. Each class also derives from the built-in exception that callers caught
before it existed (``ValueError``, ``FileNotFoundError``), so existing ``except`` clauses still
work.
"""

from __future__ import annotations

__all__ = ["ConfigError", "DataError", "UserError", "WeightsError"]


class UserError(Exception):
    """Base of the errors whose message alone tells the user what to change."""


class ConfigError(UserError, ValueError):
    """A config file or override that cannot be used; the message says what to change."""


class DataError(UserError, FileNotFoundError):
    """A data set that is missing, incomplete or not in the expected on-disk layout."""


class WeightsError(UserError, ValueError):
    """A weight file that cannot be read or does not fit the model (keys, shapes, arch)."""
