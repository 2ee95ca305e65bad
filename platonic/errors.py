"""One error type for bad input, and the wrapper that turns it into one line and exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable


class PlatonicError(Exception):
    """Bad input or state the user can fix; shown as a single line, never as a traceback."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type when it has none), for one-line errors."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def end_progress_bars() -> None:
    """Close every open tqdm progress bar, so that what is printed next starts on a line of its
    own (an exception leaves its bars open, the cursor after the last one drawn)."""
    tqdm = sys.modules.get("tqdm")
    if tqdm is not None:
        for bar in list(tqdm.tqdm._instances):
            bar.close()


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run a command-line `main`, printing a `PlatonicError` as one line and exiting non-zero."""
    try:
        code = main(argv)
    except PlatonicError as err:
        end_progress_bars()
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        end_progress_bars()
        print("interrupted: finished outputs are kept, a rerun redoes only what is missing",
              file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
