"""Language models: loading (Hub id, local folder, GGUF file, demo packages) and per-layer features.

Features are the hidden states of the embeddings and of every layer, pooled over the real tokens
of each caption (`avg`: mean, `last`: the last real token), plus, for models with a language-model
head, the per-sample mean next-token loss (nats) and bits per byte. Captions are batched by
length so that padded tokens stay within 1.2x the real ones, and results come back in input
order. Padding is on the right by default; on the left, position ids are derived from the
attention mask, so a padded batch gives each caption the features it gets alone.
"""

from __future__ import annotations

import inspect
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from platonic.errors import PlatonicError, first_line
from platonic.io import identity
from platonic.io.identity import file_sha256
from platonic.io.storage import atomic_dir, cache_root
from platonic.models.devices import is_out_of_memory
from platonic.models.registry import ModelSpec

MAX_PAD_RATIO = 1.2
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


@dataclass
class LanguageModel:
    """A loaded model and tokenizer; `causal` models have a head and give loss and bits per byte."""

    model: torch.nn.Module
    tokenizer: object
    causal: bool
    num_params: int
    padding_side: str = "right"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


@dataclass
class TextFeatures:
    """Pooled features [N, L, D] (float32, input order) and per-sample extras."""

    feats: torch.Tensor
    extras: dict[str, torch.Tensor]
    forward_passes: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    batch_sizes: list[int] = field(default_factory=list)


def compute_dtype(device: str, requested: str | None = None) -> torch.dtype:
    """fp32 on the CPU or on request; on a GPU bf16 where supported (compute capability >= 8), else fp16."""
    if requested == "float32" or not device.startswith("cuda"):
        return torch.float32
    major, _ = torch.cuda.get_device_capability(torch.device(device))
    return torch.bfloat16 if major >= 8 else torch.float16



def _source_path(spec: ModelSpec) -> str:
    source = spec.options.get("source")
    return str(source()) if callable(source) else str(source or spec.id)


def weights_identity(spec: ModelSpec) -> dict:
    """What identifies the weights (and config, tokenizer) that `load_language_model` would load."""
    return identity.weights_identity(_source_path(spec), spec.options.get("revision"))


def _load_kwargs(device: str, dtype: torch.dtype, qlora: bool) -> dict:
    kwargs: dict = {"dtype": dtype}
    if device.startswith("cuda"):
        kwargs["device_map"] = "auto"
    if qlora:
        try:
            import bitsandbytes  # noqa: F401
            from transformers import BitsAndBytesConfig
        except ImportError as err:
            raise PlatonicError("--qlora needs the bitsandbytes package and a CUDA GPU") from err
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    return kwargs


def _is_causal(path: str, spec: ModelSpec) -> bool:
    if "encoder" in spec.options:
        return not spec.options["encoder"]
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    architectures = getattr(config, "architectures", None) or []
    return not architectures or any(a.endswith(_CAUSAL_SUFFIXES) for a in architectures)


def _from_pretrained(path: str, causal: bool, **kwargs):
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    cls = AutoModelForCausalLM if causal else AutoModel
    return cls.from_pretrained(path, **kwargs), AutoTokenizer.from_pretrained(path, **{
        k: v for k, v in kwargs.items() if k == "gguf_file"})


def gguf_cache_dir(gguf: Path, dtype: torch.dtype) -> Path:
    """Cache folder of a de-quantised GGUF model, keyed by the file's content and the loader."""
    import transformers

    key = file_sha256(gguf)[:16] + f"-tf{transformers.__version__}-{str(dtype).removeprefix('torch.')}"
    return cache_root() / "gguf" / f"{gguf.stem}-{key}"


def _load_gguf(gguf: Path, dtype: torch.dtype, load_kwargs: dict, rebuild: bool = False):
    """Load a GGUF file once (slow de-quantisation), then from a save_pretrained copy (fast)."""
    cached = gguf_cache_dir(gguf, dtype)
    if rebuild:
        shutil.rmtree(cached, ignore_errors=True)
    if (cached / "config.json").exists():
        return _from_pretrained(str(cached), True, **load_kwargs)
    model, tokenizer = _from_pretrained(str(gguf.parent), True, gguf_file=gguf.name, dtype=dtype)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    _save_atomically(model, tokenizer, cached)
    if load_kwargs.get("device_map") or load_kwargs.get("quantization_config"):
        return _from_pretrained(str(cached), True, **load_kwargs)
    return model, tokenizer


