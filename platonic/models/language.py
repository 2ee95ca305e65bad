"""Language models: loading (Hub id, local folder, GGUF file, demo packages) and per-layer features.

Features are the hidden states of the embeddings and of every layer, pooled over the real tokens
of each caption (`avg`: mean, `last`: the last real token), plus, for models with a language-model
head, the per-sample mean next-token loss (nats) and bits per byte. Captions are batched by
length so that padded tokens stay within 1.2x the real ones, and results come back in input
order. Padding is on the right by default; on the left, position ids are derived from the
attention mask, so a padded batch gives each caption the features it gets alone.

Prefix packing (`share_prefixes`, used on the CPU): captions that begin alike ("A small red
circle ..." / "A small red square ...") are run as one prefix tree, each distinct prefix once:
every tree position attends to itself and its ancestors only, at position id = its depth, so it
computes what the plain causal pass computes at that position (to fp32 rounding), and the
language-model head runs once per position that some caption continues (never on padding or
on a caption's last token). A model is packed only after a probe shows it gives the plain
pass's features and losses that way (a model that builds positions from a 2D mask, as ALiBi
does, or post-processes its logits in a way the head call here misses, is run plainly).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from platonic.errors import PlatonicError, first_line
from platonic.io import identity
from platonic.io.features import equal_to_rounding
from platonic.io.identity import file_sha256
from platonic.io.storage import atomic_dir, cache_root
from platonic.models.devices import is_out_of_memory
from platonic.models.registry import ModelSpec

MAX_PAD_RATIO = 1.2
# Captions are prefix-packed only when that runs at most this share of their tokens' positions.
MAX_PACKED_RATIO = 0.8
# Nodes per language-model-head call in a prefix pack: a pack of 32 captions in one call (its
# [rows, vocabulary] product runs about 1.3x faster per row than in 128-row calls on 2 CPU
# cores); bounds the logits' memory (Gemma-3: 512 MiB of float32). In feature fingerprints.
HEAD_ROWS = 512
PROBE_TEXTS = ("A small red circle on a mat.", "A small red circle in a box.", "Two blue squares.")
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


@dataclass
class LanguageModel:
    """A loaded model and tokenizer; `causal` models have a head and give loss and bits per byte."""

    model: torch.nn.Module
    tokenizer: object
    causal: bool
    num_params: int
    padding_side: str = "right"
    prefix_packing: bool | None = None  # probed on first use (see `packs_prefixes`)

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
    padded_tokens: int = 0  # positions run: real plus padding, or the prefix packs' positions
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


@contextlib.contextmanager
def _gguf_work_once() -> Iterator[None]:
    """Within this block, transformers' GGUF loader does its per-file work once. It parses the
    file's header for the config, the tokenizer, the model's config and the weights: four times,
    each ~25 s of CPU for Gemma-3's 262k-word vocabulary (the reader walks every word); and it
    builds gguf's tensor-name map once per submodule (~400 times, ~10 s for SmolLM2). Both
    results are read-only, so each is made once per file (per architecture and depth)."""
    import gguf

    parse, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[tuple[str, str], object] = {}

    def read_once(path: str | os.PathLike, mode: str = "r"):
        key = (os.fspath(path), mode)
        if key not in readers:
            readers[key] = parse(path, mode)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = read_once, functools.cache(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = parse, name_map


def _load_gguf(gguf: Path, dtype: torch.dtype, load_kwargs: dict, rebuild: bool = False):
    """Load a GGUF file once (slow de-quantisation), then from a save_pretrained copy (fast)."""
    cached = gguf_cache_dir(gguf, dtype)
    if rebuild:
        shutil.rmtree(cached, ignore_errors=True)
    if (cached / "config.json").exists():
        return _from_pretrained(str(cached), True, **load_kwargs)
    with _gguf_work_once():
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
                       on_split: Callable[[int], None], packed: bool = False) -> list[tuple]:
    """Forward one batch; on out-of-memory, halve it and go on (down to single captions)."""
    try:
        return [_forward_packed(lm, token_ids, pool) if packed else _forward(lm, token_ids, pool)]
    except (torch.OutOfMemoryError, RuntimeError) as err:
        if not is_out_of_memory(err) or len(token_ids) == 1:
            raise
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    half = len(token_ids) // 2
    on_split(half)
    return (_forward_splitting(lm, token_ids[:half], pool, on_split, packed)
            + _forward_splitting(lm, token_ids[half:], pool, on_split, packed))


# ---- prefix packing ---------------------------------------------------------------------------

@dataclass
class PrefixPack:
    """Token sequences as a prefix tree: one node per distinct prefix, at its last token."""

    tokens: torch.Tensor  # [n] each node's token
    parents: torch.Tensor  # [n] the node of the prefix one token shorter; -1 for a first token
    depths: torch.Tensor  # [n] position of the node's token in its sequences
    index: torch.Tensor  # [B, T] the node at each position of each sequence (0 past its end)
    mask: torch.Tensor  # [B, T] 1 at real positions

    @property
    def attention_bias(self) -> torch.Tensor:
        """[n, n] True where a node may attend: itself and its ancestors."""
        width = self.index.shape[1]
        real = self.mask.bool()
        pairs = torch.ones(width, width, dtype=torch.bool).tril() & real[:, :, None] & real[:, None, :]
        allowed = torch.zeros(len(self.tokens), len(self.tokens), dtype=torch.bool)
        allowed[self.index[:, :, None].expand_as(pairs)[pairs], self.index[:, None, :].expand_as(pairs)[pairs]] = True
        return allowed


def prefix_pack(token_ids: list[list[int]]) -> PrefixPack:
    """The prefix tree of `token_ids`, nodes numbered in order of first appearance."""
    nodes: dict[tuple[int, int], int] = {}
    tokens: list[int] = []
    parents: list[int] = []
    depths: list[int] = []
    width = max(len(ids) for ids in token_ids)
    index, mask = [], []
    for ids in token_ids:
        node, path = -1, []
        for depth, token in enumerate(ids):
            child = nodes.setdefault((node, token), len(tokens))
            if child == len(tokens):
                tokens.append(token)
                parents.append(node)
                depths.append(depth)
            node = child
            path.append(node)
        index.append(path + [0] * (width - len(path)))
        mask.append([1] * len(path) + [0] * (width - len(path)))
    return PrefixPack(torch.tensor(tokens), torch.tensor(parents), torch.tensor(depths),
                      torch.tensor(index), torch.tensor(mask))


def packed_positions(token_ids: list[list[int]]) -> int:
    """Nodes of the prefix tree of `token_ids` (sorted): the positions a prefix pack runs."""
    total, previous = 0, []
    for ids in sorted(token_ids):
        shared = next((i for i, (a, b) in enumerate(zip(ids, previous, strict=False)) if a != b),
                      min(len(ids), len(previous)))
        total += len(ids) - shared
        previous = ids
    return total


def head_logits(lm: LanguageModel, hidden: torch.Tensor) -> torch.Tensor:
    """The language-model head on final hidden states (with Gemma's logit soft-capping)."""
    logits = lm.model.get_output_embeddings()(hidden)
    cap = getattr(lm.model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def packed_next_token_loss(lm: LanguageModel, final: torch.Tensor,
                           pack: PrefixPack) -> tuple[torch.Tensor, torch.Tensor]:
    """`next_token_loss` from a prefix pack's final hidden states [n, D]: the head runs once per
    node that some sequence continues, `HEAD_ROWS` nodes at a time."""
    predicted = (pack.parents >= 0).nonzero().flatten()  # every node but the first tokens
    sources, row = pack.parents[predicted].unique(return_inverse=True)
    nll = torch.zeros(len(pack.tokens), device=final.device)
    targets = pack.tokens.to(final.device)
    for start in range(0, len(sources), HEAD_ROWS):
        logits = head_logits(lm, final[sources[start:start + HEAD_ROWS].to(final.device)])
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        chosen = (row >= start) & (row < start + HEAD_ROWS)
        nodes = predicted[chosen].to(final.device)
        nll[nodes] = -log_probs[(row[chosen] - start).to(final.device), targets[nodes]]
    positions = torch.arange(pack.index.shape[1])
    valid = (pack.mask.bool() & (positions >= 1)).to(final.device)
    losses = torch.where(valid, nll[pack.index.to(final.device)], torch.zeros((), dtype=nll.dtype))
    return losses.sum(dim=1), valid.sum(dim=1)


def _forward_packed(lm: LanguageModel, token_ids: list[list[int]], pool: str):
    """`_forward` of a causal model from the prefix tree of `token_ids`, in one sequence."""
    pack = prefix_pack(token_ids)
    dtype = next(lm.model.parameters()).dtype
    bias = torch.zeros((), dtype=dtype).masked_fill(~pack.attention_bias, torch.finfo(dtype).min)
    inputs = {"input_ids": pack.tokens[None], "position_ids": pack.depths[None],
              "attention_mask": bias[None, None]}
    inputs = {k: v.to(lm.device) for k, v in inputs.items()}
    with torch.inference_mode():
        out = lm.model.base_model(**inputs, output_hidden_states=True)
        nodes = torch.stack(out.hidden_states, dim=1)[0]  # [L, n, D]
        hidden = nodes[:, pack.index.to(lm.device)].transpose(0, 1).float()  # [B, L, T, D]
        pooled = pool_hidden(hidden, pack.mask.to(lm.device), pool).cpu()
        loss_sum, count = packed_next_token_loss(lm, out.last_hidden_state[0], pack)
    return pooled, loss_sum.cpu(), count.cpu()


def _attention_span(lm: LanguageModel) -> int | None:
    """The fewest tokens any layer attends over (a sliding window), which a pack cannot honour."""
    spans = [getattr(lm.model.config, name, None) for name in ("sliding_window", "attention_chunk_size")]
    spans = [s for s in spans if isinstance(s, int) and s > 0]
    return min(spans) if spans else None


def packs_prefixes(lm: LanguageModel) -> bool:
    """Whether prefix packs give this model's plain features and losses: probed once, on three
    short captions (two sharing a prefix), against a plain padded batch."""
    if lm.prefix_packing is None:
        lm.prefix_packing = lm.causal and _accepts(lm.model, "position_ids") and _probe_packing(lm)
    return lm.prefix_packing


def _probe_packing(lm: LanguageModel) -> bool:
    token_ids = tokenize(lm, list(PROBE_TEXTS))
    plain = _forward(lm, token_ids, "avg")
    try:
        packed = _forward_packed(lm, token_ids, "avg")
    except (RuntimeError, ValueError, TypeError, IndexError):  # a model that cannot take a 4D mask
        return False
    return torch.equal(packed[2], plain[2]) and all(
        equal_to_rounding(a, b) for a, b in zip(packed[:2], plain[:2], strict=True))


def _uses_packs(lm: LanguageModel, token_ids: list[list[int]], share_prefixes: bool) -> bool:
    if not share_prefixes or len(token_ids) < 2:
        return False
    span = _attention_span(lm)
    if span is not None and max(len(ids) for ids in token_ids) > span:
        return False
    real = sum(len(ids) for ids in token_ids)
    return packed_positions(token_ids) <= MAX_PACKED_RATIO * real and packs_prefixes(lm)


def encode_texts(lm: LanguageModel, texts: list[str], pool: str = "avg", batch_size: int = 32,
                 max_length: int | None = None, desc: str = "captions",
                 next_token_loss: bool = True, share_prefixes: bool = False,
                 on_done: Callable[[int], None] | None = None) -> TextFeatures:
    """Per-layer pooled features of every text, and loss / bits per byte for causal models
    (unless `next_token_loss` is False: then only the base model runs, without its head).

    `share_prefixes`: run batches of up to `batch_size` captions (in sorted token order) as
    prefix packs where the model allows it and that saves positions (see the module's notes).
    `on_done(n)` is called as each batch of n texts is done (an overall progress bar)."""
    if not next_token_loss:
        lm = replace(lm, causal=False)
    token_ids = tokenize(lm, texts, max_length)
    lengths = [len(ids) for ids in token_ids]
    packed = _uses_packs(lm, token_ids, share_prefixes)
    feats: list[torch.Tensor] = []  # [N, L, D], allocated at the first batch
    loss_sum = torch.full((len(texts),), math.nan)
    counts = torch.zeros(len(texts), dtype=torch.long)
    result = TextFeatures(torch.empty(0), {})
    limit = [batch_size]

    def shrink(size: int) -> None:
        limit[0] = max(1, min(limit[0], size))
        tqdm.write(f"out of memory: batch size now {limit[0]}")

    pending = _packs(token_ids, batch_size) if packed else make_batches(lengths, batch_size)
    with tqdm(total=len(texts), desc=desc, unit="text", leave=False) as bar:
        while pending:
            batch = pending.pop(0)
            if len(batch) > limit[0]:
                pending.insert(0, batch[limit[0]:])
                batch = batch[:limit[0]]
            pieces = _forward_splitting(lm, [token_ids[i] for i in batch], pool, shrink, packed)
            _scatter(batch, pieces, feats, loss_sum, counts)
            result.forward_passes += len(pieces)
            result.batch_sizes.append(len(batch))
            result.real_tokens += sum(lengths[i] for i in batch)
            result.padded_tokens += (packed_positions([token_ids[i] for i in batch]) if packed
                                     else max(lengths[i] for i in batch) * len(batch))
            bar.update(len(batch))
            if on_done is not None:
                on_done(len(batch))
    result.feats = feats[0] if feats else torch.empty(0)
    result.extras = _extras(texts, lengths, loss_sum, counts, lm.causal)
    return result


def _packs(token_ids: list[list[int]], size: int) -> list[list[int]]:
    """Indices in sorted token order (neighbours share the longest prefixes), `size` at a time."""
    order = sorted(range(len(token_ids)), key=lambda i: (token_ids[i], i))
    return [order[start:start + size] for start in range(0, len(order), size)]


def _scatter(batch: list[int], pieces: list[tuple], feats: list[torch.Tensor],
             loss_sum: torch.Tensor, counts: torch.Tensor) -> None:
    """A batch's pooled features copied to their rows of the output (`feats[0]`, allocated here
    at the first batch): no batch is kept once copied."""
    pooled = torch.cat([p[0] for p in pieces])
    if not feats:
        feats.append(pooled.new_empty((len(loss_sum), *pooled.shape[1:])))
    feats[0][batch] = pooled
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
