"""Benchmark: the default study (`bash run_platonic_unique.sh`, no options) stage by stage and
model by model, wall and CPU time, from a warm cache or from an empty $PLATONIC_CACHE.

The stages run in this process as the driver runs them: the embedded data (256 pairs, levels
0..100), extraction (each model timed alone: a language model over all 11 levels, a vision model
once; a language model's load time also shown apart), the measure stage (mutual kNN, k = 10,
--null 100, every level) and the plots. The driver starts one Python per stage; their start-up
(interpreter and imports) is timed in child processes and added. `--cache fresh` points
$PLATONIC_CACHE at an empty temporary folder, so the GGUF models are assembled and de-quantised
on the way, as in a first run. Goals on 2 idle cores: 5 min warm, 6 min fresh, with the same
findings (overall rho <= -0.9, all 12 pairs significant at level 0, the EfficientNet family
falling with uniqueness), printed at the end.

`--compare N` also times the CPU paths of extractor version 1 (the language-model head on every
position of padded batches, level by level; NCHW vision passes of 32 images with the batch
norms unfolded) against today's (prefix packs of all levels' captions; channels-last passes of 8
images, batch norms folded) on the first N distinct captions (in sorted order, as the packs take
them) and N images, in this process, one model at a time: the ratio of CPU times and the
largest feature difference. CPU time (user + system, all threads) is steadier than wall time on
a shared machine.

    python benchmarks/bench_default.py                          # warm cache (~/.cache/platonic)
    python benchmarks/bench_default.py --cache fresh
    python benchmarks/bench_default.py --compare 96 --skip_study
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from platonic.data.datasets import load_data
from platonic.data.levels import ALL_LEVELS
from platonic.io.fingerprints import images_fingerprint
from platonic.io.storage import CACHE_ENV
from platonic.models import language, vision
from platonic.models.registry import LANGUAGE, VISION, get_models
from platonic.stages import plots
from platonic.stages.extract import (
    RunStats,
    Settings,
    extract_language,
    extract_vision,
    noisy_images,
    texts_by_level,
)
from platonic.stages.study import StudySpec

GOALS = {"warm": 300.0, "fresh": 360.0}  # seconds on 2 idle cores
STAGE_IMPORTS = {  # what each of the driver's Python processes imports before it works
    "resolve levels": "import platonic.data.datasets, platonic.data.levels, platonic.run.cli_args, platonic.run.exit_codes",
    "extract": "import platonic.run.extract_features",
    "measure": "import platonic.run.measure_alignment",
    "plot": "import platonic.run.plot_alignment",
}


@dataclass
class Timing:
    label: str
    wall: float
    cpu: float


class Clock:
    """Wall and CPU time (this process's user + system, all threads) of labelled blocks."""

    def __init__(self) -> None:
        self.rows: list[Timing] = []

    @contextmanager
    def __call__(self, label: str):
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        self.rows.append(Timing(label, time.perf_counter() - wall, time.process_time() - cpu))


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_start_ups(clock: Clock) -> None:
    """Each stage process's interpreter start and imports, as the driver pays them."""
    for stage, statement in STAGE_IMPORTS.items():
        wall, cpu = time.perf_counter(), child_cpu()
        subprocess.run([sys.executable, "-c", statement], check=True)
        clock.rows.append(Timing(f"start-up: {stage}", time.perf_counter() - wall, child_cpu() - cpu))


def run_study(root: str, clock: Clock) -> StudySpec:
    """The default study under `root`, every stage and model timed."""
    from platonic.run import measure_alignment

    features, alignment = f"{root}/u={{}}_features", f"{root}/u={{}}_alignment"
    with clock("data: render 256 pairs, captions at 11 levels"):
        data = load_data("embedded", "seed0")
        captions = texts_by_level(data, list(ALL_LEVELS))
    settings = Settings(output_dir=features, dataset="embedded", subset="seed0")
    for spec in get_models("demo", LANGUAGE):
        loads = Clock()

        def timed_load(*args, loads=loads, **kwargs):
            with loads(""):
                return language.load_language_model(*args, **kwargs)

        with clock(f"extract {spec.id.rsplit('/', 1)[-1]} (11 levels)"):
            extract_language(spec, captions, settings, RunStats(), loader=timed_load)
        for row in loads.rows:
            clock.rows.append(Timing("  of which loading", row.wall, row.cpu))
    shown = noisy_images(data.images, settings)
    sha = images_fingerprint(shown)
    for spec in get_models("demo", VISION):
        with clock(f"extract {spec.id.rsplit('/', 1)[-1]} (256 images)"):
            extract_vision(spec, shown, sha, list(ALL_LEVELS), settings, RunStats())
    with clock("measure: mutual kNN k=10, --null 100, 11 levels"):
        measure_alignment.main(["--modelset", "demo", "--dataset", "embedded", "--subset", "seed0",
                      "--levels", "all", "--metric", "mutual_knn", "--topk", "10", "--null", "100",
                      "--input_dir", features, "--output_dir", alignment, "--device", "cpu"])
    spec = StudySpec("embedded", "seed0", "demo")
    with clock("plot: figures, table, summary"):
        outputs = plots.run(plots.Settings(spec, alignment, features, f"{root}/plots", same_scale=True))
    print_findings(outputs)
    return spec


def print_findings(outputs) -> None:
    summary = outputs.summary
    chance = summary.chance.set_index("level")
    level0 = chance.loc[0]
    families = summary.families.set_index("family")["mean_rho"]
    print(f"\nfindings: overall rho {summary.overall_rho:.3f} (goal <= -0.9): "
          f"{'met' if summary.overall_rho <= -0.9 else 'MISSED'}")
    print(f"  significant pairs at level 0: {int(level0.significant)} / {int(level0.n_pairs)} (goal: all)")
    for family, rho in families.items():
        print(f"  family {family}: rho {rho:.3f}")
    print(f"  summary: {outputs.summary_path}")


def print_table(clock: Clock, cache: str) -> None:
    total_wall = sum(r.wall for r in clock.rows if not r.label.startswith("  "))
    total_cpu = sum(r.cpu for r in clock.rows if not r.label.startswith("  "))
    print(f"\ndefault study, {cache} cache, {torch.get_num_threads()} threads")
    print(f"{'stage / model':58}{'wall s':>9}{'CPU s':>9}")
    for row in clock.rows:
        print(f"{row.label:58}{row.wall:9.1f}{row.cpu:9.1f}")
    print(f"{'total':58}{total_wall:9.1f}{total_cpu:9.1f}")
    goal = GOALS[cache]
    print(f"goal on 2 idle cores: {goal / 60:.0f} min ({goal:.0f} s) {cache}; this run's wall time "
          f"{total_wall:.0f} s ({'within' if total_wall <= goal else 'over'}); its CPU time over "
          f"2 cores {total_cpu / 2:.0f} s")


# --- version 1's CPU paths against today's, on the same inputs --------------------------------

def compare_paths(n: int) -> None:
    data = load_data("embedded", "seed0")
    captions = texts_by_level(data, list(ALL_LEVELS))
    distinct = list(dict.fromkeys(t for texts in captions.values() for t in texts))
    print(f"\nversion 1's CPU paths against today's, first {n} distinct captions (sorted) / {n} images")
    print(f"{'model':34}{'v1 CPU s':>10}{'now CPU s':>11}{'ratio':>8}{'positions':>17}  largest difference")
    for spec in get_models("demo", LANGUAGE):
        lm = language.load_language_model(spec)
        ids = language.tokenize(lm, distinct)
        texts = [distinct[i] for i in sorted(range(len(distinct)), key=lambda i: ids[i])[:n]]
        language.packs_prefixes(lm)  # the probe, once per load, outside the timing
        old, old_cpu = _cpu_timed(language.encode_texts, lm, texts)
        new, new_cpu = _cpu_timed(language.encode_texts, lm, texts, share_prefixes=True)
        worst = _relative_difference(old.feats, new.feats)
        if "bpb" in old.extras:
            worst = max(worst, _relative_difference(old.extras["bpb"], new.extras["bpb"]))
        print(f"{spec.id.rsplit('/', 1)[-1]:34}{old_cpu:10.1f}{new_cpu:11.1f}{new_cpu / old_cpu:8.2f}"
              f"{old.padded_tokens:>8} -> {new.padded_tokens:<6}  {worst:.1e}")
    images = data.images[:n]
    for spec in get_models("demo", VISION):
        old, old_cpu = _cpu_timed(vision.encode_images, vision.load_vision_model(spec), images)
        new, new_cpu = _cpu_timed(vision.encode_images, vision.load_vision_model(spec), images,
                                  cpu_layout=True)
        print(f"{spec.id.rsplit('/', 1)[-1]:34}{old_cpu:10.1f}{new_cpu:11.1f}{new_cpu / old_cpu:8.2f}"
              f"{'':17}  {_relative_difference(old.feats, new.feats):.1e}")
    print("(largest difference: of features or bits per byte, relative to the largest value)")


def _cpu_timed(function, *args, **kwargs):
    cpu = time.process_time()
    result = function(*args, **kwargs)
    return result, time.process_time() - cpu


def _relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / a.double().abs().max())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", choices=sorted(GOALS), default="warm",
                        help="warm: $PLATONIC_CACHE as it is; fresh: an empty temporary one")
    parser.add_argument("--compare", type=int, default=0, metavar="N",
                        help="also time version 1's CPU paths against today's on N captions/images")
    parser.add_argument("--skip_study", action="store_true", help="only the --compare table")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.cache == "fresh":
            os.environ[CACHE_ENV] = f"{tmp}/cache"
        if not args.skip_study:
            clock = Clock()
            time_start_ups(clock)
            run_study(f"{tmp}/results", clock)
            print_table(clock, args.cache)
        if args.compare:
            compare_paths(args.compare)


if __name__ == "__main__":
    main()
