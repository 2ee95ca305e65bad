"""Cost of the permutation null per permutation, as a ratio of one score's cost (goal <= 0.2x).

One score = `compute_score` from features: Gram matrices of every layer, kNN lists, the grid
over layer pairs, the best pair. One null permutation = the same best-over-layer-pairs search
with one side's samples permuted, reusing the kNN lists (`platonic.core.calibration`). Also shown:
the generic path (the metric's grid on a permuted view of the kernels) and the naive way
(the score recomputed from permuted features), both measured in the same run.

Default sizes are the demo study's: N = 256 captions, x = SmolLM2 (31 hidden states x 576),
y = EfficientNet-Lite2 (6 layers x 1280), mutual kNN with k = 10.

    python benchmarks/bench_null.py
    python benchmarks/bench_null.py --n 1024 --layers_x 33 --dim_x 4096 --layers_y 25 --dim_y 1024
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from platonic.core.alignment import LayerKernels, best_of_grid, compute_score, score_grid
from platonic.core.calibration import PermutedKernels, permutation_null, permutations


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--layers_x", type=int, default=31)
    p.add_argument("--dim_x", type=int, default=576)
    p.add_argument("--layers_y", type=int, default=6)
    p.add_argument("--dim_y", type=int, default=1280)
    p.add_argument("--topk", type=int, default=10)
    p.add_argument("--permutations", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.n, args.layers_x, args.dim_x, generator=g)
    y = torch.randn(args.n, args.layers_y, args.dim_y, generator=g)
    perms = permutations(args.n, args.permutations, seed=0)

    score_s = best_time(lambda: compute_score(x, y, "mutual_knn", args.topk), args.repeats)
    kx, ky = LayerKernels(x), LayerKernels(y)
    kx.knn(args.topk), ky.knn(args.topk)  # built once by the score; the null reuses them
    fast_s = best_time(lambda: permutation_null(kx, ky, "mutual_knn", args.topk, perms),
                       args.repeats) / len(perms)
    few = perms[:10]
    generic_s = best_time(lambda: [best_of_grid(score_grid(kx, PermutedKernels(ky, q), "mutual_knn",
                                                           args.topk)) for q in few], 1) / len(few)
    naive_s = best_time(lambda: [compute_score(x, y[q], "mutual_knn", args.topk) for q in few[:3]],
                        1) / 3

    fast, _ = permutation_null(kx, ky, "mutual_knn", args.topk, few)
    naive = np.array([compute_score(x, y[q], "mutual_knn", args.topk)[0] for q in few])
    print(f"N={args.n}  x: {args.layers_x} x {args.dim_x}  y: {args.layers_y} x {args.dim_y}  "
          f"k={args.topk}  threads={torch.get_num_threads()}")
    print(f"one score (compute_score from features): {score_s * 1e3:9.2f} ms")
    print(f"null, permuted kNN lists (per perm.):     {fast_s * 1e3:9.2f} ms  "
          f"ratio {fast_s / score_s:.4f}x  (goal <= 0.2x)")
    print(f"null, permuted kernel view (per perm.):   {generic_s * 1e3:9.2f} ms  "
          f"ratio {generic_s / score_s:.4f}x")
    print(f"null, recomputed from features (per perm.): {naive_s * 1e3:7.2f} ms  "
          f"ratio {naive_s / score_s:.4f}x")
    print(f"null values equal to the recomputed ones: {np.array_equal(fast, naive)}")


if __name__ == "__main__":
    main()
