"""Linear genre probes: the whole learning-rate x weight-decay grid trained at once.

The original trained one `Linear(D, 23)` per (lr, wd) setting, 20 trainings of 100 epochs each,
with Adam, `BCEWithLogitsLoss(pos_weight=(N - pos) / (pos + 1e-6))` from the train labels and
batches of 128; it kept each setting's best epoch by dev macro F1, then the best setting by
the same, and reported that classifier on test. Here the 20 settings are one stacked linear
layer (weight [S * C, D]: one matrix product each way per batch serves the whole grid); the
gradient of the class-weighted BCE is taken in closed form, and torch's fused Adam steps all
settings, one parameter group per learning rate, with each setting's L2 weight decay added to
its gradient as torch.optim.Adam does, so each setting follows the trajectory its own training
would (up to float rounding). Every setting starts from the same seeded `nn.Linear`
initialisation and sees the same seeded batch order, as 20 separately seeded runs would.
`train_single` is that separate run with `torch.optim.Adam`: the oracle the tests compare
against and the benchmark's baseline.

Metrics follow the original's torchmetrics definitions: per-class F1 with 0 where a class has
no true and no predicted positives, macro F1 = their mean, weighted F1 = support-weighted,
subset accuracy (every label right) and label accuracy (mean per-label accuracy).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from platonic.errors import PlatonicError

LEARNING_RATES: tuple[float, ...] = (1e-4, 5e-4, 1e-3, 5e-3)
WEIGHT_DECAYS: tuple[float, ...] = (0.0, 0.1, 1e-2, 1e-3, 1e-4)
EPOCHS = 100
BATCH_SIZE = 128
BETAS = (0.9, 0.999)
EPS = 1e-8
POS_WEIGHT_EPS = 1e-6


@dataclass(frozen=True)
class ProbeConfig:
    """Everything besides the data that changes a probe's result (all of it is in the cache key)."""

    learning_rates: tuple[float, ...] = LEARNING_RATES
    weight_decays: tuple[float, ...] = WEIGHT_DECAYS
    epochs: int = EPOCHS
    batch_size: int | None = BATCH_SIZE  # None: full batch
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise PlatonicError(f"--epochs must be >= 1, got {self.epochs}")
        if self.batch_size is not None and self.batch_size < 1:
            raise PlatonicError(f"--batch_size must be >= 1, got {self.batch_size}")
        if not self.learning_rates or not self.weight_decays:
            raise PlatonicError("the probe grid needs at least one learning rate and weight decay")
        bad = [v for v in (*self.learning_rates, *self.weight_decays) if not v >= 0 or math.isinf(v)]
        if bad or not all(lr > 0 for lr in self.learning_rates):
            raise PlatonicError(f"learning rates must be > 0 and weight decays >= 0, got "
                                f"{list(self.learning_rates)} and {list(self.weight_decays)}")

    @property
    def settings(self) -> list[tuple[float, float]]:
        """The grid, learning rate major (the original's loop order)."""
        return [(lr, wd) for lr in self.learning_rates for wd in self.weight_decays]


DEFAULT_CONFIG = ProbeConfig()


@dataclass
class GridResult:
    """Per setting: best dev macro F1, its epoch (1-based) and the weights at that epoch."""

    settings: list[tuple[float, float]]
    best_dev_f1: np.ndarray  # [S]
    best_epoch: np.ndarray  # [S]
    weight: torch.Tensor  # [S, D, C]
    bias: torch.Tensor  # [S, C]
    dev_history: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 0)))  # [E, S]

    @property
    def chosen(self) -> int:
        """The setting with the best dev macro F1 (the first in grid order on a tie)."""
        return int(np.argmax(self.best_dev_f1))


def pos_weight(y_train: torch.Tensor) -> torch.Tensor:
    """The original's class weights: negatives / positives per class, from the train labels."""
    positives = y_train.sum(dim=0)
    return (y_train.shape[0] - positives) / (positives + POS_WEIGHT_EPS)


def f1_per_class(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """F1 per class along the last axis, batched over leading axes; 0 where undefined (0/0).

    pred, target: [..., N, C] booleans or 0/1.
    """
    pred, target = pred.bool(), target.bool()
    tp = (pred & target).sum(dim=-2).double()
    fp = (pred & ~target).sum(dim=-2).double()
    fn = (~pred & target).sum(dim=-2).double()
    denom = 2 * tp + fp + fn
    return torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.zeros_like(denom))


def _initial_linear(dim: int, num_classes: int, seed: int) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(dim, num_classes)


def _batches(n: int, batch_size: int | None, generator: torch.Generator) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=generator)
    size = batch_size or n
    return list(order.split(size))


