"""Benchmark: the demo extraction through Ray (2 workers) against the local run, and the planning
numbers for the paper's setting.

Both runs extract the `demo` set (real pretrained language and vision models) on the
embedded dataset at the same levels, into separate folders, and the script checks their features
are equal. The local run is timed model by model (the same loop as `extract.run`), which
gives the measured cost per token and per image used by the planning estimate printed last.
Ray's start-up is timed apart from the run. On a 2-core machine the two workers share the cores
the local run uses alone, so no speed-up is expected: the point is equal outputs.

  python benchmarks/bench_ray.py --num_samples 64 --levels 0,100
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import ray
import timm
import torch

from platonic.core.alignment import load_kernels
from platonic.data.datasets import load_data
from platonic.data.levels import parse_levels
from platonic.io.features import load_features
from platonic.models.registry import LANGUAGE, MODEL_SETS, VISION, get_models
from platonic.run.cli_args import RaySettings
from platonic.run.ray_runner import gpus_for
from platonic.run.ray_stages import estimated_params, extract_on_ray
from platonic.stages import extract
from platonic.stages.extract import RunStats, Settings, texts_by_level
from platonic.stages.measure import score_pair

A100_BF16_FLOPS = 312e12
PAPER_SAMPLES = 1024  # minhuh/prh wit_1024
PAPER_LEVELS = 11
VIT_DEPTH = {"tiny": 12, "small": 12, "base": 12, "large": 24, "huge": 32, "giant": 40}
# Hidden layers of the paper's language models (their configs); the feature files hold one more
# (the embeddings), and the alignment search one more again (all layers concatenated).
LM_LAYERS = {"560m": 24, "1b1": 24, "1b7": 24, "3b": 26, "7b1": 30, "7b": 32, "13b": 40,
             "30b": 60, "65b": 80}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num_samples", type=int, default=64)
    p.add_argument("--levels", default="0,100")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2, help="CPUs of the local Ray instance")
    p.add_argument("--utilisation", type=float, default=0.4,
                   help="fraction of the A100's bf16 peak an inference forward pass reaches")
    p.add_argument("--tokens_per_caption", type=float, default=48.0,
                   help="mean tokens of a paper caption (WIT captions and their rewrites)")
    p.add_argument("--gpus", type=int, default=8)
    return p.parse_args()


def settings_for(root: Path, data, batch_size: int) -> Settings:
    return Settings(str(root / "u={}"), "embedded", data.subset, batch_size=batch_size,
                    device="cpu")


def local_run_by_model(specs, captions, images, settings) -> tuple[float, dict[str, tuple[float, RunStats]]]:
    per_model = {}
    started = time.perf_counter()
    for spec in specs:
        lang, vis = ([spec], []) if spec.modality == LANGUAGE else ([], [spec])
        t0 = time.perf_counter()
        stats = extract.run(lang, vis, captions, images, settings)
        per_model[spec.id] = (time.perf_counter() - t0, stats)
    return time.perf_counter() - started, per_model


def max_difference(a: Path, b: Path) -> float:
    worst = 0.0
    for path in sorted(a.rglob("*.safetensors")):
        mine, theirs = load_features(path).feats, load_features(b / path.relative_to(a)).feats
        worst = max(worst, (mine.float() - theirs.float()).abs().max().item())
    return worst


def measured_rates(per_model, num_params) -> tuple[float, float]:
    """(FLOP/s of the language models, FLOP/s of the ViT) reached here: 2 x params x tokens."""
    lm_flops = lm_seconds = vm_flops = vm_seconds = 0.0
    for model_id, (seconds, stats) in per_model.items():
        if stats.real_tokens:
            lm_flops += 2 * num_params[model_id] * stats.real_tokens
            lm_seconds += seconds
        elif stats.images_encoded and model_id.startswith("random:vit"):
            vm_flops += 2 * num_params[model_id] * stats.images_encoded * 197
            vm_seconds += seconds
    return lm_flops / lm_seconds, vm_flops / vm_seconds


def image_tokens(model_id: str) -> int:
    _, height, width = timm.get_pretrained_cfg(model_id.split("@")[0]).input_size
    patch = int(model_id.split("patch")[1].split("_")[0])
    return (height // patch) * (width // patch) + 1


def time_alignment(per_model) -> float:
    """Seconds per candidate layer pair of mutual_knn (k = 10), every demo x model against every
    demo y model at the first level, kernels built once as the measure stage does."""
    def first_file(stats):
        return (stats.written + stats.reused)[0]

    xs = [load_kernels(first_file(st)) for _, st in per_model.values() if st.real_tokens]
    ys = [load_kernels(first_file(st)) for _, st in per_model.values() if st.images_encoded]
    settings = argparse.Namespace(metric="mutual_knn", topk=min(10, xs[0].n - 1), null=0)
    started = time.perf_counter()
    for kx in xs:
        for ky in ys:
            score_pair(kx, ky, settings, "x", "y")
    candidate_pairs = sum(len(kx) * len(ky) for kx in xs for ky in ys)
    return (time.perf_counter() - started) / candidate_pairs


def plan(args: argparse.Namespace, lm_rate: float, vm_rate: float, paper_pair_seconds: float) -> None:
    """GPU-hours of the paper's 29 models x 11 levels on one A100, and wall time on N GPUs."""
    gpu_rate = A100_BF16_FLOPS * args.utilisation
    language = {s.id: s for s in MODEL_SETS["val"] if s.modality == LANGUAGE}
    vision = [s for s in MODEL_SETS["val"] if s.modality == VISION]
    tokens = PAPER_SAMPLES * PAPER_LEVELS * args.tokens_per_caption
    lm_hours = {m: 2 * estimated_params(s) * tokens / gpu_rate / 3600 for m, s in language.items()}
    vm_hours = {s.id: 2 * estimated_params(s) * PAPER_SAMPLES * image_tokens(s.id) / gpu_rate / 3600
                for s in vision}
    print(f"\nplanning (A100 bf16 {A100_BF16_FLOPS / 1e12:.0f} TFLOP/s at {args.utilisation:.0%}, "
          f"FLOPs = 2 x params x tokens, {PAPER_SAMPLES} samples, {PAPER_LEVELS} levels, "
          f"{args.tokens_per_caption:.0f} tokens a caption; vision encoded once for all levels)")
    print(f"  measured here on CPU: language {lm_rate / 1e9:.1f} GFLOP/s, ViT {vm_rate / 1e9:.1f} "
          f"GFLOP/s; an A100 at {args.utilisation:.0%} is {gpu_rate / lm_rate:,.0f}x / "
          f"{gpu_rate / vm_rate:,.0f}x that")
    total_lm, total_vm = sum(lm_hours.values()), sum(vm_hours.values())
    print(f"  extraction, {len(language)} language models: {total_lm:.2f} GPU-hours "
          f"(largest {max(lm_hours.values()) * 60:.1f} min); the same on this CPU: "
          f"{total_lm * gpu_rate / lm_rate:,.0f} hours")
    print(f"  extraction, {len(vision)} vision models: {total_vm:.3f} GPU-hours")
    # Wall time on N GPUs with one task per model (largest first), a task of k GPUs taking the
    # GPUs' time over k: longest-processing-time list scheduling.
    jobs = sorted([(h, 1) for h in vm_hours.values()] +
                  [(h, gpus_for(estimated_params(language[m]), 2.0, 80)) for m, h in lm_hours.items()], reverse=True)
    print(f"  extraction wall time on {args.gpus} GPUs (one task per model, largest first, a "
          f"k-GPU task holding its k GPUs): {schedule(jobs, args.gpus) * 60:.1f} min; "
          f"load time of the weights not included")
    # Alignment: one task per (level, language model) against every ViT; its time scales with
    # the candidate layer pairs and (conservatively) with N^2, from the rate measured here.
    rows = {(level, m): sum(candidates(s) * (VIT_DEPTH[v.size] + 2) for v in vision) * paper_pair_seconds / 3600
            for level in range(PAPER_LEVELS) for m, s in language.items()}
    total = sum(rows.values())
    print(f"  alignment (mutual_knn, N = {PAPER_SAMPLES}), scaled from this CPU: {total:,.1f} "
          f"CPU-core-hours in {len(rows)} tasks; wall time on {args.gpus} workers "
          f"{schedule(sorted([(h, 1) for h in rows.values()], reverse=True), args.gpus):,.1f} h "
          "(on GPUs: far less, the search is gathers and top-k over N x N matrices)")


