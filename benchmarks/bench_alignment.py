"""Fast all-layer-pairs search vs the plain per-pair loop, and vs the Gram-matrix floor.

Default sizes are the paper's worst case on one side each: N = 1024 samples, x = 33 layers x 4096
dims (a 7B language model), y = 25 blocks x 1024 dims (a ViT-L). Prints, per metric, both
times and their ratio, the largest score difference over the whole layer grid, whether best
score and layers are identical, the ratio of the fast search to the bare cost of the per-layer
Gram matrices, and the fast search's peak memory next to the size of the input features.

    python benchmarks/bench_alignment.py            # full size (a few minutes on 2 cores)
    python benchmarks/bench_alignment.py --n 256 --dim_x 512 --dim_y 256   # quick look
"""

from __future__ import annotations

import argparse
import ctypes
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from platonic.core.alignment import compute_score, exhaustive_search, prepare_features

PAGE = 4096
M_MMAP_THRESHOLD = -3


def return_freed_memory_to_the_os() -> None:
    """Serve every allocation over 1 MiB by mmap, so that freed tensors leave the resident set
    and sampling it measures the search alone (glibc otherwise keeps freed heap pages)."""
    ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 1 << 20)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def peak_rss_during(fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run fn while sampling the resident set every 2 ms; returns (result, peak growth in bytes)."""
    base, peak, done = rss_bytes(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes() - base)
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        result = fn()
    finally:
        done.set()
        thread.join()
    return result, max(peak[0], rss_bytes() - base)


def best_time(fn: Callable[[], Any], repeats: int) -> tuple[Any, float]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return result, min(times)


def make_features(n: int, layers: int, dim: int, planted: int, gen: torch.Generator,
                  shared: torch.Tensor) -> torch.Tensor:
    """Random layered features, every layer weakly and one layer strongly tied to `shared`."""
    feats = torch.randn(n, layers, dim, generator=gen)
    proj = torch.randn(shared.shape[1], dim, generator=gen) / shared.shape[1] ** 0.5
    feats += 0.3 * (shared @ proj).unsqueeze(1)
    feats[:, planted] += 2.0 * shared @ proj
    return feats


def gram_floor(x: torch.Tensor, y: torch.Tensor) -> None:
    """The unavoidable work: one Gram matrix per layer of each model."""
    for feats in (x, y):
        for layer in range(feats.shape[1]):
            v = feats[:, layer, :]
            v @ v.T


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--layers_x", type=int, default=33)
    p.add_argument("--dim_x", type=int, default=4096)
    p.add_argument("--layers_y", type=int, default=25)
    p.add_argument("--dim_y", type=int, default=1024)
    p.add_argument("--metrics", nargs="+", default=["mutual_knn", "unbiased_cka"])
    p.add_argument("--topk", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3, help="fast search and floor: best of this many")
    args = p.parse_args()
    return_freed_memory_to_the_os()

    gen = torch.Generator().manual_seed(0)
    shared = torch.randn(args.n, 16, generator=gen)
    x = make_features(args.n, args.layers_x, args.dim_x, args.layers_x * 2 // 3, gen, shared)
    y = make_features(args.n, args.layers_y, args.dim_y, args.layers_y // 2, gen, shared)
    start = time.perf_counter()
    x, y = prepare_features(x), prepare_features(y)
    prep = time.perf_counter() - start
    input_bytes = x.nbytes + y.nbytes
    print(f"N={args.n}  x: {args.layers_x} layers x {args.dim_x}  y: {args.layers_y} layers x "
          f"{args.dim_y}  torch threads={torch.get_num_threads()}  input features "
          f"{input_bytes / 2**20:.0f} MiB  (prepare_features {prep:.2f} s)")
    _, floor = best_time(lambda: gram_floor(x, y), args.repeats)
    print(f"Gram floor (per-layer Gram matrices of x and y): {floor:.2f} s")
    for metric in args.metrics:
        compute_score(x[:64, :2], y[:64, :2], metric, topk=args.topk)  # warm-up
        (fast, fast_time) = best_time(
            lambda m=metric: compute_score(x, y, m, topk=args.topk, return_grid=True), args.repeats)
        _, peak = peak_rss_during(lambda m=metric: compute_score(x, y, m, topk=args.topk))
        start = time.perf_counter()
        oracle = exhaustive_search(x, y, metric, topk=args.topk)
        oracle_time = time.perf_counter() - start
        same_layers = fast[1] == oracle[1]
        print(f"\n[{metric}]")
        print(f"  per-pair loop : {oracle_time:8.2f} s   best {oracle[0]:.6f} at {oracle[1]}")
        print(f"  fast search   : {fast_time:8.2f} s   best {fast[0]:.6f} at {fast[1]}")
        print(f"  speed-up      : {oracle_time / fast_time:8.1f}x")
        print(f"  same best layers: {same_layers}; identical best score: {fast[0] == oracle[0]} "
              f"(difference {abs(fast[0] - oracle[0]):.1e}); largest grid difference "
              f"{np.abs(fast[2] - oracle[2]).max():.2e}")
        print(f"  fast / Gram floor: {fast_time / floor:.2f}x")
        print(f"  peak memory of the search: {peak / 2**20:.0f} MiB = "
              f"{peak / input_bytes:.2f}x the input features "
              f"(inputs + search = {(input_bytes + peak) / input_bytes:.2f}x)")


if __name__ == "__main__":
    main()
