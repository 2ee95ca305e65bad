"""Every Hydra config composes: each model config with the data config, as the README spells the
command line, and the Ray launcher found by Hydra's plugin discovery."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_class
from omegaconf import OmegaConf

from platonic.clip.towers import check_unknown_towers

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
MODELS = sorted(p.stem for p in (CONFIGS / "model").glob("*.yaml"))
DATA = sorted(p.stem for p in (CONFIGS / "data").glob("*.yaml"))


def _compose(*overrides: str, hydra_config: bool = False):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train_mmimdb", overrides=list(overrides),
                       return_hydra_config=hydra_config)


def test_there_are_configs_to_compose():
    assert {"clip_demo", "clip_sup", "clip_tiny"} <= set(MODELS) and DATA == ["mmimdb"]


@pytest.mark.parametrize("data", DATA)
@pytest.mark.parametrize("model", MODELS)
def test_every_model_composes_with_every_data_config(model, data):
    cfg = _compose(f"+model={model}", f"+data={data}", "+class_idx=19",
                   "model.model.clip_weight=0.5")
    OmegaConf.resolve(cfg)  # every interpolation resolves
    assert cfg.class_idx == 19 and cfg.model.model.clip_weight == 0.5
    assert cfg.model.name
    check_unknown_towers(cfg.model.model.text_tower, cfg.model.model.image_tower)
    assert {"root", "batch_size", "align_samples"} <= set(cfg.data)


def test_callbacks_and_the_ray_launcher_resolve_to_classes():
    cfg = _compose("+model=clip_demo", "+data=mmimdb", "hydra/launcher=ray", hydra_config=True)
    for callback in cfg.hydra.callbacks.values():
        assert isinstance(get_class(callback._target_), type)
    launcher = get_class(cfg.hydra.launcher._target_)
    assert launcher.__name__ == "BoundedRayLauncher"
    assert launcher.__module__ == "hydra_plugins.platonic_ray_launcher.bounded_ray_launcher"
