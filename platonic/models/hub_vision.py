"""Vision models from the Hub through transformers (DINOv2, CLIP and SigLIP vision towers, any
`AutoModel` image backbone), beside timm's path in `platonic.models.vision`.

Features are taken after every block (`hidden_states[1:]`: the residual stream, before any final
norm, as timm's path and the original take them): the CLS token (token 0) for models that have
one (a `cls_token` or `class_embedding` parameter: ViT, DINOv2, CLIP), the mean over all tokens
for models without (SigLIP, Swin), and the spatial mean of each stage for CNN backbones
(ConvNeXt, ResNet). Images go through the model's own image processor (`AutoImageProcessor`).
A dual encoder (CLIP, SigLIP: a config with `vision_config`) is loaded as its vision tower only.

Which loader a vision model takes, and whether a Hub id is a vision model at all, is decided
here from the model's config (read from a local folder or the local Hub cache, never fetched),
and by a name rule when no config is at hand (`hub_name_looks_visual`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from platonic.errors import PlatonicError, first_line
from platonic.models.registry import ModelSpec

TIMM, TRANSFORMERS = "timm", "transformers"
HUB_POOLS = ("cls", "mean")
_GENERATIVE_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
_CLS_PARAMETERS = ("cls_token", "class_embedding")
_VISUAL_NAME = re.compile(
    r"(^|[-_/.])(dinov2|dinov3|dino|clip|siglip2?|vit|deit|beit|convnext(v2)?|swin(v2)?|mae|"
    r"ijepa|data2vec-vision|eva02?|regnet|resnet|efficientnet|mobilenet(v[123])?|hiera|aimv2)"
    r"([-_/.]|$)", re.IGNORECASE)


def local_config(model_id: str):
    """The transformers config of a local folder or of a Hub id in the local cache; else None."""
    from transformers import AutoConfig

    folder = Path(model_id)
    if folder.is_dir() and not (folder / "config.json").exists():
        return None
    try:
        return AutoConfig.from_pretrained(model_id, local_files_only=True)
    except (OSError, ValueError, KeyError):
        return None


def config_is_visual(config) -> bool:
    """An image backbone or a dual encoder's vision tower, not a generative (multimodal) LM."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_MAPPING_NAMES

    architectures = getattr(config, "architectures", None) or []
    if any(a.endswith(_GENERATIVE_SUFFIXES) for a in architectures):
        return False
    model_type = getattr(config, "model_type", "")
    return (model_type in MODEL_FOR_IMAGE_MAPPING_NAMES or model_type.endswith("_vision_model")
            or getattr(config, "vision_config", None) is not None)


def hub_name_looks_visual(model_id: str) -> bool:
    """The rule without a config: the name holds a vision architecture as a whole word
    (dinov2, clip, siglip, vit, deit, beit, convnext, swin, mae, resnet, ...)."""
    return bool(_VISUAL_NAME.search(model_id))


def is_hub_vision(model_id: str) -> bool:
    """Whether a Hub id or local folder (not a timm name) names a vision model."""
    config = local_config(model_id)
    return config_is_visual(config) if config is not None else hub_name_looks_visual(model_id)


def vision_loader(spec: ModelSpec) -> str:
    """`timm` or `transformers`: the entry's `loader` option, else from the id's form.

    timm: a timm architecture name (with pretrained tag), `arch@checkpoint`, `hf-hub:` ids and
    entries with timm options; transformers: a Hub id `org/name` or a folder with a config.json.
    """
    loader = spec.options.get("loader")
    if loader is not None:
        if loader not in (TIMM, TRANSFORMERS):
            raise PlatonicError(f"vision model {spec.id!r}: loader must be {TIMM} or {TRANSFORMERS}, "
                                f"got {loader!r}")
        return loader
    timm_options = ("timm_name", "random_init_seed", "source", "by_position")
    if any(k in spec.options for k in timm_options) or "@" in spec.id or spec.id.startswith("hf-hub:"):
        return TIMM
    if (Path(spec.id) / "config.json").exists() or ("/" in spec.id and not os.path.exists(spec.id)):
        return TRANSFORMERS
    return TIMM


def _vision_tower_class(config):
    """The model class to load: the vision tower's for a dual encoder, else AutoModel's."""
    from transformers import AutoModel
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    vision_config = getattr(config, "vision_config", None)
    if vision_config is None:
        return AutoModel, config
    return MODEL_MAPPING[type(vision_config)], vision_config


def load_hub_model(spec: ModelSpec, device: str, dtype: torch.dtype):
    """(model in eval mode, image processor, pool) of a transformers vision model."""
    from transformers import AutoConfig, AutoImageProcessor

    try:
        config = AutoConfig.from_pretrained(spec.id)
        model_class, model_config = _vision_tower_class(config)
        model = model_class.from_pretrained(spec.id, config=model_config, dtype=dtype)
        processor = AutoImageProcessor.from_pretrained(spec.id)
    except (OSError, ValueError, KeyError) as err:
        raise PlatonicError(
            f"cannot load vision model {spec.id!r} through transformers ({first_line(err)}); "
            "without network, download it elsewhere and pass its local folder with --models") from err
    model = model.to(device).eval()
    return model, processor, hub_pool(model)


def hub_pool(model: torch.nn.Module) -> str:
    """`cls` if the model has a class token (ViT, DINOv2, CLIP), else `mean` (SigLIP, CNNs)."""
    names = (name.rsplit(".", 1)[-1] for name, _ in model.named_parameters())
    return "cls" if any(name in _CLS_PARAMETERS for name in names) else "mean"


def pixel_transform(processor):
    """One PIL image -> its [3, H, W] pixel values, through the model's own image processor."""

    def transform(image):
        return processor(images=image, return_tensors="pt")["pixel_values"][0]

    return transform


def hub_layers(model: torch.nn.Module, pixel_values: torch.Tensor, pool: str) -> list[torch.Tensor]:
    """[B, D_l] per block: CLS token, mean token, or spatial mean (CNN stages)."""
    out = model(pixel_values=pixel_values, output_hidden_states=True)
    layers = []
    for hidden in out.hidden_states[1:]:
        if hidden.ndim == 4:
            layers.append(hidden.mean(dim=(2, 3)))
        elif pool == "cls":
            layers.append(hidden[:, 0])
        else:
            layers.append(hidden.mean(dim=1))
    return layers
