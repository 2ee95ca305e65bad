"""Model registry: every model the study knows, with modality, family and size, and the model sets.

A model is named by its Hub id or local path everywhere. Adding a model or a set is one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from platonic.errors import PlatonicError

LANGUAGE, VISION = "language", "vision"


@dataclass(frozen=True)
class ModelSpec:
    """One model: `id` is its Hub id, local folder or file; `family`/`size` label the plots."""

    id: str
    modality: str
    family: str
    size: str
    size_rank: float = 0.0
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


def _lm(id: str, family: str, size: str, rank: float, **options: Any) -> ModelSpec:
    return ModelSpec(id, LANGUAGE, family, size, rank, options)


def _vm(id: str, family: str, size: str, rank: float, **options: Any) -> ModelSpec:
    return ModelSpec(id, VISION, family, size, rank, options)


_VIT_RANK = {"tiny": 1, "small": 2, "base": 3, "large": 4, "huge": 5, "giant": 6}


def _vit(name: str, family: str) -> ModelSpec:
    size = name.split("vit_", 1)[1].split("_", 1)[0]
    return _vm(name, family, size, _VIT_RANK[size])


PAPER_VISION = [
    *(_vit(f"vit_{s}_patch16_224.augreg_in21k", "ImageNet21k") for s in ("tiny", "small", "base", "large")),
    _vit("vit_base_patch16_224.mae", "MAE"),
    _vit("vit_large_patch16_224.mae", "MAE"),
    _vit("vit_huge_patch14_224.mae", "MAE"),
    *(_vit(f"vit_{s}_patch14_dinov2.lvd142m", "DINOv2") for s in ("small", "base", "large", "giant")),
    _vit("vit_base_patch16_clip_224.laion2b", "CLIP"),
    _vit("vit_large_patch14_clip_224.laion2b", "CLIP"),
    _vit("vit_huge_patch14_clip_224.laion2b", "CLIP"),
    _vit("vit_base_patch16_clip_224.laion2b_ft_in12k", "CLIP (I12K ft)"),
    _vit("vit_large_patch14_clip_224.laion2b_ft_in12k", "CLIP (I12K ft)"),
    _vit("vit_huge_patch14_clip_224.laion2b_ft_in12k", "CLIP (I12K ft)"),
]

PAPER_LANGUAGE_VAL = [
    _lm("bigscience/bloomz-560m", "BLOOMZ", "560m", 0.56),
    _lm("bigscience/bloomz-1b1", "BLOOMZ", "1b1", 1.1),
    _lm("bigscience/bloomz-1b7", "BLOOMZ", "1b7", 1.7),
    _lm("bigscience/bloomz-3b", "BLOOMZ", "3b", 3),
    _lm("bigscience/bloomz-7b1", "BLOOMZ", "7b1", 7.1),
    _lm("openlm-research/open_llama_3b", "OpenLLaMA", "3b", 3),
    _lm("openlm-research/open_llama_7b", "OpenLLaMA", "7b", 7),
    _lm("openlm-research/open_llama_13b", "OpenLLaMA", "13b", 13),
    _lm("huggyllama/llama-7b", "LLaMA", "7b", 7),
    _lm("huggyllama/llama-13b", "LLaMA", "13b", 13),
    _lm("huggyllama/llama-30b", "LLaMA", "30b", 30),
    _lm("huggyllama/llama-65b", "LLaMA", "65b", 65),
]

PAPER_LANGUAGE_TEST = [
    _lm("allenai/OLMo-1B-hf", "OLMo", "1b", 1),
    _lm("allenai/OLMo-7B-hf", "OLMo", "7b", 7),
    _lm("google/gemma-2b", "Gemma", "2b", 2),
    _lm("google/gemma-7b", "Gemma", "7b", 7),
    _lm("mistralai/Mistral-7B-v0.1", "Mistral", "7b", 7),
    _lm("mistralai/Mixtral-8x7B-v0.1", "Mixtral", "8x7b", 47),
    _lm("NousResearch/Meta-Llama-3-8B", "Llama-3", "8b", 8),
    _lm("NousResearch/Meta-Llama-3-70B", "Llama-3", "70b", 70),
]

MODEL_SETS: dict[str, list[ModelSpec]] = {
    "val": PAPER_LANGUAGE_VAL + PAPER_VISION,
    "test": PAPER_LANGUAGE_TEST + PAPER_VISION,
}

_KNOWN: dict[str, ModelSpec] = {m.id: m for specs in MODEL_SETS.values() for m in specs}


def get_models(modelset: str, modality: str) -> list[ModelSpec]:
    """Models of one modality in a named set."""
    if modelset not in MODEL_SETS:
        raise PlatonicError(f"unknown model set {modelset!r}; known: {', '.join(sorted(MODEL_SETS))}")
    return [m for m in MODEL_SETS[modelset] if m.modality == modality]


def get_model(model_id: str, modality: str) -> ModelSpec:
    """The registered spec of a model, or a plain one (family = own name) for a user's model."""
    spec = _KNOWN.get(model_id)
    if spec is not None:
        return spec
    return ModelSpec(model_id, modality, family=model_id.rstrip("/").split("/")[-1], size="")