def _check_inputs(x_train: torch.Tensor, y_train: torch.Tensor, x_dev: torch.Tensor,
                  y_dev: torch.Tensor) -> None:
    if x_train.ndim != 2 or x_dev.ndim != 2 or x_train.shape[1] != x_dev.shape[1]:
        raise PlatonicError(f"probe features must be [N, D] with one D, got {tuple(x_train.shape)} "
                            f"and {tuple(x_dev.shape)}")
    if y_train.shape[0] != x_train.shape[0] or y_dev.shape[0] != x_dev.shape[0]:
        raise PlatonicError(f"{x_train.shape[0]} train / {x_dev.shape[0]} dev feature rows but "
                            f"{y_train.shape[0]} / {y_dev.shape[0]} label rows")
    if x_train.shape[0] == 0 or x_dev.shape[0] == 0:
        raise PlatonicError("the probe needs at least one train and one dev movie")


def train_grid(x_train: torch.Tensor, y_train: torch.Tensor, x_dev: torch.Tensor,
               y_dev: torch.Tensor, config: ProbeConfig = DEFAULT_CONFIG,
               desc: str = "probe grid") -> GridResult:
    """Train every (lr, wd) setting at once; keep each setting's best epoch by dev macro F1."""
    _check_inputs(x_train, y_train, x_dev, y_dev)
    device = x_train.device
    settings = config.settings
    num_settings, (n, dim), num_classes = len(settings), x_train.shape, y_train.shape[1]
    init = _initial_linear(dim, num_classes, config.seed)
    # every setting's nn.Linear stacked: weight [S * C, D], so one product each way per batch
    # serves the whole grid, and the settings of one learning rate are one block for Adam
    weight = init.weight.detach().to(device).repeat(num_settings, 1)
    bias = init.bias.detach().to(device).repeat(num_settings)
    grad_weight, grad_bias = torch.empty_like(weight), torch.empty_like(bias)
    optimiser = _grid_adam(weight, bias, grad_weight, grad_bias, settings)
    decay = torch.tensor([wd for _, wd in settings], dtype=weight.dtype, device=device)
    decay = decay.repeat_interleave(num_classes)
    weights_pos = pos_weight(y_train)
    generator = torch.Generator().manual_seed(config.seed)
    best_f1 = torch.full((num_settings,), -1.0, dtype=torch.float64, device=device)
    best_epoch = torch.zeros(num_settings, dtype=torch.long, device=device)
    best_w, best_b = weight.clone(), bias.clone()
    history = np.zeros((config.epochs, num_settings))
    for epoch in tqdm(range(1, config.epochs + 1), desc=desc, unit="epoch", leave=False):
        for batch in _batches(n, config.batch_size, generator):
            batch = batch.to(device)
            x_batch = x_train[batch]
            logit_grad = _bce_logit_grad(torch.addmm(bias, x_batch, weight.T), y_train[batch],
                                         weights_pos, num_settings)
            torch.mm(logit_grad.T, x_batch, out=grad_weight)
            torch.sum(logit_grad, dim=0, out=grad_bias)
            _add_weight_decay(grad_weight, weight, decay)
            _add_weight_decay(grad_bias, bias, decay)
            optimiser.step()
        dev_logits = torch.addmm(bias, x_dev, weight.T).view(-1, num_settings, num_classes)
        f1 = f1_per_class(dev_logits.transpose(0, 1) > 0, y_dev.expand(num_settings, -1, -1))
        f1 = f1.mean(dim=-1)
        history[epoch - 1] = f1.cpu().numpy()
        better = f1 > best_f1
        best_f1 = torch.where(better, f1, best_f1)
        best_epoch = torch.where(better, torch.full_like(best_epoch, epoch), best_epoch)
        rows = better.repeat_interleave(num_classes)
        best_w = torch.where(rows[:, None], weight, best_w)
        best_b = torch.where(rows, bias, best_b)
    return GridResult(settings, best_f1.cpu().numpy(), best_epoch.cpu().numpy(),
                      best_w.view(num_settings, num_classes, dim).transpose(1, 2).contiguous().cpu(),
                      best_b.view(num_settings, num_classes).cpu(), history)


def _grid_adam(weight: torch.Tensor, bias: torch.Tensor, grad_weight: torch.Tensor,
               grad_bias: torch.Tensor, settings: Sequence[tuple[float, float]]
               ) -> torch.optim.Adam:
    """torch's fused Adam with one parameter group per run of consecutive settings that share a
    learning rate (the grid is learning-rate major: one group per learning rate), over views of
    the stacked weight and bias whose gradients are views of the buffers each step writes into.
    Weight decay is left to `_add_weight_decay` (torch's L2 decay: added to the gradient), so
    that a group may hold several decays."""
    rows = len(weight) // len(settings)
    groups, start = [], 0
    for lr, members in itertools.groupby(settings, key=lambda setting: setting[0]):
        stop = start + rows * len(list(members))
        w, b = weight[start:stop], bias[start:stop]
        w.grad, b.grad = grad_weight[start:stop], grad_bias[start:stop]
        groups.append({"params": [w, b], "lr": lr})
        start = stop
    return torch.optim.Adam(groups, betas=BETAS, eps=EPS, weight_decay=0.0, fused=True)


