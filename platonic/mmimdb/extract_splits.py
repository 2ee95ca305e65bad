"""The features stage of the MM-IMDb study, on the project's one extraction machinery.

Each split is one "level" of `platonic.stages.extract` (a folder named after the split): every
language model is loaded once and encodes the plots of train, dev and test (every hidden state,
mean-pooled; the language-model head is skipped: the study needs no next-token loss); each
vision model encodes the test posters once (per-block features). Files are reused when their input fingerprint (the exact texts or images and the settings) matches.
"""

from __future__ import annotations

from pathlib import Path

from platonic.data.datasets import ImageSequence
from platonic.errors import PlatonicError
from platonic.io.fingerprints import images_fingerprint
from platonic.io.storage import read_json
from platonic.mmimdb.dataset import (
    DEFAULT_NUM_SAMPLES,
    SPLITS,
    Selection,
    load_image,
    save_selection,
    select_ids,
    selection_record,
    shortfall_note,
)
from platonic.mmimdb.genres import label_matrix, unknown_note
from platonic.mmimdb.layout import ALIGNMENT_SPLIT, FEATURE_DATASET, Layout
from platonic.models.registry import ModelSpec
from platonic.run.cli_args import RaySettings
from platonic.stages.extract import RunStats, Settings, extract_language, extract_vision


def select_movies(root: Path, layout: Layout, num_samples: int | None = DEFAULT_NUM_SAMPLES,
                  seed: int = 0, splits: tuple[str, ...] = SPLITS) -> dict[str, Selection]:
    """The movies of every split (the authors' sampled ids, else the seeded sampler), each saved
    as JSON under `layout.ids_dir` (rewritten only when it changed), the test split's with the
    fingerprint of its posters; notes printed once."""
    if num_samples is not None and num_samples < 1:
        raise PlatonicError(f"--num_samples must be >= 1, got {num_samples}")
    selections = {split: select_ids(root, split, num_samples, seed) for split in splits}
    if ALIGNMENT_SPLIT in selections:
        test = selections[ALIGNMENT_SPLIT]
        test.images_sha256 = images_fingerprint(load_image(m) for m in test.movies)
    for selection in selections.values():
        for note in (selection.note(), shortfall_note(selection)):
            if note:
                print(note)
        _save_if_changed(layout.selection(selection.split), selection, root)
    _, unknown = label_matrix(m.genres for s in selections.values() for m in s.movies)
    if note := unknown_note(unknown):
        print(note)
    return selections


def _save_if_changed(path: Path, selection: Selection, root: Path) -> None:
    try:
        if read_json(path) == selection_record(selection, root):
            return
    except (OSError, ValueError):
        pass
    save_selection(path, selection, root)


def feature_settings(layout: Layout, device: str, batch_size: int = 32, dtype: str = "bfloat16",
                     force_remake: bool = False, max_length: int | None = None) -> Settings:
    return Settings(output_dir=str(layout.feat_dir), dataset=FEATURE_DATASET, subset=None,
                    pool="avg", batch_size=batch_size, device=device, dtype=dtype,
                    force_remake=force_remake, max_length=max_length, next_token_loss=False)


def extract_study_features(language: list[ModelSpec], vision: list[ModelSpec],
                           selections: dict[str, Selection], settings: Settings,
                           ray: RaySettings | None = None) -> RunStats:
    """Plots of every split through each language model (one load each), test posters through
    each vision model (one pass each); with `ray` (`--ray`), one Ray task per model."""
    texts = {split: [m.text for m in s.movies] for split, s in selections.items()}
    movies = selections[ALIGNMENT_SPLIT].movies if vision else []
    posters = ImageSequence(lambda i: load_image(movies[i]), range(len(movies)))  # read as used
    if ray is not None:
        from platonic.run.ray_stages import extract_on_ray

        return extract_on_ray(language, vision, texts, posters, settings, ray,
                              vision_levels=[ALIGNMENT_SPLIT])
    stats = RunStats()
    sha = images_fingerprint(posters) if vision else ""  # every poster read before any model runs
    for spec in language:
        extract_language(spec, texts, settings, stats)
    for spec in vision:
        extract_vision(spec, posters, sha, [ALIGNMENT_SPLIT], settings, stats)
    return stats
