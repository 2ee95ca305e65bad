"""Keep third-party retry chatter off the screen where we report the failure ourselves."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def hub_warnings_silenced() -> Iterator[None]:
    """Silence the Hugging Face Hub client's warnings (one per retry when offline) for a block."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
