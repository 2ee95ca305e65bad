"""The probe grid trained at once vs 20 separate trainings of the same settings (the original).

Default sizes are the paper's probe: N = 1024 train and dev movies (the sampled ids), D = 4096
(a 7B language model's last hidden state), 23 genres, the 4 x 5 grid, 100 epochs, batch 128.
Features are synthetic but genre-informative (labels from a noisy linear map of the features,
with MM-IMDb-like genre frequencies). Prints both wall times and their ratio (goal >= 5x), and
checks that both choose the same (lr, wd, epoch) and that their test macro F1 agree within 0.01.

    python benchmarks/bench_probe.py                       # paper size (minutes on 2 cores)
    python benchmarks/bench_probe.py --dim 512 --epochs 20  # quick look
"""

from __future__ import annotations

import argparse
import time

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--dim", type=int, default=4096)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    x_train, y_train = synthetic(args.n, args.dim, 0)
    x_dev, y_dev = synthetic(args.n, args.dim, 1)
    x_test, y_test = synthetic(args.n, args.dim, 2)
    config = ProbeConfig(epochs=args.epochs, batch_size=args.batch_size)
    print(f"N={args.n} D={args.dim} C={len(GENRES)} grid={len(config.settings)} "
          f"epochs={args.epochs} batch={args.batch_size} threads={torch.get_num_threads()}")

    started = time.perf_counter()
    grid = train_grid(x_train, y_train, x_dev, y_dev, config)
    grid_s = time.perf_counter() - started
    chosen = grid.chosen
    grid_f1 = multilabel_metrics(predict(grid.weight[chosen], grid.bias[chosen], x_test),
                                 y_test.numpy(), GENRES)["f1_mean"]

    started = time.perf_counter()
    singles = [train_single(x_train, y_train, x_dev, y_dev, lr, wd, config)
               for lr, wd in config.settings]
    loop_s = time.perf_counter() - started
    best = int(np.argmax([f1 for f1, _, _ in singles]))
    model = singles[best][2]
    loop_f1 = multilabel_metrics(predict(model.weight.detach().T, model.bias.detach(), x_test),
                                 y_test.numpy(), GENRES)["f1_mean"]

    same = (chosen == best and grid.best_epoch[chosen] == singles[best][1])
    print(f"20 separate trainings: {loop_s:8.2f} s   chosen {config.settings[best]} epoch "
          f"{singles[best][1]}, test macro F1 {loop_f1:.4f}")
    print(f"grid at once:          {grid_s:8.2f} s   chosen {config.settings[chosen]} epoch "
          f"{grid.best_epoch[chosen]}, test macro F1 {grid_f1:.4f}")
    print(f"speed-up {loop_s / grid_s:.1f}x (goal >= 5x); same chosen setting and epoch: {same}; "
          f"|test F1 difference| {abs(grid_f1 - loop_f1):.2e} (goal <= 0.01)")


if __name__ == "__main__":
    main()
