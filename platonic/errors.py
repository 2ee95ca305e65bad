"""One error type for bad input, and the wrapper that turns it into one line and exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable


class PlatonicError(Exception):
    """Bad input or state the user can fix; shown as a single line, never as a traceback."""


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run a command-line `main`, printing a `PlatonicError` as one line and exiting non-zero."""
    try:
        code = main(argv)
    except PlatonicError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: finished outputs are kept, a rerun redoes only what is missing",
              file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
