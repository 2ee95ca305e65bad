"""Drivers started by the tests must be interruptible, however pytest itself was started."""

from __future__ import annotations

import signal


def default_interrupts() -> None:
    """`preexec_fn` of a driver the test will interrupt: SIGINT and SIGQUIT back to their
    defaults. A command run in the background of a non-interactive shell starts with them
    ignored, its children inherit that, and bash cannot trap a signal ignored on entry, so the
    driver's Ctrl-C handling would never run."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)
