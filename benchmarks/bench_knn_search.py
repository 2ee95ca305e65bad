"""Benchmark: exact top-k neighbour search, faiss (IndexFlatIP) against the engine's blocked
torch.topk (`platonic.core.neighbours.neighbour_lists`), on the CPU.

Issue 20 asked to pick between them by measurement. Each case makes one layer of N unit-norm
rows of width D (Gaussian plus a low-rank part, so neighbours are not all ties), then times both
searches for the k = 10 nearest other rows of every row: CPU time (user + system, all threads)
and wall time, in this process, `--repeats` times (the best is kept). Also printed: the share of
rows whose two lists hold the same neighbours, and the same neighbours in the same order (exact
searches differ only where float rounding reorders near-ties).

faiss is not a dependency of the project; this benchmark needs `pip install faiss-cpu`.

    python benchmarks/bench_knn_search.py
    python benchmarks/bench_knn_search.py --sizes 4096 --dim 768 --repeats 3
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from platonic.core.layers import TensorLayers
from platonic.core.neighbours import neighbour_lists

TOPK = 10


def unit_rows(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=gen)
    x += torch.randn(n, 16, generator=gen) @ torch.randn(16, dim, generator=gen) / 8
    return torch.nn.functional.normalize(x, dim=1).contiguous()


def timed(fn, repeats: int):
    best = None
    for _ in range(repeats):
        cpu, wall = time.process_time(), time.perf_counter()
        out = fn()
        spent = (time.process_time() - cpu, time.perf_counter() - wall)
        best = spent if best is None or spent[0] < best[0] else best
    return out, best


def faiss_lists(faiss, x: torch.Tensor) -> torch.Tensor:
    """faiss's k + 1 nearest of every row (itself among them), itself removed."""
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x.numpy())
    _, found = index.search(x.numpy(), TOPK + 1)
    found = torch.from_numpy(found)
    own = found == torch.arange(len(x))[:, None]
    keep = ~own
    keep[own.sum(dim=1) == 0, TOPK] = False  # a row that lost itself to a tie: drop the last
    return found[keep].view(len(x), TOPK)


def engine_lists(x: torch.Tensor) -> torch.Tensor:
    lists, _ = neighbour_lists(TensorLayers(x[:, None]), False, TOPK)
    return lists.indices[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", type=int, default=[4096, 16384])
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    try:
        import faiss
    except ImportError:
        print("faiss is not installed: pip install faiss-cpu", file=sys.stderr)
        return 1
    print(f"faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads), torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads); k = {TOPK}, D = {args.dim}; "
          f"CPU / wall seconds, best of {args.repeats}")
    print(f"{'N':>7} {'faiss':>15} {'torch.topk':>15} {'CPU ratio':>10} {'same sets':>10} {'same order':>11}")
    for n in args.sizes:
        x = unit_rows(n, args.dim)
        theirs, (f_cpu, f_wall) = timed(lambda x=x: faiss_lists(faiss, x), args.repeats)
        ours, (t_cpu, t_wall) = timed(lambda x=x: engine_lists(x), args.repeats)
        same_sets = (theirs.sort(dim=1).values == ours.sort(dim=1).values).all(dim=1).float().mean()
        same_order = (theirs == ours).all(dim=1).float().mean()
        print(f"{n:>7} {f_cpu:>7.1f} / {f_wall:<5.1f} {t_cpu:>7.1f} / {t_wall:<5.1f} "
              f"{f_cpu / t_cpu:>10.2f} {same_sets:>10.4f} {same_order:>11.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
