"""The project's Ray launcher (hydra/launcher=ray): a cap on jobs in flight, failures reported with
their overrides and a non-zero exit; and the finetuning sweep itself, at a small size."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from platonic.errors import PlatonicError

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "mmimdb" / "clip_finetune_binary.py"
RAY_ON_2_CORES = ["+hydra.launcher.ray.init.num_cpus=2"]

TOY_APP = '''
import json, time
from pathlib import Path

import hydra


@hydra.main(config_path=".", config_name="toy", version_base="1.3")
def main(cfg):
    start = time.time()
    time.sleep(3)
    record = {"start": start, "failed": cfg.x == cfg.fail_on}
    try:
        if record["failed"]:
            raise RuntimeError(f"boom at x={cfg.x}")
    finally:
        record["end"] = time.time()
        Path(cfg.out, f"job_{cfg.x}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
'''


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The most intervals that hold one instant (an end before a start at the same time)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "RAY_DEDUP_LOGS": "0"}


def test_concurrency_limit_values():
    from hydra_plugins.platonic_ray_launcher.bounded_ray_launcher import concurrency_limit

    assert concurrency_limit(None, 5) == 5 and concurrency_limit(2, 5) == 2
    for bad in (0, -1, True, 1.5):
        with pytest.raises(PlatonicError, match="max_concurrent_tasks"):
            concurrency_limit(bad, 5)


def test_ray_sweep_caps_jobs_in_flight_and_reports_the_failed_job(tmp_path):
    """5 jobs, at most 2 in flight although Ray has room for 4: every job's interval (the
    failing one's too) is recorded, and 2 of them, never 3, run at once."""
    app = tmp_path / "app.py"
    app.write_text(TOY_APP)
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "toy.yaml").write_text(textwrap.dedent(f"""\
        x: 0
        fail_on: null
        out: {out}
        hydra:
          sweep:
            dir: {tmp_path}/multirun
        """))
    proc = subprocess.run(
        [sys.executable, str(app), "-m", "hydra/launcher=ray", "x=1,2,3,4,5", "fail_on=2",
         "+hydra.launcher.ray.max_concurrent_tasks=2", "+hydra.launcher.ray.init.num_cpus=4"],
        capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=600)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "error: job with overrides [x=2 fail_on=2] failed: boom at x=2" in proc.stderr
    assert "error: 1 of 5 jobs failed" in proc.stderr
    jobs = {p.stem: json.loads(p.read_text()) for p in out.glob("job_*.json")}
    assert sorted(jobs) == [f"job_{x}" for x in range(1, 6)]  # the other jobs still ran
    assert [name for name, job in sorted(jobs.items()) if job["failed"]] == ["job_2"]
    assert most_at_once([(job["start"], job["end"]) for job in jobs.values()]) == 2


def test_most_at_once():
    assert most_at_once([(0, 2), (1, 3), (2, 4)]) == 2  # the first ends as the third starts
    assert most_at_once([(0, 5), (1, 2), (1.5, 3)]) == 3
    assert most_at_once([(0, 1), (2, 3)]) == 1


@pytest.mark.parametrize("launcher", [[], ["hydra/launcher=ray"]], ids=["basic", "ray"])
def test_a_sweep_with_bad_jobs_names_them_and_starts_none(tmp_path, launcher):
    """The bad values come after a good one: no job runs, every bad one is named."""
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "-m", *launcher, "model.model.clip_weight=0.5,-1,inf",
         "+model=clip_tiny", "+data=mmimdb", "+class_idx=19", "trainer.max_epochs=1",
         f"trainer.default_root_dir={tmp_path}", "+trainer.limit_train_batches=1",
         "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1",
         "data.batch_size=16", "data.align_samples=32", *RAY_ON_2_CORES[:len(launcher)]],
        capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=900)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-3:] == [
        "error: job [model.model.clip_weight=-1]: model.model.clip_weight must be a finite "
        "number >= 0, got -1",
        "error: job [model.model.clip_weight=inf]: model.model.clip_weight must be a finite "
        "number >= 0, got inf",
        "error: 2 of 3 jobs have bad settings; no job was started"]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "CLIPSup-tiny").exists()


def test_finetuning_sweep_with_the_ray_launcher(tmp_path):
    """The README's offline sweep at a small size: tiny towers, one short epoch, two weights;
    a run made earlier with other settings in the same folder stays out of its summary."""
    sweep = tmp_path / "CLIPSup-tiny" / "class_19" / "seed_42"
    older = sweep / "clip-weight_0.5" / "metrics.json"  # as runs were written before settings
    older.parent.mkdir(parents=True)
    older.write_text(json.dumps({
        "clip_weight": 0.5, "class_idx": 19, "genre": "western", "seed": 42,
        "model": "CLIPSup-tiny", "max_epochs": 30, "best_epoch": 12, "num_align": 32,
        "dev": {"f1": 0.5, "f1_macro": 0.6}, "test": {"f1": 0.4, "f1_macro": 0.5},
        "alignment": {"score": 0.2, "topk": 10, "text_layer": "all", "image_layer": "all"},
        "checkpoint": str(older.parent / "best.ckpt"), "run_dir": str(older.parent),
        "config_sha256": "0" * 64, "settings_sha256": "1" * 64}))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "-m", "hydra/launcher=ray", "model.model.clip_weight=0,1.0",
         "+hydra.launcher.ray.max_concurrent_tasks=2", "+model=clip_tiny", "+data=mmimdb",
         'mode="train"', "trainer.max_epochs=1", f"trainer.default_root_dir={tmp_path}",
         "+class_idx=19", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=2",
         "+trainer.limit_test_batches=1", "+trainer.enable_progress_bar=false",
         "data.batch_size=16", "data.align_samples=32", *RAY_ON_2_CORES],
        capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = {w: json.loads((sweep / f"clip-weight_{w}" / "metrics.json").read_text())
            for w in ("0", "1")}
    for weight, metrics in runs.items():
        assert metrics["clip_weight"] == float(weight)
        assert metrics["class_idx"] == 19 and metrics["genre"] == "western"
        assert Path(metrics["checkpoint"]).is_file()
        assert set(metrics["dev"]) >= {"f1", "f1_macro"} and set(metrics["test"]) >= {"f1", "f1_macro"}
        assert 0.0 <= metrics["alignment"]["score"] <= 1.0
    with open(sweep / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["clip_weight"]) for r in rows] == [0.0, 1.0]
    for row in rows:
        metrics = runs["0" if float(row["clip_weight"]) == 0 else "1"]
        assert float(row["test_f1"]) == pytest.approx(metrics["test"]["f1"])
        assert float(row["alignment"]) == pytest.approx(metrics["alignment"]["score"])
    for suffix in ("png", "pdf"):
        assert (sweep / f"sweep.{suffix}").stat().st_size > 1000
    with open(sweep / "sweep_left_out.csv") as f:
        left_out = list(csv.DictReader(f))
    assert [(float(r["clip_weight"]), r["reason"]) for r in left_out] == \
        [(0.5, "made before runs recorded their settings")]
    assert f"{older.parent}: left out of the sweep summary" in proc.stdout + proc.stderr
