"""The one error type a user sees as one line.

Every error caused by what the user asked for (a bad value, a missing file, a run that cannot
be resumed) derives from :class:`UserError`. The CLI layer (:mod:`prunelab.cli`) catches this one
type and prints ``prunelab: error: <first line>`` with exit status 2; anything else is a bug and
keeps its traceback. Library code raises the subclass that names its area, so that callers can
catch narrower kinds; the CLI never needs to know them.
"""

from __future__ import annotations


class UserError(ValueError):
    """A bad input, reported as one line (``prunelab: error: ...``, exit 2), nothing written."""


class ConfigError(UserError):
    """A bad setting on the command line or in a config file."""


def one_line(exc: BaseException | str) -> str:
    """The first non-empty line of an error message (the type name if it has none)."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__ if isinstance(exc, BaseException) else ""
