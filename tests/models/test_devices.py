"""The device named on a command line, and what counts as running out of its memory."""

from __future__ import annotations

import pytest
import torch

from platonic.errors import PlatonicError
from platonic.models.devices import is_out_of_memory, pick_device, stage_device


def test_cpu_and_the_default_device():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_bad_and_unavailable_devices_are_one_line_errors(monkeypatch):
    with pytest.raises(PlatonicError, match="--device 'gpu0': not a device name"):
        pick_device("gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(PlatonicError, match="--device cuda: CUDA is not available"):
        pick_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(PlatonicError, match="--device cuda:2: this machine has 2 GPU"):
        pick_device("cuda:2")
    assert pick_device("cuda:1") == torch.device("cuda", 1)


def test_a_stage_on_ray_keeps_the_device_asked_for_unchecked(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert stage_device("cuda", on_ray=True) == "cuda"  # the cluster's nodes may have one
    assert stage_device(None, on_ray=True) == "cpu"
    assert stage_device(None, on_ray=False) == "cpu"
    with pytest.raises(PlatonicError):
        stage_device("cuda", on_ray=False)


def test_out_of_memory_errors_of_cuda_and_of_other_backends():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
