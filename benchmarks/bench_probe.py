"""The probe grid trained at once vs 20 separate trainings of the same settings (the original).

Sizes are `N_TRAIN x D`: 360 x 576 is the default run's probe (the embedded fixture's train
movies, SmolLM2-135M's width); 1024 x 4096 is the paper's (1024 sampled movies, a 7B model's
last hidden state). Dev and test have N_TRAIN movies too. 23 genres, the 4 x 5 grid, 100 epochs,
batch 128. Features are synthetic but genre-informative (labels from a noisy linear map of the
features, with MM-IMDb-like genre frequencies). Both sides run once untimed on 2 epochs first,
so one-off initialisation is not timed. Prints both wall times and their ratio per size
(goal >= 5x), and checks that both choose the same (lr, wd, epoch) and that their test macro F1
agree within 0.01. The table goes to stdout, the training's progress bars to stderr.

    python benchmarks/bench_probe.py                          # both sizes (about 2 min on 2 cores)
    python benchmarks/bench_probe.py --sizes 360x576 --epochs 20  # quick look
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch

from platonic.mmimdb.genres import GENRES
from platonic.mmimdb.probe import (
    ProbeConfig,
    multilabel_metrics,
    predict,
    train_grid,
    train_single,
)


def synthetic(n: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    w = torch.randn(dim, len(GENRES), generator=torch.Generator().manual_seed(1234)) / dim**0.5
    rates = torch.linspace(0.4, 0.02, len(GENRES))  # drama common ... film-noir rare
    scores = x @ w + 0.8 * torch.randn(n, len(GENRES), generator=g)
    threshold = torch.stack([torch.quantile(scores[:, c], 1 - rates[c]) for c in range(len(GENRES))])
    return x, (scores > threshold).float()


def test_f1(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    return multilabel_metrics(predict(weight, bias, x), y.numpy(), GENRES)["f1_mean"]


def compare(n: int, dim: int, config: ProbeConfig) -> None:
    (x_train, y_train), (x_dev, y_dev), (x_test, y_test) = (synthetic(n, dim, s) for s in range(3))
    warm = replace(config, epochs=2)
    train_grid(x_train, y_train, x_dev, y_dev, warm)
    train_single(x_train, y_train, x_dev, y_dev, *warm.settings[0], warm)

    started = time.perf_counter()
    grid = train_grid(x_train, y_train, x_dev, y_dev, config)
    grid_s = time.perf_counter() - started
    chosen = grid.chosen
    grid_f1 = test_f1(grid.weight[chosen], grid.bias[chosen], x_test, y_test)

    started = time.perf_counter()
    singles = [train_single(x_train, y_train, x_dev, y_dev, lr, wd, config)
               for lr, wd in config.settings]
    loop_s = time.perf_counter() - started
    best = int(np.argmax([f1 for f1, _, _ in singles]))
    model = singles[best][2]
    loop_f1 = test_f1(model.weight.detach().T, model.bias.detach(), x_test, y_test)

    same = chosen == best and grid.best_epoch[chosen] == singles[best][1]
    print(f"{n:>5} x {dim:<5} {loop_s:9.2f} s {grid_s:8.2f} s {loop_s / grid_s:7.1f}x   "
          f"{'yes' if same else 'NO':>4} {config.settings[chosen]!s:>14} e{grid.best_epoch[chosen]:<3}"
          f" {grid_f1:.4f} {abs(grid_f1 - loop_f1):.1e}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="360x576,1024x4096", help="comma-separated N_TRAINxD")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = ProbeConfig(epochs=args.epochs, batch_size=args.batch_size)
    print(f"C={len(GENRES)} grid={len(config.settings)} epochs={args.epochs} "
          f"batch={args.batch_size} threads={torch.get_num_threads()}; goal: ratio >= 5x, same "
          f"choice, |test F1 difference| <= 0.01")
    print("N_TRAIN x D     20 runs      grid   ratio  same  chosen (lr, wd)  epoch test F1 |diff|")
    for size in args.sizes.split(","):
        n, dim = (int(v) for v in size.lower().split("x"))
        compare(n, dim, config)


if __name__ == "__main__":
    main()
