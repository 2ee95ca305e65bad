"""The Lightning data module of the CLIP finetuning, on the MM-IMDb readers of `platonic.mmimdb`.

Every `clip_weight` sees the same data: all valid movies of train (fit), dev (checkpoint and
setting choice) and test (reported F1), each labelled 1/0 for genre `class_idx`, with the same
augmentation (the original switched data set, labels and augmentation with the weight). The
alignment of the towers is measured on the study's sampled test movies (`select_ids`), the set
the MM-IMDb study measures its models on.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from platonic.mmimdb.dataset import (
    DEFAULT_NUM_SAMPLES,
    Movie,
    load_image,
    resolve_root,
    sample_ids,
    select_ids,
)
from platonic.mmimdb.genres import binary_label, check_class_idx

Transform = Callable[[object], torch.Tensor]


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
    def __init__(self, class_idx: int, train_transform: Transform, eval_transform: Transform,
                 root: str | os.PathLike | None = None, batch_size: int = 64, num_workers: int = 0,
                 align_samples: int | None = DEFAULT_NUM_SAMPLES, sample_seed: int = 0):
        super().__init__()
        self.class_idx = check_class_idx(class_idx)
        self.root = resolve_root(root)
        self.train_transform, self.eval_transform = train_transform, eval_transform
        self.batch_size, self.num_workers = batch_size, num_workers
        self.align_samples, self.sample_seed = align_samples, sample_seed
        self.splits: dict[str, MovieDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        for split in ("train", "dev", "test"):
            movies = sample_ids(self.root, split, None, self.sample_seed).movies
            transform = self.train_transform if split == "train" else self.eval_transform
            self.splits[split] = MovieDataset(movies, self.class_idx, transform)
        align = select_ids(self.root, "test", self.align_samples, self.sample_seed).movies
        self.splits["align"] = MovieDataset(align, self.class_idx, self.eval_transform)

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
