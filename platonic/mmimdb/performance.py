"""The performance stage: one grid probe per language model, from its feature files to
`test_perf.json` (JSON) and `best_classifier.safetensors` (weights); a binary task
(`class_idx`) writes `test_perf_class<C>.json` and `best_classifier_class<C>.safetensors` beside
them, never over the 23-genre result.

A result is reused only when its cache key matches: the probe version, the layer, the grid,
epochs, batch size, seed, the task (multi-label, or binary `class_idx`), the content hashes of
the three feature files and the labels; and only with the classifier made with that key (the
key is in the weights' metadata too: a crash between the two writes leaves no mixed pair).
Rows of a feature file must be the movies of the saved selection (`pairing.check_feature_rows`),
so labels can never be misaligned.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from platonic.errors import PlatonicError
from platonic.io.features import FEATS, read_meta, read_tensor
from platonic.io.storage import atomic_path, read_json, sha256_of, write_json
from platonic.mmimdb.dataset import SPLITS, Selection, read_selection
from platonic.mmimdb.genres import GENRES, binary_label, check_class_idx, label_matrix
from platonic.mmimdb.layout import Layout
from platonic.mmimdb.pairing import check_feature_rows
from platonic.mmimdb.probe import (
    DEFAULT_CONFIG,
    ProbeConfig,
    binary_metrics,
    multilabel_metrics,
    predict,
    train_grid,
)
from platonic.models.registry import LANGUAGE
from platonic.run.cli_args import RaySettings

# 2: closed-form gradient and fused Adam (same trajectories up to rounding); 3: the result
# records its feature files' hashes and the genres without a dev positive (same numbers)
PROBE_VERSION = 3
# A probe's weights are megabytes: on a GPU cluster four probe tasks share one GPU.
PROBE_GPU_SHARE = 0.25
SELECTION_SPLIT, REPORT_SPLIT = "dev", "test"
WEIGHTS_META = "platonic"


@dataclass
class SplitData:
    x: torch.Tensor  # [N, D] float32, the chosen layer
    y: torch.Tensor  # [N, C] float32
    feature_sha256: str
    num_layers: int
    path: Path


def resolve_layer(layer: int, num_layers: int, where: str) -> int:
    """A Python-style layer index (-1 = last hidden state) as 0..L-1, or a one-line error."""
    if not -num_layers <= layer < num_layers:
        raise PlatonicError(f"{where}: --layer {layer} is out of range for its {num_layers} "
                            f"layers ({-num_layers}..{num_layers - 1})")
    return layer % num_layers


def task_labels(selection: Selection, class_idx: int | None) -> np.ndarray:
    """[N, 23] multi-hot labels in GENRES order, or [N, 1] binary labels of GENRES[class_idx]."""
    if class_idx is None:
        return label_matrix(m.genres for m in selection.movies)[0]
    return np.array([[binary_label(m.genres, class_idx)] for m in selection.movies], dtype=np.float32)


def task_genres(class_idx: int | None) -> list[str]:
    """The genre of each label column: all 23, or the binary task's one."""
    return list(GENRES) if class_idx is None else [GENRES[class_idx]]


def without_positives(labels: np.ndarray, names: list[str]) -> list[str]:
    """The genres (label columns) no movie has: their F1 is 0/0, reported as 0."""
    return [name for name, count in zip(names, np.asarray(labels).sum(axis=0), strict=True)
            if count == 0]


def empty_genre_notes(layout: Layout, class_idx: int | None) -> list[str]:
    """One line per split (dev, test) that has no positive movie for some genre of the task."""
    names, notes = task_genres(class_idx), []
    for split, consequence in ((SELECTION_SPLIT, "does not inform the choice of the probe's "
                                                 "epoch and setting"),
                               (REPORT_SPLIT, "is the same for every language model")):
        empty = without_positives(task_labels(read_selection(layout.selection(split)), class_idx),
                                  names)
        if empty:
            notes.append(f"note: no {split} movie has genre {', '.join(empty)}: its {split} F1 "
                         f"is undefined (reported as 0) and {consequence}")
    return notes


