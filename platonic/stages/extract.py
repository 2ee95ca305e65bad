"""One extraction pass: every model loaded once, images encoded once, every level written.

For each (model, level) the feature file lives at
`feature_path(level_dir(output_dir, level), dataset, subset, model, pool)`. A file is reused only
when its stored `input_fingerprint` (the exact texts or images, the weights' identity from
`platonic.io.identity`, and every setting that changes the features) matches and its tensors
still have their recorded content hash; a model is loaded only if one of its files is missing or stale, so a run
killed at any point and started again does only the missing work. Language levels are written
one by one as they finish; captions repeated across levels are encoded once. On the CPU, a
language model with a head encodes the distinct captions of all its levels in one call, as
prefix packs (`platonic.models.language`: captions that begin alike share those positions, about half
of them on the embedded set), and then writes its levels. Vision features do not depend on the
level: they are encoded once and hard-linked (or copied) into every level. One progress bar
counts every caption and image still to encode, over all models, with the time left.
A "level" may also be a named part of a dataset (a split such as "test", as in the MM-IMDb
study): its folder is then named after it (see `platonic.io.storage.level_dir`).
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from platonic.data.datasets import ImageSequence, PairedData
from platonic.data.level_sources import file_levels, rule_levels
from platonic.data.noise import add_noise
from platonic.errors import PlatonicError
from platonic.io.features import feature_path, read_meta, save_features, verified_fingerprint
from platonic.io.fingerprints import images_fingerprint, texts_fingerprint
from platonic.io.storage import Level, atomic_path, level_dir, sha256_of
from platonic.models import language, vision
from platonic.models.hub_vision import TRANSFORMERS, is_hub_vision, vision_loader
from platonic.models.registry import LANGUAGE, MODEL_SETS, VISION, ModelSpec, get_model, get_models

STORAGE_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
VISION_POOL = "cls"
EXTRACTOR_VERSION = 1


@dataclass
class Settings:
    """Where and how features are made; fields marked in `fingerprint_fields` change features."""

    output_dir: str
    dataset: str
    subset: str | None
    pool: str = "avg"
    batch_size: int = 32
    device: str = "cpu"
    dtype: str = "bfloat16"
    force_remake: bool = False
    qlora: bool = False
    force_download: bool = False
    noise_percentage: float = 0.0
    noise_seed: int = 0
    max_length: int | None = None
    padding_side: str = "right"
    next_token_loss: bool = True  # False: no language-model head, no loss / bits per byte
    cpu_fast_paths: bool = True  # False: the plain CPU paths of extractor version 1 (benchmarks)

    @property
    def share_prefixes(self) -> bool:
        """Captions as prefix packs, every level's distinct captions in one call: on the CPU,
        for models with a head (fp32 there, so the same features to rounding, in half the time)."""
        return self.cpu_fast_paths and self.device == "cpu" and self.next_token_loss

    @property
    def cpu_vision(self) -> bool:
        """Vision passes in the CPU layout (`platonic.models.vision.CPU_LAYOUT`)."""
        return self.cpu_fast_paths and self.device == "cpu"

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise PlatonicError(f"--batch_size must be a positive integer, got {self.batch_size!r}")
        if self.padding_side not in ("left", "right"):
            raise PlatonicError(f"padding side must be left or right, got {self.padding_side!r}")

    @property
    def storage_dtype(self) -> torch.dtype:
        if self.dtype not in STORAGE_DTYPES:
            raise PlatonicError(f"--dtype must be one of {', '.join(STORAGE_DTYPES)}, got {self.dtype!r}")
        return STORAGE_DTYPES[self.dtype]

    @property
    def compute_dtype(self) -> torch.dtype:
        return language.compute_dtype(self.device, self.dtype)


@dataclass
class RunStats:
    """What a run did, for the log and the benchmark."""

    loads: Counter = field(default_factory=Counter)
    forward_passes: Counter = field(default_factory=Counter)
    real_tokens: int = 0
    padded_tokens: int = 0
    images_encoded: int = 0
    written: list[Path] = field(default_factory=list)
    reused: list[Path] = field(default_factory=list)
    seconds: float = 0.0


def output_path(settings: Settings, level: Level, model_id: str, pool: str) -> Path:
    """Where one model's features at one level go."""
    return feature_path(level_dir(settings.output_dir, level), settings.dataset, settings.subset,
                        model_id, pool)


