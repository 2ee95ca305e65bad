"""Losses of the CLIP finetuning: symmetric InfoNCE with a clamped learnable temperature, and
the supervised binary loss of the genre head; `loss = clip_weight * contrastive + supervised`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

INIT_LOGIT_SCALE = math.log(1 / 0.07)  # CLIP's initial temperature, as the original
MAX_LOGIT_SCALE = math.log(100.0)  # the original's clamp: exp(logit_scale) <= 100


def scaled_logits(text: torch.Tensor, image: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """[B, B] similarities of L2-normalised embeddings times exp(logit_scale clamped to
    [0, log 100]); row i is text i against every image."""
    scale = logit_scale.clamp(0.0, MAX_LOGIT_SCALE).exp()
    return scale * F.normalize(text, dim=-1) @ F.normalize(image, dim=-1).T


def contrastive_loss(text: torch.Tensor, image: torch.Tensor,
                     logit_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE (text->image and image->text cross-entropy, averaged) and the mean
    retrieval accuracy of both directions; pair i is (text[i], image[i])."""
    logits = scaled_logits(text, image, logit_scale)
    target = torch.arange(logits.shape[0], device=logits.device)
    loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    accuracy = ((logits.argmax(dim=1) == target).float().mean()
                + (logits.argmax(dim=0) == target).float().mean()) / 2
    return loss, accuracy


def supervised_loss(logits: torch.Tensor, labels: torch.Tensor,
                    pos_weight: float | None = None) -> torch.Tensor:
    """Binary cross-entropy of the genre head's logits [B] against 0/1 labels [B]; `pos_weight`
    multiplies the positive term (None: unweighted, as the original ran)."""
    weight = None if pos_weight is None else torch.tensor(pos_weight, device=logits.device)
    return F.binary_cross_entropy_with_logits(logits, labels.float(), pos_weight=weight)


def balanced_pos_weight(labels: list[float]) -> float:
    """negatives / positives of the training labels (the original's unused helper): a rare genre
    otherwise trains a head that never predicts it."""
    positives = sum(1 for y in labels if y > 0.5)
    return (len(labels) - positives) / max(positives, 1)


@dataclass
class LossParts:
    total: torch.Tensor
    supervised: torch.Tensor
    contrastive: torch.Tensor | None = None
    clip_accuracy: torch.Tensor | None = None


def combined_loss(clip_weight: float, head_logits: torch.Tensor, labels: torch.Tensor,
                  text: torch.Tensor, image: torch.Tensor | None, logit_scale: torch.Tensor,
                  pos_weight: float | None = None) -> LossParts:
    """`clip_weight * contrastive + supervised`; at weight 0 the contrastive term is not formed
    at all (`image` may then be None), so the image tower gets no gradient."""
    sup = supervised_loss(head_logits, labels, pos_weight)
    if clip_weight == 0:
        return LossParts(sup, sup)
    if image is None:
        raise ValueError("clip_weight > 0 needs the image embeddings")
    clip, accuracy = contrastive_loss(text, image, logit_scale)
    return LossParts(clip_weight * clip + sup, sup, clip, accuracy)