def load_split(layout: Layout, model_id: str, split: str, layer: int,
               class_idx: int | None) -> SplitData:
    """One split's features at `layer` and its labels, checked to be the same movies in order."""
    selection = check_feature_rows(layout, split, [(model_id, LANGUAGE)])
    path = layout.features(split, model_id, LANGUAGE)
    meta = read_meta(path)
    num_layers = int(meta["num_layers"])
    index = resolve_layer(layer, num_layers, str(path))
    y = torch.from_numpy(task_labels(selection, class_idx))
    return SplitData(read_layer(path, index), y, meta["content_sha256"], num_layers, path)


def read_layer(path: Path, index: int) -> torch.Tensor:
    """One layer [N, D] of a feature file as float32, read alone (a 65B model's file holds 81)."""
    x = read_tensor(path, FEATS, (slice(None), index)).float()
    if not torch.isfinite(x).all():
        raise PlatonicError(f"{path}: NaN or inf in layer {index}")
    return x


def cache_key(config: ProbeConfig, layer: int, class_idx: int | None,
              data: dict[str, SplitData]) -> str:
    return sha256_of({
        "probe": PROBE_VERSION, "layer": layer, "class_idx": class_idx, **asdict(config),
        "features": {split: d.feature_sha256 for split, d in data.items()},
        "labels": {split: d.y.numpy().tobytes().hex() for split, d in data.items()},
    })


def is_current(layout: Layout, model_id: str, key: str, class_idx: int | None = None) -> bool:
    """Whether the result and the classifier of this task were both made with cache key `key`."""
    try:
        return (read_json(layout.performance(model_id, class_idx)).get("cache_key") == key
                and weights_key(layout.weights(model_id, class_idx)) == key)
    except (OSError, ValueError):
        return False