def _add_weight_decay(grad: torch.Tensor, param: torch.Tensor, decay: torch.Tensor) -> None:
    """grad += decay * param, one decay per row (torch.optim.Adam's `weight_decay`)."""
    grad.addcmul_(param, decay.view(-1, *([1] * (param.ndim - 1))))


def _bce_logit_grad(logits: torch.Tensor, targets: torch.Tensor, weights_pos: torch.Tensor,
                    num_settings: int) -> torch.Tensor:
    """Gradient of every setting's mean class-weighted BCE (BCEWithLogitsLoss with pos_weight)
    with respect to its logits [B, S * C]: (sigmoid(z) (p y + 1 - y) - p y) / (B C), the
    closed form of what autograd computes, without building the loss."""
    positive = weights_pos * targets
    scale = (positive + 1 - targets).repeat(1, num_settings)
    grad = torch.sigmoid(logits).mul_(scale).sub_(positive.repeat(1, num_settings))
    return grad.div_(targets.numel())


def train_single(x_train: torch.Tensor, y_train: torch.Tensor, x_dev: torch.Tensor,
                 y_dev: torch.Tensor, lr: float, wd: float, config: ProbeConfig = DEFAULT_CONFIG
                 ) -> tuple[float, int, torch.nn.Linear]:
    """One setting the original's way (nn.Linear, torch.optim.Adam, its own loop): best dev macro
    F1, its epoch and the classifier at that epoch. The oracle and the benchmark baseline."""
    _check_inputs(x_train, y_train, x_dev, y_dev)
    model = _initial_linear(x_train.shape[1], y_train.shape[1], config.seed).to(x_train.device)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight(y_train))
    generator = torch.Generator().manual_seed(config.seed)
    best = (-1.0, 0, {k: v.clone() for k, v in model.state_dict().items()})
    for epoch in range(1, config.epochs + 1):
        for batch in _batches(x_train.shape[0], config.batch_size, generator):
            batch = batch.to(x_train.device)
            optimiser.zero_grad()
            loss_fn(model(x_train[batch]), y_train[batch]).backward()
            optimiser.step()
        with torch.no_grad():
            f1 = float(f1_per_class(model(x_dev) > 0, y_dev).mean())
        if f1 > best[0]:
            best = (f1, epoch, {k: v.clone() for k, v in model.state_dict().items()})
    model.load_state_dict(best[2])
    return best[0], best[1], model


def multilabel_metrics(pred: np.ndarray, target: np.ndarray, names: Sequence[str]) -> dict:
    """Test metrics of [N, C] 0/1 predictions: F1 per class (by name), macro and weighted F1,
    subset accuracy and label accuracy."""
    pred, target = np.asarray(pred).astype(bool), np.asarray(target).astype(bool)
    per_class = f1_per_class(torch.from_numpy(pred), torch.from_numpy(target)).numpy()
    support = target.sum(axis=0)
    weighted = float((per_class * support).sum() / support.sum()) if support.sum() else 0.0
    return {
        "f1_mean": float(per_class.mean()),
        "f1_weighted": weighted,
        "accuracy": float((pred == target).all(axis=1).mean()),
        "label_accuracy": float((pred == target).mean()),
        "f1_per_class": {name: float(v) for name, v in zip(names, per_class, strict=True)},
        "support": {name: int(s) for name, s in zip(names, support, strict=True)},
        "classes_without_positives": [n for n, s in zip(names, support, strict=True) if s == 0],
    }


def binary_metrics(pred: np.ndarray, target: np.ndarray, name: str) -> dict:
    """Test metrics of a binary task: positive-class F1, macro F1 over {0, 1}, accuracy."""
    pred, target = np.asarray(pred).astype(bool).ravel(), np.asarray(target).astype(bool).ravel()
    both = np.stack([~pred, pred], axis=1), np.stack([~target, target], axis=1)
    per_class = f1_per_class(torch.from_numpy(both[0]), torch.from_numpy(both[1])).numpy()
    return {
        "f1_positive": float(per_class[1]),
        "f1_mean": float(per_class.mean()),
        "f1_weighted": float((per_class * both[1].sum(axis=0)).sum() / len(target)),
        "accuracy": float((pred == target).mean()),
        "f1_per_class": {name: float(per_class[1])},
        "support": {name: int(target.sum())},
        "classes_without_positives": [] if target.any() else [name],
    }


def predict(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor) -> np.ndarray:
    """0/1 predictions (logit > 0) of one classifier, weight [D, C], bias [C]."""
    with torch.no_grad():
        return ((x @ weight.to(x.device) + bias.to(x.device)) > 0).cpu().numpy()
