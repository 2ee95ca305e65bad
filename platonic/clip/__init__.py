"""CLIP finetuning on one MM-IMDb genre with a contrastive-weight sweep (Hydra + Lightning + Ray).

loss (InfoNCE + supervised), towers (registry of text and image towers), module (Lightning),
datamodule (Lightning data module on platonic.mmimdb), settings (checked before any work),
sweep (every job checked first), train (one run: train, evaluate, export, align),
sweep_summary (sweep CSV and plot). The Ray launcher with a cap on jobs in flight is a Hydra
plugin: hydra_plugins/platonic_ray_launcher.
"""
