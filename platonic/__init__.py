"""platonic: how language and vision representations align, and how that depends on the data."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Alignment"]


def __getattr__(name: str) -> Any:
    """`platonic.Alignment` without importing torch on `import platonic`."""
    if name == "Alignment":
        from platonic.api import Alignment

        return Alignment
    raise AttributeError(f"module 'platonic' has no attribute {name!r}")
