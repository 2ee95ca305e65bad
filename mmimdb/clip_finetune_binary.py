"""Finetune a two-tower CLIP model on one MM-IMDb genre; sweep clip_weight with Hydra (-m).

    python mmimdb/clip_finetune_binary.py -m hydra/launcher=ray model.model.clip_weight=0,1.0 \
        +hydra.launcher.ray.max_concurrent_tasks=2 +model=clip_demo +data=mmimdb mode=train \
        trainer.max_epochs=2 trainer.default_root_dir=results/clip +class_idx=19

See platonic/clip/ and docs/clip.md.
"""

import hydra
from omegaconf import DictConfig

from platonic.clip.train import run_task


@hydra.main(config_path="../configs", config_name="train_mmimdb", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_task(cfg)


if __name__ == "__main__":
    main()
