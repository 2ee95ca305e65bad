"""The Lightning data module of the CLIP finetuning, on the MM-IMDb readers of `platonic.mmimdb`.

Every `clip_weight` sees the same data: all valid movies of train (fit), dev (checkpoint and
setting choice) and test (reported F1), each labelled 1/0 for genre `class_idx`, with the same
augmentation (the original switched data set, labels and augmentation with the weight). The
alignment of the towers is measured on the study's sampled test movies (`select_ids`), the set
the MM-IMDb study measures its models on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from platonic.io.storage import sha256_file, sha256_of
from platonic.mmimdb.dataset import (
    DEFAULT_NUM_SAMPLES,
    Movie,
    Selection,
    load_image,
    sample_ids,
    select_ids,
)
from platonic.mmimdb.genres import binary_label, check_class_idx

Transform = Callable[[object], torch.Tensor]
SPLITS = ("train", "dev", "test", "align")


@dataclass(frozen=True)
class RunMovies:
    """The movies of one run, read from `root`: every valid movie of train, dev and test, and
    the sampled test movies whose tower features are exported and aligned ("align")."""

    root: Path
    selections: dict[str, Selection]

    @classmethod
    def select(cls, root: Path, align_samples: int | None = DEFAULT_NUM_SAMPLES,
               sample_seed: int = 0) -> RunMovies:
        selections = {split: sample_ids(root, split, None, sample_seed)
                      for split in ("train", "dev", "test")}
        selections["align"] = select_ids(root, "test", align_samples, sample_seed)
        return cls(root, selections)

    def identity(self) -> dict[str, Any]:
        """What the run reads: the root, and per split the movie count, the hash of the ids in
        order and a hash of their content (id, text, genres and poster bytes of each)."""
        return {"root": str(self.root),
                "splits": {split: {"count": len(s.movies), "ids_sha256": ids_sha256(s.ids),
                                   "content_sha256": movies_sha256(s.movies)}
                           for split, s in self.selections.items()}}


def ids_sha256(ids: list[str]) -> str:
    """The hash of an id list in order, as feature files record it (`ids_sha256`)."""
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def movies_sha256(movies: list[Movie]) -> str:
    return sha256_of([[m.id, m.text, list(m.genres), sha256_file(m.image_path)] for m in movies])


class MovieDataset(Dataset):
    """(poster tensor, plot text, 0/1 label of genre `class_idx`) per movie."""

    def __init__(self, movies: list[Movie], class_idx: int, transform: Transform):
        self.movies = movies
        self.labels = [float(binary_label(m.genres, class_idx)) for m in movies]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.movies)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str, float]:
        movie = self.movies[i]
        return self.transform(load_image(movie)), movie.text, self.labels[i]


class MMIMDbDataModule(L.LightningDataModule):
    def __init__(self, movies: RunMovies, class_idx: int, train_transform: Transform,
                 eval_transform: Transform, batch_size: int = 64, num_workers: int = 0):
        super().__init__()
        class_idx = check_class_idx(class_idx)
        self.movies = movies
        self.batch_size, self.num_workers = batch_size, num_workers
        self.splits = {split: MovieDataset(movies.selections[split].movies, class_idx,
                                           train_transform if split == "train" else eval_transform)
                       for split in SPLITS}

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        return DataLoader(self.splits[split], batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("dev")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def align_dataloader(self) -> DataLoader:
        """The sampled test movies whose tower features are exported and aligned."""
        return self._loader("align")
