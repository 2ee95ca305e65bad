"""Shared fixtures: tiny language models built offline (random weights, real tokenizer files)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def _save_tiny(folder: Path, config) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from platonic.models.weights import minilm_folder

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(minilm_folder())
    config.vocab_size = tokenizer.vocab_size
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A random-init Llama (rotary positions) with the MiniLM WordPiece tokenizer, in a folder."""
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return _save_tiny(tmp_path_factory.mktemp("tiny_llama"), config)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    """A random-init GPT-2 (learned absolute positions: the left-padding trap), in a folder."""
    from transformers import GPT2Config

    config = GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=128)
    return _save_tiny(tmp_path_factory.mktemp("tiny_gpt2"), config)


@pytest.fixture(scope="session")
def local_ray():
    """A local Ray instance on 2 CPUs for the session (the stages join it instead of starting one)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def ray_submissions(monkeypatch) -> list[tuple[str, int | None]]:
    """(task name, max_retries) of every Ray task the driver submits from here on, whichever
    way it was made (a spy on Ray's own submission call)."""
    from ray.remote_function import RemoteFunction

    submitted: list[tuple[str, int | None]] = []
    real = RemoteFunction._remote

    def spy(self, args=None, kwargs=None, **options):
        submitted.append((options.get("name") or self._function_name,
                          options.get("max_retries", self._default_options.get("max_retries"))))
        return real(self, args, kwargs, **options)

    monkeypatch.setattr(RemoteFunction, "_remote", spy)
    return submitted


@pytest.fixture
def tiny_custom_models(tmp_path, tiny_llama_dir) -> Path:
    """A `custom` model list (for $PLATONIC_CUSTOM_MODELS): the tiny Llama and timm's test ViT."""
    models = tmp_path / "models.json"
    models.write_text(json.dumps([
        {"id": str(tiny_llama_dir), "modality": "language", "family": "Tiny", "size": "2l"},
        {"id": "test_vit", "modality": "vision", "family": "Test ViT", "size": "tiny",
         "options": {"random_init_seed": 0}}]))
    return models


@pytest.fixture
def captions() -> list[str]:
    """Captions of clearly different lengths, so length sorting reorders them."""
    return [
        "A red circle.",
        "Three small green crosses in the top left corner on a light blue background, drawn by hand.",
        "A dog.",
        "Two large blue squares at the bottom on a white background.",
        "An orange star on the right.",
        "A very long caption about a purple diamond that sits in the center of a dark green "
        "background next to nothing else at all, which makes it the longest one here.",
        "Black triangle.",
    ]
