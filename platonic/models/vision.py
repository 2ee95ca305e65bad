"""Vision models: loading (timm name, local checkpoint, demo packages; Hub ids through
`platonic.models.hub_vision`) and per-layer features.

ViTs give the CLS token after every block (the residual stream before the final norm), via
`forward_intermediates(..., return_prefix_tokens=True)`: without that flag timm drops the prefix
tokens and token 0 would be a patch token. Models without prefix tokens give the mean patch
token. CNNs give every stage's globally average-pooled map plus the pooled head features.
Layers of different widths are zero-padded to the widest (which changes no inner product or
norm); the true widths are in the file's metadata as `layer_dims`.

On the CPU (`cpu_layout`), a CNN's images go through in channels-last tensors (oneDNN's fast
convolutions), at most `CPU_BATCH` at a time (its activations then stay in cache, where 32
images' do not), and with each batch norm that reads a convolution's output folded into that
convolution (`fold_batch_norms`): the same features to fp32 rounding, in under half the time.
A transformer keeps plain batches: it has no batch norm to fold, and 8 images' matrix products
are too small (measured: 1.9x its plain CPU time).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from platonic.errors import PlatonicError, first_line
from platonic.io import identity
from platonic.io.features import equal_to_rounding
from platonic.models.devices import is_out_of_memory
from platonic.models.hub_vision import (
    TRANSFORMERS,
    hub_layers,
    load_hub_model,
    pixel_transform,
    vision_loader,
)
from platonic.models.registry import ModelSpec

CPU_BATCH = 8
CPU_LAYOUT = {"memory_format": "channels_last", "max_batch": CPU_BATCH,  # in feature fingerprints
              "batch_norm": "folded into the convolution before it", "models": "CNNs only"}


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


def _conv_norm_pairs(vm: VisionModel, x: torch.Tensor) -> list[tuple[str, str]]:
    """(convolution, batch norm) module names where the norm, in eval mode with running
    statistics, reads the very tensor the convolution returned, seen while `x` goes through."""
    from timm.layers import BatchNormAct2d

    modules = dict(vm.model.named_modules())
    last: dict[str, tuple[str, torch.Tensor]] = {}
    pairs: list[tuple[str, str]] = []

    def conv_out(name: str):
        return lambda _m, _i, out: last.__setitem__("conv", (name, out))

    def norm_in(name: str):
        def check(_m, inputs):
            conv, out = last.get("conv", ("", None))
            if inputs[0] is out:
                pairs.append((conv, name))
        return check

    hooks = []
    for name, module in modules.items():
        if type(module) is torch.nn.Conv2d:
            hooks.append(module.register_forward_hook(conv_out(name)))
        elif type(module) in (torch.nn.BatchNorm2d, BatchNormAct2d) and not module.training \
                and module.running_mean is not None:
            hooks.append(module.register_forward_pre_hook(norm_in(name)))
    try:
        layer_features(vm, x)
    finally:
        for hook in hooks:
            hook.remove()
    return pairs


def fold_batch_norms(vm: VisionModel, x: torch.Tensor) -> int:
    """Fold each batch norm that reads a convolution's output into that convolution's weights
    and bias: one pass over the activations fewer each (a quarter of an EfficientNet's CPU
    time); timm's BatchNormAct2d keeps its activation. The pairs are found by running `x`, and
    the folded model replaces `vm.model` only if it gives `x` the same features, to fp32
    rounding (a convolution output that something else reads too would not). Returns how many
    norms were folded."""
    pairs = _conv_norm_pairs(vm, x)
    if not pairs:
        return 0
    folded = copy.deepcopy(vm.model)
    modules = dict(folded.named_modules())
    for conv_name, norm_name in pairs:
        conv, norm = modules[conv_name], modules[norm_name]
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        shift = norm.bias - norm.running_mean * scale
        with torch.no_grad():
            conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
            bias = shift if conv.bias is None else conv.bias * scale + shift
            conv.bias = torch.nn.Parameter(bias)
        parent, _, child = norm_name.rpartition(".")
        after = torch.nn.Sequential(norm.drop, norm.act) if hasattr(norm, "act") else torch.nn.Identity()
        setattr(modules[parent] if parent else folded, child, after)
    reference = layer_features(vm, x)
    candidate = layer_features(VisionModel(folded, vm.transform, vm.num_params, vm.is_transformer,
                                           vm.hub_pool), x)
    if not all(equal_to_rounding(a, b) for a, b in zip(reference, candidate, strict=True)):
        return 0
    vm.model = folded
    return len(pairs)


def encode_images(vm: VisionModel, images: Sequence[Image.Image], batch_size: int = 32,
                  desc: str = "images", cpu_layout: bool = False,
                  on_done: Callable[[int], None] | None = None,
                  dtype: torch.dtype = torch.float32) -> ImageFeatures:
    """Per-layer features of every image, in order; halves the batch on out-of-memory.
    `cpu_layout`: for a CNN, channels-last, at most `CPU_BATCH` images a pass (see the module's
    notes);
    `on_done(n)` is called as each batch of n images is done (an overall progress bar).
    Images are read (a lazy sequence decodes them then) and transformed one batch at a time,
    and each batch's features are written into the output, [N, L, max D] in `dtype`, allocated
    at the first batch: memory holds that array, one batch and the model, whatever N."""
    device = next(vm.model.parameters()).device
    model_dtype = next(vm.model.parameters()).dtype
    cpu_layout = cpu_layout and not vm.is_transformer
    layout = torch.channels_last if cpu_layout else torch.contiguous_format
    if cpu_layout:
        probe = images[:2]
        fold_batch_norms(vm, torch.stack([vm.transform(img.convert("RGB")) for img in probe]).to(device, model_dtype))
        vm.model.to(memory_format=layout)
    result = ImageFeatures(torch.empty(0), [])
    start, size = 0, min(batch_size, CPU_BATCH) if cpu_layout else batch_size
    with tqdm(total=len(images), desc=desc, unit="img", leave=False) as bar:
        while start < len(images):
            chunk = images[start:start + size]
            x = torch.stack([vm.transform(img.convert("RGB")) for img in chunk]).to(device, model_dtype)
            x = x.contiguous(memory_format=layout)
            try:
                layers = layer_features(vm, x)
            except (torch.OutOfMemoryError, RuntimeError) as err:
                if not is_out_of_memory(err) or size == 1:
                    raise
                size = max(1, size // 2)
                tqdm.write(f"out of memory: batch size now {size}")
                torch.cuda.empty_cache()
                continue
            if not result.layer_dims:
                result.layer_dims = [layer.shape[1] for layer in layers]
                result.feats = torch.zeros(len(images), len(layers), max(result.layer_dims), dtype=dtype)
            write_rows(result.feats, start, layers)
            result.forward_passes += 1
            result.batch_sizes.append(len(chunk))
            start += len(chunk)
            bar.update(len(chunk))
            if on_done is not None:
                on_done(len(chunk))
    return result


def write_rows(feats: torch.Tensor, start: int, layers: list[torch.Tensor]) -> None:
    """Put one batch's [B, D_l] layers at rows start.. of [N, L, max D] `feats` (converted to its
    dtype; the columns past D_l stay zero: `stack_layers`' padding). Copies: a layer may be a
    view of a whole [B, tokens, D] block output (a ViT's CLS token), which must not be kept."""
    for k, layer in enumerate(layers):
        feats[start:start + layer.shape[0], k, :layer.shape[1]] = layer
