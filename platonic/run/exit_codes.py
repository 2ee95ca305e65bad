"""How a script ends: a `PlatonicError` as one line and exit code 2, Ctrl-C as exit code 130."""

from __future__ import annotations

import sys
from collections.abc import Callable

from platonic.errors import PlatonicError


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