def _is_current(path: Path, fingerprint: str, force: bool) -> bool:
    """The file was made from the same inputs and settings, and its tensors are intact."""
    if force or not path.exists():
        return False
    try:
        if read_meta(path).get("input_fingerprint") != fingerprint:
            return False
        verified_fingerprint(path)
    except PlatonicError as err:
        tqdm.write(f"remaking: {err}")
        return False
    return True


def _base_meta(spec: ModelSpec, settings: Settings, pool: str, level: Level,
               num_params: int, fingerprint: str, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": spec.id, "modality": spec.modality, "family": spec.family, "size": spec.size,
        "size_rank": spec.size_rank, "pool": pool, "prompt": None, "dataset": settings.dataset,
        "subset": settings.subset, "level": level, "num_params": num_params,
        "input_fingerprint": fingerprint, "revision": spec.options.get("revision"),
        "storage_dtype": settings.dtype, "compute_dtype": str(settings.compute_dtype).removeprefix("torch."),
        "device": settings.device, **extra,
    }


def _check_finite(feats: torch.Tensor, model_id: str, level: Level, rows: list[int],
                  dtype: str) -> None:
    """`feats` as they will be written (already in the storage dtype: a finite float32 value
    can overflow to inf in float16)."""
    bad = (~torch.isfinite(feats).flatten(1).all(dim=1)).nonzero().flatten().tolist()
    if bad:
        indices = [rows[b] for b in bad]
        shown = ", ".join(map(str, indices[:20])) + (" ..." if len(indices) > 20 else "")
        raise PlatonicError(f"model {model_id}, level {level}: NaN or inf in hidden states (as "
                            f"{dtype}) of sample index(es) {shown}")


# ---- language ---------------------------------------------------------------------------------

def language_fingerprint(spec: ModelSpec, settings: Settings, texts: list[str],
                         weights: dict[str, Any]) -> str:
    """Everything the features depend on: model and weights, texts, and every setting."""
    return sha256_of({
        "extractor": EXTRACTOR_VERSION, "model": spec.id, "revision": spec.options.get("revision"),
        "weights": weights, "texts": texts_fingerprint(texts), "pool": settings.pool,
        "storage_dtype": settings.dtype, "compute_dtype": str(settings.compute_dtype),
        "max_length": settings.max_length, "qlora": settings.qlora,
        "padding_side": settings.padding_side,
        **({} if settings.next_token_loss else {"next_token_loss": False}),
        **({"prefix_packs": {"captions": settings.batch_size, "head_rows": language.HEAD_ROWS}}
           if settings.share_prefixes else {}),
    })


LanguageTodo = dict[Level, tuple[Path, str]]  # level -> (feature file, fingerprint) to make


def language_todo(spec: ModelSpec, texts_by_level: dict[Level, list[str]], settings: Settings,
                  stats: RunStats) -> LanguageTodo:
    """The levels whose feature file is missing or stale (the current ones go to `stats.reused`)."""
    if settings.pool not in ("avg", "last"):
        raise PlatonicError(f"language pooling must be avg or last, got {settings.pool!r}")
    todo = {}
    weights = language.weights_identity(spec)
    for level, texts in texts_by_level.items():
        path = output_path(settings, level, spec.id, settings.pool)
        fingerprint = language_fingerprint(spec, settings, texts, weights)
        if _is_current(path, fingerprint, settings.force_remake):
            stats.reused.append(path)
        else:
            todo[level] = (path, fingerprint)
    return todo


def extract_language(spec: ModelSpec, texts_by_level: dict[Level, list[str]], settings: Settings,
                     stats: RunStats, loader: Callable[..., language.LanguageModel] | None = None,
                     progress: tqdm | None = None) -> None:
    """Features of one language model at every level, with a single model load."""
    todo = language_todo(spec, texts_by_level, settings, stats)
    if todo:
        _extract_language(spec, texts_by_level, todo, settings, stats, loader, progress)


def _extract_language(spec: ModelSpec, texts_by_level: dict[Level, list[str]], todo: LanguageTodo,
                      settings: Settings, stats: RunStats,
                      loader: Callable[..., language.LanguageModel] | None,
                      progress: tqdm | None) -> None:
    _show(progress, spec.id, "loading")
    load = loader or language.load_language_model
    lm = load(spec, settings.device, settings.compute_dtype, settings.qlora, settings.padding_side,
              settings.force_download)
    stats.loads[spec.id] += 1
    _encode_levels(lm, spec, texts_by_level, todo, settings, stats, progress)


