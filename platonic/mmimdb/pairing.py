"""The check every stage that pairs files runs first: a feature file's rows are the movies of the
saved selection of its split, in the same order.

A language feature file records the fingerprint of the texts it encoded (`texts_sha256`), a
vision feature file that of the posters (`images_sha256`); the selection (`mmimdb_ids/<split>.json`)
holds the texts and records the posters' fingerprint. Re-extracting one modality with another
`--seed` (the same movies in another order) or another `--num_samples` rewrites the selection,
and every feature file of the other modality then fails this check instead of being paired
row by row with different movies.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from platonic.errors import PlatonicError
from platonic.io.features import read_meta
from platonic.mmimdb.dataset import Selection, read_selection
from platonic.mmimdb.layout import Layout
from platonic.models.registry import LANGUAGE

RERUN = "rerun mmimdb/extract_features.py (it redoes only the files that are not current)"


def expected_rows(selection: Selection, modality: str) -> tuple[str, str | None]:
    """The metadata key a feature file of `modality` records for its rows, and the value it must
    hold for `selection`'s movies in order (None: the selection records no such fingerprint)."""
    if modality == LANGUAGE:
        return "texts_sha256", selection.texts_sha256
    return "images_sha256", selection.images_sha256


def check_feature_rows(layout: Layout, split: str,
                       models: Iterable[tuple[str, str]]) -> Selection:
    """The saved selection of `split`, after checking that the feature file of every
    (model id, modality) exists and holds its movies in order; else one line naming the files."""
    selection_path = layout.selection(split)
    selection = read_selection(selection_path)
    paths = {model_id: (layout.features(split, model_id, modality), modality)
             for model_id, modality in models}
    missing = [f"model {model_id}: {split} features {path} are missing"
               for model_id, (path, _) in paths.items() if not path.exists()]
    if missing:
        raise PlatonicError(f"{'; '.join(missing)}; run mmimdb/extract_features.py first")
    other: list[Path] = []
    for path, modality in paths.values():
        key, expected = expected_rows(selection, modality)
        if expected is None:
            raise PlatonicError(f"{selection_path} records no fingerprint of its posters (it "
                                f"predates the check that pairs them with {path}); {RERUN}")
        if read_meta(path).get(key) != expected:
            other.append(path)
    if other:
        raise PlatonicError(f"{', '.join(map(str, other))}: made from other {split} movies, or "
                            f"the same in another order, than {selection_path} (features "
                            f"extracted with another --seed or --num_samples?); {RERUN}")
    return selection
