"""The Lightning module of the CLIP finetuning (the original's `CLIPSup`): two towers, a learnable
temperature, a linear genre head on the text embedding, AdamW without decay on norms and
biases, and linear warmup then cosine annealing stepped per epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from torch import nn

from platonic.clip.loss import INIT_LOGIT_SCALE, combined_loss, contrastive_loss
from platonic.clip.towers import ImageTower, TextTower
from platonic.errors import PlatonicError


@dataclass
class OptimSettings:
    """The original's optimiser and schedule: AdamW lr 1e-4, wd 0.01; 10 warmup epochs from
    1e-6, then cosine down to 1e-6."""

    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_epochs: int = 10
    warmup_start_lr: float = 1e-6
    eta_min: float = 1e-6


def warmup_cosine_factor(epoch: int, warmup_epochs: int, max_epochs: int, base_lr: float,
                         warmup_start_lr: float, eta_min: float) -> float:
    """lr(epoch) / base_lr of `LinearWarmupCosineAnnealingLR` (pl_bolts' closed form, which the
    original used): linear from warmup_start_lr at epoch 0 to base_lr at epoch warmup - 1, then
    cosine from base_lr (epoch warmup) to eta_min (epoch max_epochs)."""
    if epoch < warmup_epochs:
        lr = warmup_start_lr + epoch * (base_lr - warmup_start_lr) / max(1, warmup_epochs - 1)
    else:
        progress = (epoch - warmup_epochs) / max(1, max_epochs - warmup_epochs)
        lr = eta_min + 0.5 * (base_lr - eta_min) * (1 + math.cos(math.pi * progress))
    return lr / base_lr


def effective_warmup(warmup_epochs: int, max_epochs: int) -> int:
    """Warmup never takes the whole run: at most max_epochs - 1 epochs (a 2-epoch demo warms
    up for 1), so every run reaches the base learning rate."""
    return max(0, min(warmup_epochs, max_epochs - 1))


def no_decay(name: str, param: nn.Parameter) -> bool:
    """The original's rule: no weight decay on parameters with fewer than 2 dimensions (norm
    scales, biases, the temperature) or named like a bias, layer norm or batch norm."""
    return param.ndim < 2 or any(key in name for key in ("bn", "ln", "bias"))


def binary_f1(labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """F1 of the positive class, and macro F1 over {0, 1} (the original's reported number)."""
    return {
        "f1": float(f1_score(labels, predictions, pos_label=1, zero_division=0)),
        "f1_macro": float(f1_score(labels, predictions, average="macro", labels=[0, 1],
                                   zero_division=0)),
    }


class CLIPSup(L.LightningModule):
    def __init__(self, text_tower: TextTower, image_tower: ImageTower, clip_weight: float,
                 optim: OptimSettings | None = None, pos_weight: float | None = None):
        super().__init__()
        if not clip_weight >= 0:
            raise PlatonicError(f"model.model.clip_weight must be >= 0, got {clip_weight}")
        if text_tower.embed_dim != image_tower.embed_dim:
            raise PlatonicError(
                f"text tower {text_tower.name!r} embeds to {text_tower.embed_dim} but image tower "
                f"{image_tower.name!r} to {image_tower.embed_dim}; set model.model.projection_dim")
        self.text_tower, self.image_tower = text_tower, image_tower
        self.clip_weight = float(clip_weight)
        self.optim = optim or OptimSettings()
        self.pos_weight = pos_weight
        self.logit_scale = nn.Parameter(torch.tensor(INIT_LOGIT_SCALE))
        self.head = nn.Linear(text_tower.embed_dim, 1)
        self._outputs: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {"val": [], "test": []}
        self.train()  # the loaders return eval-mode towers; Lightning keeps a module's mode

    def embed_text(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        backbone, embedding = self.text_tower(texts)
        return backbone, F.normalize(embedding, dim=-1)

    def embed_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        backbone, embedding = self.image_tower(images)
        return backbone, F.normalize(embedding, dim=-1)

    def loss_parts(self, batch, with_images: bool):
        images, texts, labels = batch
        _, text = self.embed_text(texts)
        image = self.embed_images(images)[1] if with_images else None
        logits = self.head(text).squeeze(-1)
        return combined_loss(self.clip_weight, logits, labels, text, image, self.logit_scale,
                             self.pos_weight), \
            logits, text, image

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        parts, *_ = self.loss_parts(batch, with_images=self.clip_weight > 0)
        size = len(batch[2])
        self.log("train_loss", parts.total, batch_size=size, prog_bar=True)
        self.log("train_sup_loss", parts.supervised, batch_size=size)
        if parts.contrastive is not None:
            self.log("train_clip_loss", parts.contrastive, batch_size=size)
            self.log("train_clip_acc", parts.clip_accuracy, batch_size=size)
        self.log("logit_scale", self.logit_scale.detach(), batch_size=size)
        return parts.total

    def _eval_step(self, batch, stage: str) -> None:
        parts, logits, text, image = self.loss_parts(batch, with_images=True)
        clip, accuracy = contrastive_loss(text, image, self.logit_scale)
        size = len(batch[2])
        self.log(f"{stage}_loss", parts.total, batch_size=size)
        self.log(f"{stage}_sup_loss", parts.supervised, batch_size=size)
        self.log(f"{stage}_clip_loss", clip, batch_size=size)
        self.log(f"{stage}_clip_acc", accuracy, batch_size=size)
        self._outputs[stage].append(((logits > 0).long().cpu(), batch[2].long().cpu()))

    def _eval_epoch_end(self, stage: str) -> None:
        outputs, self._outputs[stage] = self._outputs[stage], []
        predictions = torch.cat([p for p, _ in outputs]).numpy()
        labels = torch.cat([y for _, y in outputs]).numpy()
        for name, value in binary_f1(labels, predictions).items():
            self.log(f"{stage}_{name}", value)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def configure_optimizers(self):
        decay, plain = [], []
        for name, param in self.named_parameters():
            if param.requires_grad:
                (plain if no_decay(name, param) else decay).append(param)
        settings = self.optim
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                                       {"params": plain, "weight_decay": 0.0}], lr=settings.lr)
        max_epochs = int(self.trainer.max_epochs)
        warmup = effective_warmup(settings.warmup_epochs, max_epochs)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: warmup_cosine_factor(
            epoch, warmup, max_epochs, settings.lr, settings.warmup_start_lr, settings.eta_min))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