def distinct_texts(texts_by_level: dict[Level, list[str]], levels: Iterable[Level]) -> list[str]:
    """Every caption of these levels once, in order of first appearance."""
    return list(dict.fromkeys(t for level in levels for t in texts_by_level[level]))


def captions_to_encode(texts_by_level: dict[Level, list[str]], todo: LanguageTodo,
                       settings: Settings) -> int:
    """How many captions a language model encodes for these `todo` levels (with prefix packs,
    every level's: see `_encode_levels`)."""
    if not todo:
        return 0
    return len(distinct_texts(texts_by_level, texts_by_level if settings.share_prefixes else todo))


def _show(progress: tqdm | None, model_id: str, what: str) -> None:
    """Name what runs on the overall progress bar."""
    if progress is not None:
        progress.set_postfix_str(f"{model_id.rsplit('/', 1)[-1]}: {what}")


def _last_use(texts_by_level: dict[Level, list[str]]) -> dict[str, int]:
    last: dict[str, int] = {}
    for step, texts in enumerate(texts_by_level.values()):
        for text in texts:
            last[text] = step
    return last


Memo = dict[str, tuple[torch.Tensor, dict[str, torch.Tensor]]]  # caption -> features, extras


def _encode_levels(lm: language.LanguageModel, spec: ModelSpec, texts_by_level: dict[Level, list[str]],
                   todo: LanguageTodo, settings: Settings, stats: RunStats,
                   progress: tqdm | None = None) -> None:
    """Encode the `todo` levels one by one, writing each at once; a caption seen before is not
    encoded again. With `settings.share_prefixes`, the distinct captions of every level (also
    the current ones) are encoded first, in one call, and the levels written after: a caption's
    prefix pack, and so its features and loss to the last bit, then depend only on the inputs,
    never on which levels a crash or a lost file left to redo."""
    memo: Memo = {}
    texts_by_level = texts_by_level if settings.share_prefixes else {
        level: texts_by_level[level] for level in todo}
    last_use = _last_use(texts_by_level)
    if settings.share_prefixes:
        _show(progress, spec.id, f"{len(texts_by_level)} levels at once")
        _encode_into(memo, lm, spec, distinct_texts(texts_by_level, texts_by_level), "captions",
                     settings, stats, progress)
    for step, (level, texts) in enumerate(texts_by_level.items()):
        if level not in todo:
            continue
        new = list(dict.fromkeys(t for t in texts if t not in memo))
        if new:
            _show(progress, spec.id, f"level {level}")
            _encode_into(memo, lm, spec, new, f"level {level}", settings, stats, progress)
        feats = _rows_as(memo, texts, settings.storage_dtype)
        _check_finite(feats, spec.id, level, list(range(len(texts))), settings.dtype)
        extras = {k: torch.stack([memo[t][1][k] for t in texts]) for k in memo[texts[0]][1]}
        path, fingerprint = todo[level]
        meta = _base_meta(spec, settings, settings.pool, level, lm.num_params, fingerprint, {
            "texts_sha256": texts_fingerprint(texts), "has_loss": lm.causal and settings.next_token_loss,
            "max_length": settings.max_length})
        save_features(path, feats, meta, extras)
        stats.written.append(path)
        memo = {t: v for t, v in memo.items() if last_use[t] > step}


def _rows_as(memo: Memo, texts: list[str], dtype: torch.dtype) -> torch.Tensor:
    """The texts' features, [N, L, D], made directly in the storage dtype (no float32 copy of
    the whole level beside the memo)."""
    first = memo[texts[0]][0]
    feats = torch.empty(len(texts), *first.shape, dtype=dtype)
    for row, text in enumerate(texts):
        feats[row] = memo[text][0]
    return feats


def _encode_into(memo: Memo, lm: language.LanguageModel, spec: ModelSpec, texts: list[str],
                 desc: str, settings: Settings, stats: RunStats, progress: tqdm | None) -> None:
    out = language.encode_texts(lm, texts, settings.pool, settings.batch_size, settings.max_length,
                                desc=desc, next_token_loss=settings.next_token_loss,
                                share_prefixes=settings.share_prefixes,
                                on_done=progress.update if progress is not None else None)
    stats.forward_passes[spec.id] += out.forward_passes
    stats.real_tokens += out.real_tokens
    stats.padded_tokens += out.padded_tokens
    for row, text in enumerate(texts):
        memo[text] = (out.feats[row], {k: v[row] for k, v in out.extras.items()})