def _save_atomically(model, tokenizer, target: Path) -> None:
    with atomic_dir(target, "config.json") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def load_language_model(spec: ModelSpec, device: str = "cpu", dtype: torch.dtype = torch.float32,
                        qlora: bool = False, padding_side: str = "right",
                        force_download: bool = False) -> LanguageModel:
    """Load a causal LM (Hub id, folder, `.gguf` file) or a plain encoder, in eval mode.

    `force_download` re-fetches Hub weights and rebuilds the de-quantised GGUF cache.
    """
    path = _source_path(spec)
    kwargs = _load_kwargs(device, dtype, qlora)
    try:
        if path.endswith(".gguf"):
            model, tokenizer = _load_gguf(Path(path), dtype, kwargs, rebuild=force_download)
            causal = True
        else:
            causal = _is_causal(path, spec)
            if force_download and not Path(path).exists():
                kwargs["force_download"] = True
            model, tokenizer = _from_pretrained(path, causal, **kwargs)
    except (OSError, ValueError) as err:
        raise PlatonicError(
            f"cannot load language model {spec.id!r} ({first_line(err)}); without network, "
            "download it elsewhere and pass its local folder (or .gguf file) with --models") from err
    if "device_map" not in kwargs and "quantization_config" not in kwargs:
        model = model.to(device)
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    num_params = sum(p.numel() for p in model.parameters())
    return LanguageModel(model, tokenizer, causal, num_params, padding_side)


def make_batches(lengths: list[int], batch_size: int, max_pad_ratio: float = MAX_PAD_RATIO) -> list[list[int]]:
    """Indices grouped by length: at most `batch_size` each, padded tokens <= ratio x real tokens."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    real = 0
    for index in order:
        longest = lengths[index]  # sorted ascending, so the newcomer is the longest
        fits = len(current) < batch_size and longest * (len(current) + 1) <= max_pad_ratio * (real + longest)
        if current and not fits:
            batches.append(current)
            current, real = [], 0
        current.append(index)
        real += lengths[index]
    if current:
        batches.append(current)
    return batches


def collate(token_ids: list[list[int]], pad_id: int, side: str, width: int | None = None) -> dict[str, torch.Tensor]:
    """Pad to `width` (default: the batch's longest); position ids count from the first real token."""
    width = max([*(len(ids) for ids in token_ids), width or 0])
    rows, masks = [], []
    for ids in token_ids:
        pad = [pad_id] * (width - len(ids))
        mask = [1] * len(ids)
        rows.append(pad + ids if side == "left" else ids + pad)
        masks.append([0] * len(pad) + mask if side == "left" else mask + [0] * len(pad))
    batch = {"input_ids": torch.tensor(rows), "attention_mask": torch.tensor(masks)}
    batch["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    return batch


def pool_hidden(hidden: torch.Tensor, mask: torch.Tensor, pool: str) -> torch.Tensor:
    """[B, L, T, D] hidden states -> [B, L, D]: mean over real tokens or the last real token.

    Padded positions are excluded with `where`, not multiplied by 0, so a NaN there (fully
    masked attention rows in half precision) cannot leak into the result.
    """
    real = mask.bool()[:, None, :, None]
    if pool == "avg":
        summed = torch.where(real, hidden, torch.zeros((), dtype=hidden.dtype)).sum(dim=2)
        return summed / mask.sum(dim=1).clamp(min=1)[:, None, None].to(hidden.dtype)
    if pool == "last":
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (positions * mask).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), :, last]
    raise PlatonicError(f"language pooling must be avg or last, got {pool!r}")