def weights_key(path: Path) -> str | None:
    """The cache key a saved classifier records in its metadata (None if it records none)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(WEIGHTS_META)
    except Exception as err:  # safetensors raises several types for a damaged header
        raise ValueError(f"{path}: {err}") from err
    return json.loads(raw).get("cache_key") if raw else None


def run_probe(layout: Layout, model_id: str, config: ProbeConfig = DEFAULT_CONFIG, layer: int = -1,
              class_idx: int | None = None, device: str = "cpu", force: bool = False) -> bool:
    """Probe one language model unless its result is current; True if it trained."""
    if class_idx is not None:
        class_idx = check_class_idx(class_idx)
    data = {split: load_split(layout, model_id, split, layer, class_idx) for split in SPLITS}
    key = cache_key(config, layer, class_idx, data)
    if not force and is_current(layout, model_id, key, class_idx):
        return False
    started = time.perf_counter()
    train, dev, test = (data[s] for s in SPLITS)
    grid = train_grid(train.x.to(device), train.y.to(device), dev.x.to(device), dev.y.to(device),
                      config, desc=model_id)
    chosen = grid.chosen
    weight, bias = grid.weight[chosen], grid.bias[chosen]
    pred = predict(weight, bias, test.x)
    names = task_genres(class_idx)
    metrics = (multilabel_metrics(pred, test.y.numpy(), names) if class_idx is None
               else binary_metrics(pred, test.y.numpy(), names[0]))
    lr, wd = grid.settings[chosen]
    result: dict[str, Any] = {
        "model": model_id, "task": "multilabel" if class_idx is None else "binary",
        "class_idx": class_idx, "genres": names, "layer": layer,
        "layer_index": resolve_layer(layer, train.num_layers, str(train.path)),
        "num_layers": train.num_layers,
        "lr": lr, "wd": wd, "epoch": int(grid.best_epoch[chosen]),
        "dev_f1": float(grid.best_dev_f1[chosen]),
        "selection": f"best epoch, then best (lr, wd), by {SELECTION_SPLIT} "
                     + ("macro F1" if class_idx is None else "positive-class F1"),
        **metrics,
        "grid": [{"lr": s[0], "wd": s[1], "best_dev_f1": float(f), "best_epoch": int(e)}
                 for s, f, e in zip(grid.settings, grid.best_dev_f1, grid.best_epoch, strict=True)],
        "dev_classes_without_positives": without_positives(dev.y.numpy(), names),
        "num_samples": {split: int(d.x.shape[0]) for split, d in data.items()},
        "feature_files": {split: str(d.path) for split, d in data.items()},
        "feature_sha256": {split: d.feature_sha256 for split, d in data.items()},
        "config": asdict(config), "cache_key": key,
        "seconds": round(time.perf_counter() - started, 3),
    }
    _save_weights(layout.weights(model_id, class_idx), weight, bias, result)
    write_json(layout.performance(model_id, class_idx), result)
    return True


def run_probes(layout: Layout, model_ids: list[str], config: ProbeConfig = DEFAULT_CONFIG,
               layer: int = -1, class_idx: int | None = None, device: str = "cpu",
               force: bool = False, ray: RaySettings | None = None) -> int:
    """`run_probe` for every language model, here or (with `ray`, `--ray`) as one Ray task
    per model; the number that trained (the rest were current)."""
    if class_idx is not None:
        class_idx = check_class_idx(class_idx)
    for note in empty_genre_notes(layout, class_idx):
        print(note)
    if ray is not None:
        return _probes_on_ray(layout, model_ids, config, layer, class_idx, force, ray)
    return sum(run_probe(layout, model_id, config, layer, class_idx, device, force)
               for model_id in tqdm(model_ids, desc="probes", unit="model"))


def probe_task(layout: Layout, model_id: str, config: ProbeConfig, layer: int,
               class_idx: int | None, requested_device: str | None, force: bool) -> bool:
    """One model's `run_probe` on the Ray task's device (the body of a probe task)."""
    from platonic.run.ray_runner import task_device

    return run_probe(layout, model_id, config, layer, class_idx, task_device(requested_device),
                     force)


def _probes_on_ray(layout: Layout, model_ids: list[str], config: ProbeConfig, layer: int,
                   class_idx: int | None, force: bool, ray: RaySettings) -> int:
    from platonic.run import ray_runner

    # Workers elsewhere have another working directory: they get the folder as an absolute path.
    layout = Layout.at(layout.base.resolve())
    trained: list[bool] = []
    with ray_runner.ray_session(ray) as session:
        gpus = PROBE_GPU_SHARE if ray_runner.tasks_use_gpus(ray.device) else 0
        tasks = []
        for model_id in model_ids:
            task = session.task(probe_task, num_gpus=gpus, name=f"probe {model_id}")
            ref = task.remote(layout, model_id, config, layer, class_idx, ray.device, force)
            tasks.append(ray_runner.Submitted(ref, f"model {model_id}", trained.append))
        try:
            ray_runner.wait_for(tasks, "probes on Ray")
        finally:
            ray_runner.remove_stale_temporaries(
                [path for model_id in model_ids for path in
                 (layout.performance(model_id, class_idx), layout.weights(model_id, class_idx))])
    return sum(trained)


def _save_weights(path: Path, weight: torch.Tensor, bias: torch.Tensor, result: dict) -> None:
    """The chosen classifier as nn.Linear's state dict ([C, D] weight, [C] bias)."""
    meta = {k: result[k] for k in ("model", "task", "class_idx", "genres", "layer", "lr", "wd",
                                   "epoch", "cache_key")}
    with atomic_path(path) as tmp:
        save_file({"weight": weight.T.contiguous(), "bias": bias.contiguous()}, str(tmp),
                  metadata={WEIGHTS_META: json.dumps(meta)})


def read_performance(layout: Layout, model_id: str, class_idx: int | None = None) -> dict[str, Any]:
    """A model's result of one task (default: the 23 genres), or a one-line error saying which
    stage to run; a file holding another task (a binary result written over the 23-genre one
    before each task had its own file) is an error too."""
    path = layout.performance(model_id, class_idx)
    flag = "" if class_idx is None else f" --class_idx {class_idx}"
    try:
        result = read_json(path)
    except FileNotFoundError as err:
        raise PlatonicError(f"model {model_id}: {path} is missing; run mmimdb/train_linear.py"
                            f"{flag} first") from err
    except (OSError, ValueError) as err:
        raise PlatonicError(f"{path} is not readable JSON: {err}") from err
    if result.get("class_idx") != class_idx:
        raise PlatonicError(f"{path} holds the probe of class_idx {result.get('class_idx')}, not "
                            f"of {'the 23 genres' if class_idx is None else class_idx}; rerun "
                            f"mmimdb/train_linear.py{flag}")
    return result
