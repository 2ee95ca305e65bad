"""Vision models through transformers: tiny random DINOv2, CLIP and SigLIP saved with an image
processor, features per block checked against forward hooks on the encoder layers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from platonic.models.registry import LANGUAGE, VISION, ModelSpec, get_model
from platonic.models.vision import encode_images, load_vision_model

SIZE, PATCH, WIDTH, DEPTH = 32, 8, 32, 3


def _vision_kwargs() -> dict:
    return dict(hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=DEPTH, num_attention_heads=2,
                image_size=SIZE, patch_size=PATCH)


def _save(folder: Path, model, processor) -> str:
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def _dinov2(folder: Path) -> str:
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    kwargs = _vision_kwargs()
    kwargs["mlp_ratio"] = kwargs.pop("intermediate_size") // WIDTH
    processor = BitImageProcessor(size={"shortest_edge": 36}, crop_size={"height": SIZE, "width": SIZE},
                                  image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    return _save(folder, Dinov2Model(Dinov2Config(**kwargs)), processor)


def _clip_vision(folder: Path) -> str:
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(1)
    processor = CLIPImageProcessor(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE})
    return _save(folder, CLIPVisionModel(CLIPVisionConfig(**_vision_kwargs())), processor)


def _clip_dual(folder: Path) -> str:
    """A whole CLIP (text and vision towers), as `openai/clip-vit-base-patch32` is stored."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(2)
    config = CLIPConfig(text_config=dict(hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, vocab_size=99),
                        vision_config=_vision_kwargs(), projection_dim=16)
    processor = CLIPImageProcessor(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE})
    return _save(folder, CLIPModel(config), processor)


def _siglip(folder: Path) -> str:
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(3)
    processor = SiglipImageProcessor(size={"height": SIZE, "width": SIZE})
    return _save(folder, SiglipVisionModel(SiglipVisionConfig(**_vision_kwargs())), processor)


BUILDERS = {"dinov2": _dinov2, "clip_vision": _clip_vision, "clip_dual": _clip_dual, "siglip": _siglip}
POOLS = {"dinov2": "cls", "clip_vision": "cls", "clip_dual": "cls", "siglip": "mean"}


