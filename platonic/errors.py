"""One error type for bad input (a script shows it as one line and exits 2: `platonic.run.exit_codes`)."""

from __future__ import annotations


class PlatonicError(Exception):
    """Bad input or state the user can fix; shown as a single line, never as a traceback."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type when it has none), for one-line errors."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