def schedule(jobs: list[tuple[float, int]], gpus: int) -> float:
    """Makespan of list scheduling: each job starts when its k GPUs are the k earliest free and
    holds them for its whole time (device_map="auto" runs the layers one GPU after the other)."""
    free = [0.0] * gpus
    for hours, k in jobs:
        free.sort()
        start = free[k - 1]
        for g in range(k):
            free[g] = start + hours
    return max(free)


def candidates(spec) -> int:
    """Layer candidates of a language model: hidden layers + embeddings + the concatenation."""
    return LM_LAYERS[spec.size] + 2


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    data = load_data("embedded", None, args.num_samples)
    captions = texts_by_level(data, parse_levels(args.levels))
    language_specs, vision_specs = get_models("demo", LANGUAGE), get_models("demo", VISION)
    specs = language_specs + vision_specs
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # Untimed warm-up: the de-quantised GGUF cache and the files are made before either run.
        warm = {lv: texts[:2] for lv, texts in list(captions.items())[:1]}
        extract.run(language_specs, vision_specs, warm, data.images[:2],
                       settings_for(root / "warm", data, args.batch_size))
        local_seconds, per_model = local_run_by_model(specs, captions, data.images,
                                                      settings_for(root / "local", data, args.batch_size))
        started = time.perf_counter()
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
        init_seconds = time.perf_counter() - started
        started = time.perf_counter()
        extract_on_ray(language_specs, vision_specs, captions, data.images,
                       settings_for(root / "ray", data, args.batch_size), RaySettings(device="cpu"))
        ray_seconds = time.perf_counter() - started
        ray.shutdown()
        difference = max_difference(root / "local", root / "ray")
        pair_seconds = time_alignment(per_model)
        num_params = {}
        for model_id, (_, stats) in per_model.items():
            path = (stats.written or stats.reused)[0]
            num_params[model_id] = load_features(path).meta["num_params"]
    print(f"\ndemo extraction, {args.num_samples} samples, levels {args.levels}, {len(specs)} models")
    for model_id, (seconds, stats) in per_model.items():
        work = (f"{stats.real_tokens} tokens, {seconds / max(stats.real_tokens, 1) * 1e3:.2f} ms/token"
                if stats.real_tokens else
                f"{stats.images_encoded} images, {seconds / max(stats.images_encoded, 1) * 1e3:.1f} ms/image")
        print(f"  local {model_id}: {seconds:.1f} s ({num_params[model_id] / 1e6:.0f}M params, {work})")
    print(f"local run:            {local_seconds:.1f} s")
    print(f"Ray, {args.workers} workers:       {ray_seconds:.1f} s (+ {init_seconds:.1f} s to start Ray)")
    print(f"ratio local / Ray:    {local_seconds / ray_seconds:.2f}x "
          f"(with start-up {local_seconds / (ray_seconds + init_seconds):.2f}x)")
    print(f"largest feature difference Ray vs local: {difference}")
    lm_rate, vm_rate = measured_rates(per_model, num_params)
    print(f"alignment on this CPU: {pair_seconds * 1e6:.1f} us per candidate layer pair at "
          f"N = {args.num_samples} (mutual_knn, k = 10)")
    plan(args, lm_rate, vm_rate, pair_seconds * (PAPER_SAMPLES / args.num_samples) ** 2)


if __name__ == "__main__":
    main()