@pytest.fixture(scope="module")
def hub_folders(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("hub_vision")
    return {name: build(root / name) for name, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    sizes = [(48, 40), (40, 56), (64, 64), (33, 47), (50, 50)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


def _hooked_layers(folder: str, name: str, images: list[Image.Image]) -> list[torch.Tensor]:
    """Each encoder layer's output, caught by forward hooks on an independently loaded model."""
    from transformers import AutoImageProcessor, CLIPVisionModel, Dinov2Model, SiglipVisionModel

    cls = {"dinov2": Dinov2Model, "clip_vision": CLIPVisionModel, "clip_dual": CLIPVisionModel,
           "siglip": SiglipVisionModel}[name]
    model = cls.from_pretrained(folder).eval()
    blocks = model.encoder.layer if name == "dinov2" else model.encoder.layers
    caught: list[torch.Tensor] = []
    handles = [b.register_forward_hook(lambda _m, _i, out: caught.append(out[0] if isinstance(out, tuple) else out))
               for b in blocks]
    pixels = AutoImageProcessor.from_pretrained(folder)(images=[i.convert("RGB") for i in images],
                                                        return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        model(pixel_values=pixels)
    for h in handles:
        h.remove()
    pool = POOLS[name]
    return [out[:, 0] if pool == "cls" else out.mean(dim=1) for out in caught]


@pytest.mark.parametrize("name", list(BUILDERS))
def test_features_per_block_equal_hooked_outputs(hub_folders, images, name):
    folder = hub_folders[name]
    spec = get_model(folder, VISION)
    vm = load_vision_model(spec)
    assert vm.hub_pool == POOLS[name]
    out = encode_images(vm, images, batch_size=2)
    assert out.feats.shape == (len(images), DEPTH, WIDTH) and out.layer_dims == [WIDTH] * DEPTH
    expected = torch.stack(_hooked_layers(folder, name, images), dim=1)
    torch.testing.assert_close(out.feats, expected, rtol=1e-4, atol=1e-5)
    assert out.forward_passes == 3  # batches of 2, 2, 1


def test_dual_encoder_loads_only_its_vision_tower(hub_folders):
    vm = load_vision_model(get_model(hub_folders["clip_dual"], VISION))
    assert type(vm.model).__name__ == "CLIPVisionModel"
    assert not any("text" in name for name, _ in vm.model.named_parameters())
    from transformers import CLIPModel

    whole = CLIPModel.from_pretrained(hub_folders["clip_dual"]).vision_model.state_dict()
    tower = vm.model.state_dict()
    assert len(tower) == len(whole)
    for name, value in whole.items():  # the tower's weights are the checkpoint's, not a fresh init
        torch.testing.assert_close(tower[name], value, rtol=0, atol=0)


def test_guess_modality_routes_hub_vision(hub_folders, tiny_llama_dir):
    from platonic.stages.extract import guess_modality, select_models

    for folder in hub_folders.values():
        assert guess_modality(folder) == VISION
    assert guess_modality(str(tiny_llama_dir)) == LANGUAGE
    for model_id in ("facebook/dinov2-small", "openai/clip-vit-base-patch32",
                     "google/siglip-base-patch16-224", "facebook/dinov2-large", "facebook/vit-mae-base"):
        assert guess_modality(model_id) == VISION, model_id
    for model_id in ("HuggingFaceTB/SmolLM2-360M", "meta-llama/Llama-3.2-1B", "model.gguf"):
        assert guess_modality(model_id) == LANGUAGE, model_id
    lms, vms = select_models("demo", [hub_folders["dinov2"], str(tiny_llama_dir)], "all")
    assert [m.id for m in vms] == [hub_folders["dinov2"]] and [m.id for m in lms] == [str(tiny_llama_dir)]


def test_cached_config_decides_over_the_name(tmp_path):
    """A Hub id whose name says nothing is routed by its config in the local Hub cache."""
    snapshot = tmp_path / "models--lab--mystery" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "dinov2", "architectures": ["Dinov2Model"]}))
    (tmp_path / "models--lab--mystery" / "refs").mkdir()
    (tmp_path / "models--lab--mystery" / "refs" / "main").write_text("abc123")
    llama = tmp_path / "models--lab--clip-chat" / "snapshots" / "def456"
    llama.mkdir(parents=True)
    (llama / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    (tmp_path / "models--lab--clip-chat" / "refs").mkdir()
    (tmp_path / "models--lab--clip-chat" / "refs" / "main").write_text("def456")
    code = ("from platonic.stages.extract import guess_modality as g; "
            "print(g('lab/mystery'), g('lab/clip-chat'), g('lab/unknown'))")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert proc.stdout.split() == [VISION, LANGUAGE, LANGUAGE]


def test_loader_field_and_bad_hub_id_is_one_line_error():
    from platonic.errors import PlatonicError
    from platonic.models.hub_vision import vision_loader

    assert vision_loader(get_model("facebook/dinov2-small", VISION)) == "transformers"
    assert vision_loader(get_model("vit_small_patch16_224.augreg_in21k", VISION)) == "timm"
    assert vision_loader(ModelSpec("x", VISION, "f", "s", options={"loader": "timm"})) == "timm"
    with pytest.raises(PlatonicError, match="loader must be timm or transformers"):
        vision_loader(ModelSpec("x", VISION, "f", "s", options={"loader": "keras"}))
    with pytest.raises(PlatonicError, match="cannot load vision model 'nobody/no-such-vit'"):
        load_vision_model(get_model("nobody/no-such-vit", VISION))


def test_extract_cli_routes_a_hub_vision_folder(hub_folders, tiny_llama_dir, tmp_path):
    """`--modality all --models <dinov2 folder> <llama folder>`: one vision, one language file,
    the vision one equal to the features of the transformers path."""
    from platonic.io.features import feature_path, load_features

    root = Path(__file__).resolve().parents[2]
    folder = hub_folders["dinov2"]
    proc = subprocess.run(
        [sys.executable, str(root / "extract_features.py"), "--dataset", "embedded",
         "--num_samples", "5", "--modality", "all", "--models", f"{folder},{tiny_llama_dir}",
         "--output_dir", str(tmp_path / "f"), "--dtype", "float32"],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    vision = load_features(feature_path(tmp_path / "f", "embedded", "seed0", folder, "cls"))
    assert vision.meta["modality"] == VISION and vision.feats.shape == (5, DEPTH, WIDTH)
    from platonic.data.datasets import load_data

    expected = torch.stack(_hooked_layers(folder, "dinov2", load_data("embedded", "seed0", 5).images), 1)
    torch.testing.assert_close(vision.feats, expected, rtol=1e-4, atol=1e-5)
    assert feature_path(tmp_path / "f", "embedded", "seed0", str(tiny_llama_dir), "avg").exists()
