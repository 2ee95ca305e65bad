"""Score your own model against reference models whose features are already on disk.

As the original platonic-rep library offered::

    import platonic
    ref = platonic.Alignment(features_dir="results/u={}_features", modelset="demo",
                             modality="language", dataset="embedded", level=0)
    texts = ref.get_data("text")        # the exact captions the references saw; or "image"
    feats = my_model(texts)             # [N, D] or [N, layers, D]
    ref.score(feats, metric="mutual_knn", topk=10)
    # {reference model id: (best score, (reference layer, your layer))}, -1 = all layers
    ref.score(feats, null=1000)         # + a Calibration: null mean / p95, p-value, calibrated, CI

Nothing is downloaded: the reference features are files written by extract_features.py, and
`get_data` rebuilds the samples from platonic.data.datasets, checked against the fingerprints stored in
those files when they hold one.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from PIL import Image

from platonic.core import metrics
from platonic.core.alignment import (
    LayerKernels,
    best_of_grid,
    check_layered,
    load_kernels,
    metric_kwargs,
    prepare_features,
    score_grid,
)
from platonic.core.calibration import N_BOOTSTRAP, calibrate, check_counts
from platonic.data.datasets import dataset_label, load_data
from platonic.data.level_sources import file_levels
from platonic.errors import PlatonicError
from platonic.io.features import read_meta, resolve_feature_file
from platonic.io.fingerprints import images_fingerprint, texts_fingerprint
from platonic.io.results import Calibration
from platonic.io.storage import level_dir
from platonic.models.registry import LANGUAGE, VISION, get_models

DEFAULT_POOL = {LANGUAGE: "avg", VISION: "cls"}
_DATA_KINDS = {"text": "text", LANGUAGE: "text", "image": "image", VISION: "image"}
Score = tuple[float, tuple[int, int] | None]


class Alignment:
    """Reference models of one modality, on one dataset (and uniqueness level).

    `features_dir` is the feature root given to extract_features.py (`{}` stands for the level);
    `models` are model ids, or `modelset` names a set whose `modality` models are used.
    `captions` is the published-format caption file the language features were extracted
    with, needed only by `get_data("text")` at a level of a dataset without levels of its own;
    `allow_caption_mismatch` as extract_features.py's flag of that name.
    """

    def __init__(self, features_dir: str | os.PathLike, models: list[str] | None = None,
                 dataset: str = "minhuh/prh", subset: str | None = None,
                 modality: str = LANGUAGE, pool: str | None = None, level: int | None = None,
                 modelset: str | None = None, captions: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu", precise: bool = False,
                 allow_caption_mismatch: bool = False):
        if modality not in DEFAULT_POOL:
            raise PlatonicError(f"modality must be {LANGUAGE} or {VISION}, got {modality!r}")
        self.dataset, self.subset = dataset_label(dataset, subset)
        self.modality, self.level, self.captions = modality, level, captions
        self.allow_caption_mismatch = allow_caption_mismatch
        self.pool = pool or DEFAULT_POOL[modality]
        self.device, self.precise = torch.device(device), precise
        self.models = _model_ids(models, modelset, modality)
        root = level_dir(features_dir, level)
        self.paths = {m: resolve_feature_file(root, self.dataset, self.subset, m, self.pool)
                      for m in self.models}
        missing = [str(p) for p in self.paths.values() if not p.exists()]
        if missing:
            raise PlatonicError(f"{len(missing)} reference feature file(s) missing (run "
                                f"extract_features.py first): {', '.join(missing)}")
        self.metas = {m: read_meta(p) for m, p in self.paths.items()}
        self.num_samples = _common_num_samples(self.metas)
        self._kernels: dict[tuple[str, bool], LayerKernels] = {}

    def get_data(self, modality: str) -> list[str] | list[Image.Image]:
        """The texts ("text") or images ("image") the reference features were extracted on."""
        kind = _DATA_KINDS.get(modality)
        if kind is None:
            raise PlatonicError(f"get_data: modality must be 'text' or 'image', got {modality!r}")
        data = load_data(self.dataset, self.subset, self.num_samples)
        if kind == "image":
            self._check_inputs("images_sha256", images_fingerprint(data.images), "images")
            return list(data.images)
        texts = self._texts(data)
        self._check_inputs("texts_sha256", texts_fingerprint(texts), "captions")
        return texts

    def _texts(self, data: Any) -> list[str]:
        if self.level is None:
            return data.texts
        if self.captions is not None:
            return file_levels(self.captions, data.texts, self.allow_caption_mismatch)(self.level)
        if data.level_texts is None:
            raise PlatonicError(f"dataset {self.dataset!r} has no uniqueness levels of its own; "
                                "pass captions= (the caption file used for extraction)")
        return data.level_texts(self.level)

    def _check_inputs(self, key: str, fingerprint: str, what: str) -> None:
        """Refuse samples that differ from those a reference file records (when it records them)."""
        stale = [m for m, meta in self.metas.items() if meta.get(key) not in (None, fingerprint)]
        if stale:
            raise PlatonicError(f"the {what} rebuilt from {self.dataset!r} differ from those the "
                                f"features of {', '.join(stale)} were extracted on")

    def kernels(self, model: str, normalize: bool = True) -> LayerKernels:
        """A reference model's layer kernels, built once (outliers clamped as measure does)."""
        key = (model, normalize)
        if key not in self._kernels:
            self._kernels[key] = load_kernels(self.paths[model], self.device, self.precise, normalize)
        return self._kernels[key]

    def score(self, feats: torch.Tensor | np.ndarray, metric: str = "mutual_knn",
              topk: int | None = 10, normalize: bool = True, null: int = 0,
              bootstrap: int = N_BOOTSTRAP, seed: int = 0,
              **metric_kw: Any) -> dict[str, Score | tuple[float, Any, Calibration]]:
        """Best score of every reference model against `feats` over all layer pairs.

        `feats` is [N, D] or [N, layers, D], rows in the order of `get_data`. Returns
        {model id: (score, (reference layer, your layer))}, -1 meaning all layers concatenated
        and None no score above 0, as `compute_score(reference, feats)` would. With `null=N`,
        each value gains a third item, the `platonic.io.results.Calibration` of the score:
        null from N permutations of your rows, p-value, calibrated score, and a bootstrap CI
        (`bootstrap` replicates) at the chosen layers; an undefined score (NaN) has an
        undefined (NaN) p-value and calibrated score.
        """
        layered = self._as_layered(feats)
        metrics.get_metric(metric)
        if metric_kwargs(metric, topk, {}).get("topk") is not None:
            metrics.check_topk(topk, self.num_samples)
        check_counts(null, bootstrap, null_optional=True)
        mine = LayerKernels(prepare_features(layered, exact=self.precise), normalize)
        out: dict[str, Any] = {}
        for m in self.models:
            grid = score_grid(self.kernels(m, normalize), mine, metric, topk, **metric_kw)
            out[m] = best_of_grid(grid)
            if null:
                out[m] = (*out[m], calibrate(self.kernels(m, normalize), mine, metric, topk, null,
                                             bootstrap, seed, grid=grid, **metric_kw))
        return out

    def _as_layered(self, feats: torch.Tensor | np.ndarray) -> torch.Tensor:
        feats = torch.as_tensor(feats, device=self.device)
        if feats.ndim == 2:
            feats = feats[:, None, :]
        if feats.ndim != 3 or feats.numel() == 0 or not feats.is_floating_point():
            raise PlatonicError(f"features must be a non-empty float [N, D] or [N, layers, D] "
                                f"array, got {feats.dtype} {tuple(feats.shape)}")
        check_layered(feats, "features")
        if feats.shape[0] != self.num_samples:
            raise PlatonicError(f"features have {feats.shape[0]} rows but the reference features "
                                f"hold {self.num_samples} samples of {self.dataset!r}: extract "
                                "them from get_data(), in its order")
        return feats


def _model_ids(models: list[str] | None, modelset: str | None, modality: str) -> list[str]:
    if models is None and modelset is None:
        raise PlatonicError("Alignment needs models=[model ids] or modelset=NAME")
    ids = list(models) if models is not None else [m.id for m in get_models(modelset, modality)]
    if not ids:
        raise PlatonicError(f"no {modality} reference models given")
    return ids


def _common_num_samples(metas: dict[str, dict[str, Any]]) -> int:
    counts = {m: int(meta["num_samples"]) for m, meta in metas.items()}
    if len(set(counts.values())) > 1:
        raise PlatonicError(f"the reference models hold different numbers of samples: {counts}")
    return next(iter(counts.values()))
