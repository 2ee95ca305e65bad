"""Vision models: loading (timm name, local checkpoint, demo packages; Hub ids through
`platonic.models.hub_vision`) and per-layer features.

ViTs give the CLS token after every block (the residual stream before the final norm), via
`forward_intermediates(..., return_prefix_tokens=True)`: without that flag timm drops the prefix
tokens and token 0 would be a patch token. Models without prefix tokens give the mean patch
token. CNNs give every stage's globally average-pooled map plus the pooled head features.
Layers of different widths are zero-padded to the widest (which changes no inner product or
norm); the true widths are in the file's metadata as `layer_dims`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from platonic.errors import PlatonicError, first_line
from platonic.io import identity
from platonic.models.devices import is_out_of_memory
from platonic.models.hub_vision import (
    TRANSFORMERS,
    hub_layers,
    load_hub_model,
    pixel_transform,
    vision_loader,
)
from platonic.models.registry import ModelSpec


@dataclass
class VisionModel:
    model: torch.nn.Module
    transform: object
    num_params: int
    is_transformer: bool
    hub_pool: str | None = None  # set for transformers models: "cls" or "mean" per block


@dataclass
class ImageFeatures:
    feats: torch.Tensor
    layer_dims: list[int]
    forward_passes: int = 0
    batch_sizes: list[int] = field(default_factory=list)



def _load_by_position(model: torch.nn.Module, checkpoint: Path, model_id: str) -> None:
    """Pair a foreign state dict with timm's tensors in order (names differ, shapes must not)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    own = model.state_dict()
    if len(state) != len(own):
        raise PlatonicError(f"{checkpoint}: {len(state)} tensors, but timm's model for {model_id} has {len(own)}")
    renamed = {}
    for (theirs, value), (name, target) in zip(state.items(), own.items(), strict=True):
        if value.shape != target.shape:
            raise PlatonicError(f"{checkpoint}: tensor {theirs} {tuple(value.shape)} does not fit "
                                f"{name} {tuple(target.shape)} of {model_id}")
        renamed[name] = value
    model.load_state_dict(renamed)


def _create(spec: ModelSpec) -> torch.nn.Module:
    import timm

    options = spec.options
    name, _, checkpoint = spec.id.partition("@")
    arch = options.get("timm_name", name)
    if "random_init_seed" in options:
        torch.manual_seed(int(options["random_init_seed"]))
        return timm.create_model(arch, pretrained=False)
    if "source" in options:
        model = timm.create_model(arch, pretrained=False)
        path = Path(options["source"]())
        if options.get("by_position"):
            _load_by_position(model, path, spec.id)
        else:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model
    if checkpoint:
        if not Path(checkpoint).exists():
            raise PlatonicError(f"vision model {spec.id!r}: checkpoint {checkpoint} not found")
        model = timm.create_model(arch, pretrained=False)
        load_checkpoint_safely(model, Path(checkpoint))
        return model
    return timm.create_model(arch, pretrained=True)


STATE_DICT_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")  # timm's order


def load_checkpoint_safely(model: torch.nn.Module, checkpoint: Path) -> None:
    """Load a user's checkpoint without unpickling code: safetensors, a weights-only
    `torch.load`, or timm's JAX `.npz` reader (NumPy arrays, pickles refused); whatever the
    installed timm's own default."""
    from timm.models import clean_state_dict, load_checkpoint

    if checkpoint.suffix.lower() in (".npz", ".npy"):
        load_checkpoint(model, str(checkpoint))
        return
    try:
        if checkpoint.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(checkpoint))
        else:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and safetensors errors alike
        raise PlatonicError(f"{checkpoint}: not a weights-only checkpoint ({first_line(err)}); "
                            "save its state dict with safetensors") from err
    if isinstance(state, dict):
        key = next((k for k in STATE_DICT_KEYS if isinstance(state.get(k), dict)), None)
        state = state[key] if key else state
    if not isinstance(state, dict):
        raise PlatonicError(f"{checkpoint}: holds no state dict")
    model.load_state_dict(clean_state_dict(state))


def weights_identity(spec: ModelSpec) -> dict:
    """What identifies the weights `load_vision_model` would load: a seed, the content of a
    local file, or the Hub commit of timm's pretrained weights."""
    options = spec.options
    name, _, checkpoint = spec.id.partition("@")
    if "random_init_seed" in options:
        return {"random_init_seed": int(options["random_init_seed"])}
    if "source" in options:
        return identity.weights_identity(str(options["source"]()))
    if checkpoint:
        return identity.weights_identity(checkpoint)
    return identity.weights_identity(_timm_hub_id(options.get("timm_name", name)), options.get("revision"))