def next_token_loss(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample summed next-token loss (nats) over real tokens, and the number of predictions."""
    targets = input_ids[:, 1:]
    valid = (mask[:, 1:] * mask[:, :-1]).bool()
    predictions = logits[:, :-1].float()
    losses = torch.nn.functional.cross_entropy(  # rows of [B * T, V]: far faster than [B, V, T]
        predictions.reshape(-1, predictions.shape[-1]), targets.reshape(-1), reduction="none",
    ).view_as(targets)
    losses = torch.where(valid, losses, torch.zeros((), dtype=losses.dtype))
    return losses.sum(dim=1), valid.sum(dim=1)


def _accepts(model: torch.nn.Module, argument: str) -> bool:
    return argument in inspect.signature(model.forward).parameters


def tokenize(lm: LanguageModel, texts: list[str], max_length: int | None = None) -> list[list[int]]:
    """Token ids of each text with the tokenizer's special tokens, no padding."""
    encoded = lm.tokenizer(texts, add_special_tokens=True, truncation=max_length is not None,
                           max_length=max_length)["input_ids"]
    empty = [i for i, ids in enumerate(encoded) if not ids]
    if empty:
        raise PlatonicError(f"texts {empty[:10]} give no tokens")
    return encoded


def effective_padding_side(lm: LanguageModel) -> str:
    """Left padding only where the model takes position ids: without them, left pads would shift
    every real token's position (learned or rotary), so such a model is padded on the right,
    which changes no real token's features under causal or masked attention."""
    return "left" if lm.padding_side == "left" and _accepts(lm.model, "position_ids") else "right"


def _forward(lm: LanguageModel, token_ids: list[list[int]], pool: str, width: int | None = None):
    side = effective_padding_side(lm)
    batch = collate(token_ids, lm.tokenizer.pad_token_id, side, width)
    inputs = {k: v.to(lm.device) for k, v in batch.items()}
    if side == "right":
        inputs.pop("position_ids")
    model = lm.model if lm.causal else lm.model.base_model  # no vocabulary-sized head unless needed
    with torch.inference_mode():
        out = model(**inputs, output_hidden_states=True)
    hidden = torch.stack(out.hidden_states, dim=1).float()
    pooled = pool_hidden(hidden, inputs["attention_mask"], pool).cpu()
    if not lm.causal:
        return pooled, None, None
    loss_sum, count = next_token_loss(out.logits, inputs["input_ids"], inputs["attention_mask"])
    return pooled, loss_sum.cpu(), count.cpu()


def _forward_splitting(lm: LanguageModel, token_ids: list[list[int]], pool: str,
                       on_split: Callable[[int], None]) -> list[tuple]:
    """Forward one batch; on out-of-memory, halve it and go on (down to single captions)."""
    try:
        return [_forward(lm, token_ids, pool)]
    except (torch.OutOfMemoryError, RuntimeError) as err:
        if not is_out_of_memory(err) or len(token_ids) == 1:
            raise
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    half = len(token_ids) // 2
    on_split(half)
    return (_forward_splitting(lm, token_ids[:half], pool, on_split)
            + _forward_splitting(lm, token_ids[half:], pool, on_split))


def encode_texts(lm: LanguageModel, texts: list[str], pool: str = "avg", batch_size: int = 32,
                 max_length: int | None = None, desc: str = "captions",
                 next_token_loss: bool = True) -> TextFeatures:
    """Per-layer pooled features of every text, and loss / bits per byte for causal models
    (unless `next_token_loss` is False: then only the base model runs, without its head)."""
    if not next_token_loss:
        lm = replace(lm, causal=False)
    token_ids = tokenize(lm, texts, max_length)
    lengths = [len(ids) for ids in token_ids]
    feats: list[torch.Tensor | None] = [None] * len(texts)
    loss_sum = torch.full((len(texts),), math.nan)
    counts = torch.zeros(len(texts), dtype=torch.long)
    result = TextFeatures(torch.empty(0), {})
    limit = [batch_size]

    def shrink(size: int) -> None:
        limit[0] = max(1, min(limit[0], size))
        tqdm.write(f"out of memory: batch size now {limit[0]}")

    pending = make_batches(lengths, batch_size)
    with tqdm(total=len(texts), desc=desc, unit="text", leave=False) as bar:
        while pending:
            batch = pending.pop(0)
            if len(batch) > limit[0]:
                pending.insert(0, batch[limit[0]:])
                batch = batch[:limit[0]]
            pieces = _forward_splitting(lm, [token_ids[i] for i in batch], pool, shrink)
            _scatter(batch, pieces, feats, loss_sum, counts)
            result.forward_passes += len(pieces)
            result.batch_sizes.append(len(batch))
            result.real_tokens += sum(lengths[i] for i in batch)
            result.padded_tokens += max(lengths[i] for i in batch) * len(batch)
            bar.update(len(batch))
    result.feats = torch.stack(feats)  # type: ignore[arg-type]
    result.extras = _extras(texts, lengths, loss_sum, counts, lm.causal)
    return result


def _scatter(batch: list[int], pieces: list[tuple], feats: list, loss_sum: torch.Tensor,
             counts: torch.Tensor) -> None:
    pooled = torch.cat([p[0] for p in pieces])
    for row, index in enumerate(batch):
        feats[index] = pooled[row]
    if pieces[0][1] is not None:
        loss_sum[batch] = torch.cat([p[1] for p in pieces]).float()
        counts[batch] = torch.cat([p[2] for p in pieces])


def _extras(texts: list[str], lengths: list[int], loss_sum: torch.Tensor, counts: torch.Tensor,
            causal: bool) -> dict[str, torch.Tensor]:
    num_bytes = torch.tensor([len(t.encode("utf-8")) for t in texts], dtype=torch.float32)
    extras = {"num_tokens": torch.tensor(lengths, dtype=torch.float32), "num_bytes": num_bytes}
    if causal:
        extras["loss"] = loss_sum / counts.clamp(min=1)
        extras["loss"][counts == 0] = math.nan
        extras["bpb"] = loss_sum / math.log(2) / num_bytes.clamp(min=1)
    return extras
