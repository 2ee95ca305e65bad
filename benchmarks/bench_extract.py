"""Benchmark: one-pass extraction against the original's way, on the `demo` set and 11 levels.

The original reloads every language model at every level, re-encodes the unchanged images at
every level and pads every caption to the longest caption of the dataset. Both ways run here in
the same process on the embedded dataset (fp32 features, so the difference is numerical only),
and the script prints model loads, forward passes, padded vs real tokens, wall time, the ratios
and the largest feature difference. Goals: one load per model, one image pass, padding <= 1.2x,
wall time >= 5x faster.

  python benchmarks/bench_extract.py --num_samples 48
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from platonic.data.datasets import load_data
from platonic.data.levels import parse_levels
from platonic.io.features import feature_path, load_features
from platonic.io.storage import level_dir
from platonic.models import language, vision
from platonic.models.registry import LANGUAGE, VISION, get_models
from platonic.stages import extract
from platonic.stages.extract import Settings, texts_by_level


@dataclass
class OriginalWay:
    loads: Counter = field(default_factory=Counter)
    forward_passes: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    images_encoded: int = 0
    feats: dict = field(default_factory=dict)


def _texts_padded_to_longest(lm: language.LanguageModel, texts: list[str], pool: str, batch_size: int,
                             run: OriginalWay) -> torch.Tensor:
    """Dataset order, fixed batches, every caption padded to the longest of the dataset."""
    token_ids = language.tokenize(lm, texts)
    width = max(len(ids) for ids in token_ids)
    pooled = []
    for start in range(0, len(texts), batch_size):
        chunk = token_ids[start:start + batch_size]
        pooled.append(language._forward(lm, chunk, pool, width)[0])
        run.forward_passes += 1
        run.real_tokens += sum(len(ids) for ids in chunk)
        run.padded_tokens += width * len(chunk)
    return torch.cat(pooled)


def original_way(captions: dict[int, list[str]], images, batch_size: int) -> OriginalWay:
    run = OriginalWay()
    for level, texts in tqdm(captions.items(), desc="original way", unit="level"):
        for spec in get_models("demo", LANGUAGE):
            lm = language.load_language_model(spec, padding_side="left")
            run.loads[spec.id] += 1
            run.feats[(spec.id, level)] = _texts_padded_to_longest(lm, texts, "avg", batch_size, run)
        for spec in get_models("demo", VISION):
            vm = vision.load_vision_model(spec)
            run.loads[spec.id] += 1
            run.feats[(spec.id, level)] = vision.encode_images(vm, images, batch_size).feats
            run.images_encoded += len(images)
    return run


def one_pass(captions: dict[int, list[str]], images, batch_size: int, output_dir: str):
    settings = Settings(output_dir=output_dir, dataset="embedded", subset="seed0", batch_size=batch_size,
                        dtype="float32")
    stats = extract.run(get_models("demo", LANGUAGE), get_models("demo", VISION), captions, images, settings)
    return stats, settings


def _largest_difference(run: OriginalWay, settings: Settings) -> float:
    worst = 0.0
    for (model_id, level), old in run.feats.items():
        pool = "cls" if model_id in {s.id for s in get_models("demo", VISION)} else "avg"
        new = load_features(feature_path(level_dir(settings.output_dir, level), "embedded", "seed0",
                                         model_id, pool)).feats
        worst = max(worst, float((new.float() - old.float()).abs().max()))
    return worst


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_samples", type=int, default=48)
    parser.add_argument("--levels", default="all")
    parser.add_argument("--batch_size", type=int, default=16, help="the same for both ways")
    args = parser.parse_args(argv)
    data = load_data("embedded", "seed0", args.num_samples)
    captions = texts_by_level(data, parse_levels(args.levels))
    for spec in get_models("demo", LANGUAGE):  # build the GGUF cache outside the timings
        language.load_language_model(spec)
    with tempfile.TemporaryDirectory() as tmp:
        (stats, settings), new_time = _timed(one_pass, captions, data.images, args.batch_size,
                                             tmp + "/u={}_features")
        old, old_time = _timed(original_way, captions, data.images, args.batch_size)
        difference = _largest_difference(old, settings)
    _report(args, len(captions), stats, new_time, old, old_time, difference)


def _timed(function, *args):
    """Result, (wall seconds, CPU seconds of this process): CPU time is steadier on a shared machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args)
    return result, (time.perf_counter() - wall, time.process_time() - cpu)


def _report(args, num_levels, stats, new_time, old, old_time, difference) -> None:
    (new_seconds, new_cpu), (old_seconds, old_cpu) = new_time, old_time
    new_loads, old_loads = sum(stats.loads.values()), sum(old.loads.values())
    new_pad = stats.padded_tokens / max(1, stats.real_tokens)
    old_pad = old.padded_tokens / max(1, old.real_tokens)
    rows = [
        ("model loads", old_loads, new_loads),
        ("language forward passes", old.forward_passes, sum(
            stats.forward_passes[s.id] for s in get_models("demo", LANGUAGE))),
        ("images encoded", old.images_encoded, stats.images_encoded),
        ("real tokens", old.real_tokens, stats.real_tokens),
        ("padded tokens", old.padded_tokens, stats.padded_tokens),
        ("wall time (s)", round(old_seconds, 1), round(new_seconds, 1)),
        ("CPU time (s)", round(old_cpu, 1), round(new_cpu, 1)),
    ]
    print(f"\n{args.num_samples} samples x {num_levels} levels, demo set, batch size {args.batch_size}")
    print(f"{'':26}{'original way':>14}{'one pass':>12}")
    for name, old_value, new_value in rows:
        print(f"{name:26}{old_value:>14}{new_value:>12}")
    print(f"padding (padded / real tokens): original {old_pad:.2f}x, one pass {new_pad:.2f}x")
    print(f"speed-up: wall {old_seconds / new_seconds:.1f}x, CPU {old_cpu / new_cpu:.1f}x; "
          f"loads per model: {dict(stats.loads)}")
    print(f"largest feature difference (fp32): {difference:.3g}")
    goals = {
        "one load per model": all(n == 1 for n in stats.loads.values()),
        "one image pass": stats.images_encoded == args.num_samples * len(get_models("demo", VISION)),
        "padding <= 1.2x": new_pad <= 1.2,
        "wall time >= 5x faster": old_seconds >= 5 * new_seconds,
    }
    print("goals: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in goals.items()))


if __name__ == "__main__":
    main()
