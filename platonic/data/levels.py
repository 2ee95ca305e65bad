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


_LEVELS_USAGE = "use 'all', a list '0,50,100', 'start:stop:step' or '0,10,...,100'"


def parse_levels(spec: str) -> list[int]:
    """`all` (0,10,..,100), a list `0,20,40`, `start:stop:step`, or `0,10,...,100`.

    A range needs an explicit positive step (the third number, or the difference of the two
    terms before `...`) and an end that lies on it: `0,10,...,95` and `0,...,100` are errors,
    never silently shortened.
    """
    text = spec.strip()
    if text == "all":
        return list(ALL_LEVELS)
    levels = _colon_range(spec, text) if ":" in text else _comma_levels(spec, text)
    return check_levels(levels, f"--levels {spec!r}")


def _levels_error(spec: str, why: str) -> PlatonicError:
    return PlatonicError(f"--levels {spec!r}: {why}; {_LEVELS_USAGE}")


def _level_number(spec: str, part: str) -> int:
    try:
        return int(part)
    except ValueError:
        raise _levels_error(spec, f"{part!r} is not an integer") from None


def _stepped(spec: str, start: int, stop: int, step: int) -> list[int]:
    """start, start + step, ..., stop, where stop must lie on that grid."""
    if step <= 0:
        raise _levels_error(spec, f"a range needs a positive step, got {step}")
    if stop < start or (stop - start) % step:
        raise _levels_error(spec, f"{stop} is not reached from {start} in steps of {step}")
    return list(range(start, stop + 1, step))


def _colon_range(spec: str, text: str) -> list[int]:
    parts = text.split(":")
    if len(parts) != 3:
        raise _levels_error(spec, "a range is start:stop:step")
    start, stop, step = (_level_number(spec, p.strip()) for p in parts)
    return _stepped(spec, start, stop, step)


def _comma_levels(spec: str, text: str) -> list[int]:
    """A list, possibly with one `a,b,...,end` run whose step is b - a (more values may follow)."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if "..." not in parts:
        return [_level_number(spec, p) for p in parts]
    at = parts.index("...")
    if parts.count("...") > 1 or at < 2 or at == len(parts) - 1:
        raise _levels_error(spec, "'...' goes once, after two levels that give the step and "
                                  "before the last level")
    head = [_level_number(spec, p) for p in parts[:at]]
    tail = [_level_number(spec, p) for p in parts[at + 1:]]
    return head + _stepped(spec, head[-1], tail[0], head[-1] - head[-2]) + tail[1:]
