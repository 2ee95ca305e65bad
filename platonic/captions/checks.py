"""Checks shared by the generator (is this reply usable?) and the file validator."""

from __future__ import annotations

import re
from collections.abc import Sequence

from platonic.io.published_captions import NUM_LEVELS


class ReplyProblem(Exception):
    """A reply that arrived but cannot be used; the request is asked again."""

    def __init__(self, reason: str, reply: str | None = None) -> None:
        super().__init__(reason)
        self.reply = reply


def normalised(text: str) -> str:
    """Text compared for sameness: case and runs of white space do not count."""
    return " ".join(text.split()).casefold()


def cut_prefixes(original: str) -> set[str]:
    """The original's text before each ':', the captions the original generator produced."""
    return {normalised(original[:i]) for i, ch in enumerate(original) if ch == ":"} - {""}


def strip_label(caption: str, level: int) -> str:
    """Drop a leading `Caption k - P%:` label for this very level (the original's line format)."""
    label = re.compile(rf"\s*Caption\s+{level}\s*-\s*{10 * level}\s*%\s*:\s*", re.IGNORECASE)
    match = label.match(caption)
    return caption[match.end():] if match else caption


def caption_problems(captions: Sequence[str], original: str) -> list[str]:
    """Content problems of 10 captions relative to their original, in words; empty if none."""
    problems = []
    cut = cut_prefixes(original)
    first_level_of: dict[str, int] = {}
    for level, caption in enumerate(captions, start=1):
        text = normalised(caption)
        if not text:
            problems.append(f"caption {level} is empty")
        elif text in first_level_of:
            problems.append(f"caption {level} repeats caption {first_level_of[text]}")
        elif text in cut:
            problems.append(f"caption {level} looks cut: it is the original's text before a ':'")
        elif text == normalised(original):
            problems.append(f"caption {level} repeats the original")
        first_level_of.setdefault(text, level)
    return problems


def clean_reply(captions: Sequence[str], original: str) -> tuple[str, ...]:
    """The reply's captions, whole (only surrounding white space and a level label removed).

    Raises `ReplyProblem` when there are not exactly 10 or any is empty, repeated or cut.
    """
    if len(captions) != NUM_LEVELS:
        raise ReplyProblem(f"expected {NUM_LEVELS} captions, got {len(captions)}")
    cleaned = tuple(strip_label(c, level).strip() for level, c in enumerate(captions, start=1))
    problems = caption_problems(cleaned, original)
    if problems:
        raise ReplyProblem("; ".join(problems))
    return cleaned