def _timm_hub_id(name: str) -> str:
    """The Hub repository timm downloads a pretrained model from (else the timm name itself)."""
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(name)
    except Exception:  # an unknown name: the loader reports it
        return name
    return getattr(cfg, "hf_hub_id", None) or name


def load_vision_model(spec: ModelSpec, device: str = "cpu", dtype: torch.dtype = torch.float32) -> VisionModel:
    """A model in eval mode with its own eval transform (timm's, or the image processor).

    Ids: a timm name with pretrained tag (from the Hub), `arch@/path/checkpoint` (local weights),
    a registry entry whose options say where its weights are, or a transformers Hub id / folder
    (see `platonic.models.hub_vision.vision_loader`).
    """
    import timm.data

    if vision_loader(spec) == TRANSFORMERS:
        model, processor, pool = load_hub_model(spec, device, dtype)
        num_params = sum(p.numel() for p in model.parameters())
        return VisionModel(model, pixel_transform(processor), num_params, True, hub_pool=pool)
    try:
        model = _create(spec)
    except PlatonicError:
        raise
    except (OSError, RuntimeError, ValueError) as err:
        raise PlatonicError(
            f"cannot load vision model {spec.id!r} ({first_line(err)}); without network, pass a "
            "local checkpoint as --models 'timm_arch@/path/to/weights.safetensors'") from err
    model = model.to(device=device, dtype=dtype).eval()
    config = timm.data.resolve_model_data_config(model)
    transform = timm.data.create_transform(**config, is_training=False)
    num_params = sum(p.numel() for p in model.parameters())
    return VisionModel(model, transform, num_params, hasattr(model, "blocks") and hasattr(model, "num_prefix_tokens"))


def _transformer_layers(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    if getattr(model, "num_prefix_tokens", 0) > 0:
        blocks = model.forward_intermediates(x, intermediates_only=True, return_prefix_tokens=True,
                                             output_fmt="NLC")
        return [prefix[:, 0] for _, prefix in blocks]
    blocks = model.forward_intermediates(x, intermediates_only=True, output_fmt="NLC")
    return [tokens.flatten(1, -2).mean(dim=1) for tokens in blocks]


def _cnn_layers(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    head, stages = model.forward_intermediates(x)  # one pass: the stages, then the head features
    pooled = [stage.mean(dim=(2, 3)) for stage in stages]
    return pooled + [head.mean(dim=(2, 3)) if head.ndim == 4 else head]


def layer_features(vm: VisionModel, x: torch.Tensor) -> list[torch.Tensor]:
    """Per-layer [B, D_l] features of a batch of transformed images."""
    with torch.inference_mode():
        if vm.hub_pool is not None:
            layers = hub_layers(vm.model, x, vm.hub_pool)
        elif vm.is_transformer:
            layers = _transformer_layers(vm.model, x)
        else:
            layers = _cnn_layers(vm.model, x)
    return [layer.float().cpu() for layer in layers]


def stack_layers(layers: list[torch.Tensor]) -> torch.Tensor:
    """[B, D_l] per layer -> [B, L, max D], zero-padding the narrower layers."""
    width = max(layer.shape[1] for layer in layers)
    padded = [torch.nn.functional.pad(layer, (0, width - layer.shape[1])) for layer in layers]
    return torch.stack(padded, dim=1)


def encode_images(vm: VisionModel, images: list[Image.Image], batch_size: int = 32,
                  desc: str = "images") -> ImageFeatures:
    """Per-layer features of every image, in order; halves the batch on out-of-memory."""
    device = next(vm.model.parameters()).device
    dtype = next(vm.model.parameters()).dtype
    rows: list[list[torch.Tensor]] = []
    result = ImageFeatures(torch.empty(0), [])
    start, size = 0, batch_size
    with tqdm(total=len(images), desc=desc, unit="img", leave=False) as bar:
        while start < len(images):
            chunk = images[start:start + size]
            x = torch.stack([vm.transform(img.convert("RGB")) for img in chunk]).to(device, dtype)
            try:
                layers = layer_features(vm, x)
            except (torch.OutOfMemoryError, RuntimeError) as err:
                if not is_out_of_memory(err) or size == 1:
                    raise
                size = max(1, size // 2)
                tqdm.write(f"out of memory: batch size now {size}")
                torch.cuda.empty_cache()
                continue
            rows.append(layers)
            result.forward_passes += 1
            result.batch_sizes.append(len(chunk))
            start += len(chunk)
            bar.update(len(chunk))
    per_layer = [torch.cat([batch[k] for batch in rows]) for k in range(len(rows[0]))]
    result.layer_dims = [layer.shape[1] for layer in per_layer]
    result.feats = stack_layers(per_layer)
    return result