# ---- vision -----------------------------------------------------------------------------------

def vision_fingerprint(spec: ModelSpec, settings: Settings, images_sha: str) -> str:
    """Everything the features depend on: model and weights, images, and every setting."""
    return sha256_of({
        "extractor": EXTRACTOR_VERSION, "model": spec.id, "revision": spec.options.get("revision"),
        "weights": vision.weights_identity(spec),
        "images": images_sha, "noise_percentage": settings.noise_percentage,
        "noise_seed": settings.noise_seed, "storage_dtype": settings.dtype,
        "compute_dtype": str(settings.compute_dtype),
        "random_init_seed": spec.options.get("random_init_seed"),
        **({"loader": TRANSFORMERS} if vision_loader(spec) == TRANSFORMERS else {}),
        **({"cpu_layout": vision.CPU_LAYOUT} if settings.cpu_vision else {}),
    })


def noisy_images(images: Sequence[Image.Image], settings: Settings) -> ImageSequence:
    """The images as the models see them, each perturbed as it is read (none held)."""
    return ImageSequence(lambda i: add_noise(images[i], settings.noise_percentage,
                                             settings.noise_seed, i), range(len(images)))


def link_or_copy(source: Path, target: Path) -> None:
    """Put `source`'s file at `target` atomically: a hard link where possible, else a copy."""
    if source.resolve() == target.resolve():
        return
    with atomic_path(target) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)


@dataclass
class VisionTodo:
    """A vision model's level files: those current, those to make, and their fingerprint."""

    fingerprint: str
    current: list[Path]
    missing: list[Path]

    @property
    def encodes(self) -> bool:
        """Whether the images go through the model (else the missing files are links)."""
        return bool(self.missing) and not self.current


def vision_todo(spec: ModelSpec, images_sha: str, levels: list[Level], settings: Settings,
                stats: RunStats) -> VisionTodo:
    fingerprint = vision_fingerprint(spec, settings, images_sha)
    paths = [output_path(settings, level, spec.id, VISION_POOL) for level in levels]
    current = [p for p in paths if _is_current(p, fingerprint, settings.force_remake)]
    stats.reused.extend(current)
    return VisionTodo(fingerprint, current, [p for p in paths if p not in current])


def extract_vision(spec: ModelSpec, images: Sequence[Image.Image], images_sha: str, levels: list[Level],
                   settings: Settings, stats: RunStats, progress: tqdm | None = None) -> None:
    """Features of one vision model, encoded once and placed in every level's folder."""
    _place_vision(spec, images, images_sha, vision_todo(spec, images_sha, levels, settings, stats),
                  settings, stats, progress)


def _place_vision(spec: ModelSpec, images: Sequence[Image.Image], images_sha: str, todo: VisionTodo,
                  settings: Settings, stats: RunStats, progress: tqdm | None) -> None:
    if not todo.missing:
        return
    source = todo.current[0] if todo.current else _encode_vision(
        spec, images, images_sha, todo.fingerprint, todo.missing[0], settings, stats, progress)
    for path in todo.missing:
        link_or_copy(source, path)
        stats.written.append(path)


def _encode_vision(spec: ModelSpec, images: Sequence[Image.Image], images_sha: str, fingerprint: str,
                   path: Path, settings: Settings, stats: RunStats, progress: tqdm | None) -> Path:
    _show(progress, spec.id, "loading")
    vm = vision.load_vision_model(spec, settings.device, settings.compute_dtype)
    stats.loads[spec.id] += 1
    _show(progress, spec.id, "images")
    out = vision.encode_images(vm, images, settings.batch_size, desc=spec.id,
                               cpu_layout=settings.cpu_vision,
                               on_done=progress.update if progress is not None else None,
                               dtype=settings.storage_dtype)
    stats.forward_passes[spec.id] += out.forward_passes
    stats.images_encoded += len(images)
    feats = out.feats
    _check_finite(feats, spec.id, None, list(range(len(images))), settings.dtype)
    meta = _base_meta(spec, settings, VISION_POOL, None, vm.num_params, fingerprint, {
        "layer_dims": out.layer_dims, "noise_percentage": settings.noise_percentage,
        "noise_seed": settings.noise_seed, "images_sha256": images_sha})
    save_features(path, feats, meta)
    return path


