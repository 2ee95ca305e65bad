"""The compute device named on a command line, and what running out of its memory looks like."""

from __future__ import annotations

import torch

from platonic.errors import PlatonicError


def pick_device(name: str | None) -> torch.device:
    """`name` (cpu, cuda, cuda:1, ...) checked against this machine; None: cuda if available."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise PlatonicError(f"--device {name!r}: not a device name (cpu, cuda, cuda:1, ...)") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PlatonicError(f"--device {name}: CUDA is not available on this machine")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise PlatonicError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def stage_device(name: str | None, on_ray: bool) -> str:
    """The device a stage's settings name: here, `pick_device(name)`; on Ray, the one asked for,
    else "cpu" as a placeholder (each task then takes its own, `platonic.run.ray_runner.task_device`)."""
    if on_ray:
        return name or "cpu"
    return str(pick_device(name))


def is_out_of_memory(err: BaseException) -> bool:
    """Whether `err` is a device out-of-memory error (CUDA's type, or a backend's RuntimeError)."""
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()
