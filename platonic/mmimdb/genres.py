"""The one genre order of the MM-IMDb study: names <-> column indices, multi-hot and binary labels.

`GENRES` is the published 23-genre list (the original's `genres_`). Every probe column,
per-genre result, plot title and binary `class_idx` uses this order. The original built its
probe targets with a `MultiLabelBinarizer`, which sorts the classes, so its columns were
alphabetical (`ALPHABETICAL`) while its plots were titled in `GENRES` order;
`original_plot_titles()` says which genre each of its titles really showed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np

from platonic.errors import PlatonicError

GENRES: tuple[str, ...] = (
    "drama", "comedy", "romance", "thriller", "crime", "action", "adventure", "horror",
    "documentary", "mystery", "sci-fi", "music", "fantasy", "family", "biography", "war",
    "history", "animation", "musical", "western", "sport", "short", "film-noir",
)
NUM_GENRES = len(GENRES)
GENRE_INDEX: dict[str, int] = {name: i for i, name in enumerate(GENRES)}
ALPHABETICAL: tuple[str, ...] = tuple(sorted(GENRES))


def normalise(name: str) -> str:
    """The dataset's capitalised genre ("Sci-Fi", "Film-Noir") as it appears in `GENRES`."""
    return str(name).strip().lower()


def multi_hot(genres: Iterable[str], unknown: Counter | None = None) -> np.ndarray:
    """A float32 vector of 23 columns in `GENRES` order; genres outside it are dropped.

    Dropped names are added to `unknown` (a Counter) when one is given, so callers can report
    how many labels they lost.
    """
    row = np.zeros(NUM_GENRES, dtype=np.float32)
    for name in genres:
        index = GENRE_INDEX.get(normalise(name))
        if index is None:
            if unknown is not None:
                unknown[normalise(name)] += 1
            continue
        row[index] = 1.0
    return row


def label_matrix(genre_lists: Iterable[Iterable[str]]) -> tuple[np.ndarray, Counter]:
    """[N, 23] multi-hot labels of many movies, and the count of each dropped (unknown) genre."""
    unknown: Counter = Counter()
    rows = [multi_hot(genres, unknown) for genres in genre_lists]
    matrix = np.stack(rows) if rows else np.zeros((0, NUM_GENRES), dtype=np.float32)
    return matrix, unknown


def unknown_note(unknown: Counter) -> str | None:
    """One line naming the dropped genres and how often each was dropped; None if none were."""
    if not unknown:
        return None
    listed = ", ".join(f"{name!r} x{count}" for name, count in sorted(unknown.items()))
    return f"note: dropped {sum(unknown.values())} genre labels outside the 23-genre list: {listed}"


def check_class_idx(class_idx: int) -> int:
    """`class_idx` as an int in 0..22 (the `GENRES` order), or a one-line error."""
    span = f"0..{NUM_GENRES - 1} (0 = {GENRES[0]}, {NUM_GENRES - 1} = {GENRES[-1]})"
    if isinstance(class_idx, bool) or not isinstance(class_idx, (int, np.integer)):
        raise PlatonicError(f"class_idx {class_idx!r} is not an integer; it indexes the genres {span}")
    if not 0 <= int(class_idx) < NUM_GENRES:
        raise PlatonicError(f"class_idx {class_idx!r} is outside {span}")
    return int(class_idx)


def binary_label(genres: Iterable[str], class_idx: int) -> int:
    """1 if the movie has genre `GENRES[class_idx]`, else 0 (the original's binary target)."""
    target = GENRES[check_class_idx(class_idx)]
    return int(any(normalise(name) == target for name in genres))


def check_genres(names: Iterable[str]) -> list[str]:
    """A user's genre list, normalised and in the given order; a one-line error for unknown names."""
    names = list(names)
    normalised = [normalise(name) for name in names]
    bad = [name for name, norm in zip(names, normalised, strict=True) if norm not in GENRE_INDEX]
    if bad:
        raise PlatonicError(f"unknown genre{'s' if len(bad) > 1 else ''} "
                            f"{', '.join(repr(b) for b in bad)}; known: {', '.join(GENRES)}")
    return normalised


def genre_index(name: str) -> int:
    """Column of one genre name (any capitalisation), or a one-line error."""
    return GENRE_INDEX[check_genres([name])[0]]


def original_plot_titles() -> dict[str, str]:
    """Title of each per-genre plot of the original -> the genre that plot really showed.

    The original plotted column c (alphabetical) under the title `GENRES[c]`.
    """
    return {GENRES[c]: ALPHABETICAL[c] for c in range(NUM_GENRES)}