# ---- a whole run ------------------------------------------------------------------------------

def run(language_specs: list[ModelSpec], vision_specs: list[ModelSpec],
        texts_by_level: dict[Level, list[str]], images: Sequence[Image.Image],
        settings: Settings) -> RunStats:
    """Extract every model at every level; language levels share one load, images one pass
    (`platonic.run.ray_stages.extract_on_ray`: one Ray task per model). What is current is
    found first, so one bar can show the work left over all models."""
    stats = RunStats()
    started = time.perf_counter()
    levels = list(texts_by_level)
    for spec in language_specs:
        if spec.modality != LANGUAGE:
            raise PlatonicError(f"model {spec.id!r} is not a language model")
    for spec in vision_specs:
        if spec.modality != VISION:
            raise PlatonicError(f"model {spec.id!r} is not a vision model")
    language_plans = {spec.id: language_todo(spec, texts_by_level, settings, stats)
                      for spec in language_specs}
    shown = noisy_images(images, settings) if vision_specs else []
    images_sha = images_fingerprint(shown) if vision_specs else ""
    vision_plans = {spec.id: vision_todo(spec, images_sha, levels, settings, stats)
                    for spec in vision_specs}
    samples = (sum(captions_to_encode(texts_by_level, todo, settings) for todo in language_plans.values())
               + sum(len(shown) for todo in vision_plans.values() if todo.encodes))
    with tqdm(total=samples, desc="extract (all models)", unit="sample", smoothing=0,
              disable=samples == 0) as progress:
        for spec in language_specs:
            if language_plans[spec.id]:
                _extract_language(spec, texts_by_level, language_plans[spec.id], settings, stats,
                                  None, progress)
        for spec in vision_specs:
            _place_vision(spec, shown, images_sha, vision_plans[spec.id], settings, stats, progress)
    stats.seconds = time.perf_counter() - started
    return stats


def guess_modality(model_id: str) -> str:
    """A model named on the command line: registered, a timm name / checkpoint, a transformers
    vision model (by its config in a local folder or the local Hub cache, else by its name; see
    `platonic.models.hub_vision.is_hub_vision`), or else a language model."""
    import timm

    for spec in _registered():
        if spec.id == model_id:
            return spec.modality
    name = model_id.partition("@")[0]
    if "@" in model_id or timm.is_model(name.split(".")[0]):
        return VISION
    if model_id.endswith(".gguf"):
        return LANGUAGE
    return VISION if is_hub_vision(model_id) else LANGUAGE


def _registered() -> list[ModelSpec]:
    return [spec for specs in MODEL_SETS.values() for spec in specs]


def select_models(modelset: str, model_ids: list[str] | None, modality: str) -> tuple[list[ModelSpec], list[ModelSpec]]:
    """(language, vision) models from `--models` (ids) or from the named model set."""
    if modality not in (LANGUAGE, VISION, "all"):
        raise PlatonicError(f"--modality must be language, vision or all, got {modality!r}")
    wanted = [LANGUAGE, VISION] if modality == "all" else [modality]
    if model_ids:
        chosen = {m: [] for m in (LANGUAGE, VISION)}
        for model_id in model_ids:
            kind = modality if modality != "all" else guess_modality(model_id)
            chosen[kind].append(get_model(model_id, kind))
        return chosen[LANGUAGE], chosen[VISION]
    return tuple(get_models(modelset, m) if m in wanted else [] for m in (LANGUAGE, VISION))  # type: ignore[return-value]


def texts_by_level(data: PairedData, levels: list[int] | None, json_perturbations: str | None = None,
                   text_operations: list[str] | None = None, seed: int = 0,
                   allow_caption_mismatch: bool = False) -> dict[Level, list[str]]:
    """Captions for each requested level (None: the dataset's own captions, no levels).

    A caption file must match the dataset at level 0 unless `allow_caption_mismatch`.
    """
    if levels is None:
        return {None: data.texts}
    if json_perturbations:
        source = file_levels(json_perturbations, data.texts, allow_caption_mismatch)
    elif text_operations:
        source = rule_levels(data.texts, text_operations, seed)
    elif data.level_texts is not None:
        source = data.level_texts
    else:
        raise PlatonicError(f"dataset {data.name!r} has no uniqueness levels of its own; give "
                            "--json_perturbations FILE or --text_operations to make them")
    return {level: source(level) for level in levels}
