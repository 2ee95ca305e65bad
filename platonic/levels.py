"""Uniqueness levels: the default list, the one check of a level, and the `--levels` parser.

A uniqueness level is an integer percentage 0..100 (0: the faithful caption, 100: a caption that
shares nothing with its image). Every place that takes levels checks them with `check_levels`.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable

from platonic.errors import PlatonicError

ALL_LEVELS: tuple[int, ...] = tuple(range(0, 101, 10))


def check_levels(levels: Iterable[int], where: str = "uniqueness levels") -> list[int]:
    """The distinct levels, sorted; each must be an integer 0..100 and there must be one.

    `where` starts the error message (a flag, a dataset) so the user knows what to fix.
    """
    levels = list(levels)
    bad = [lv for lv in levels if not isinstance(lv, numbers.Integral) or not 0 <= lv <= 100]
    if bad:
        raise PlatonicError(f"{where}: levels must be integers 0..100, got {bad}")
    if not levels:
        raise PlatonicError(f"{where}: no uniqueness levels given")
    return sorted(set(levels))


def parse_levels(spec: str) -> list[int]:
    """`all` (0,10,..,100), a list `0,20,40`, `start:stop:step`, or `0,10,...,100`."""
    spec = spec.strip()
    if spec == "all":
        return list(ALL_LEVELS)
    if spec.count(":") == 2:
        start, stop, step = (int(p) if p.strip().isdigit() else -1 for p in spec.split(":"))
        spec = ",".join(map(str, range(start, stop + 1, step))) if min(start, stop, step) >= 0 and step else "x"
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    try:
        if "..." in parts:
            at = parts.index("...")
            first, second, last = int(parts[at - 2]), int(parts[at - 1]), int(parts[at + 1])
            head = [int(p) for p in parts[:at]]
            levels = head + list(range(second + (second - first), last + 1, second - first))
        else:
            levels = [int(p) for p in parts]
    except (ValueError, IndexError) as err:
        raise PlatonicError(f"--levels: cannot parse {spec!r}; use 'all', '0,50,100' or '0,10,...,100'") from err
    return check_levels(levels, f"--levels {spec!r}")
