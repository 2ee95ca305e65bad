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

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "mmimdb" / "clip_finetune_binary.py"
RAY_ON_2_CORES = ["+hydra.launcher.ray.init.num_cpus=2"]

TOY_APP = '''
import json, time
from pathlib import Path

import hydra


@hydra.main(config_path=".", config_name="toy", version_base="1.3")
def main(cfg):
    start = time.time()
    time.sleep(1.5)
    if cfg.x == cfg.fail_on:
        raise RuntimeError(f"boom at x={cfg.x}")
    Path(cfg.out, f"job_{cfg.x}.json").write_text(json.dumps({"start": start, "end": time.time()}))


if __name__ == "__main__":
    main()
'''


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "RAY_DEDUP_LOGS": "0"}


def test_concurrency_limit_values():
    from hydra_plugins.platonic_ray_launcher.bounded_ray_launcher import concurrency_limit

    assert concurrency_limit(None, 5) == 5 and concurrency_limit(2, 5) == 2
    for bad in (0, -1, True, 1.5):
        with pytest.raises(PlatonicError, match="max_concurrent_tasks"):
            concurrency_limit(bad, 5)


def test_ray_sweep_caps_jobs_in_flight_and_reports_the_failed_job(tmp_path):
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
        [sys.executable, str(app), "-m", "hydra/launcher=ray", "x=1,2,3", "fail_on=2",
         "+hydra.launcher.ray.max_concurrent_tasks=1", *RAY_ON_2_CORES],
        capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=600)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "error: job with overrides [x=2 fail_on=2] failed: boom at x=2" in proc.stderr
    assert "error: 1 of 3 jobs failed" in proc.stderr
    done = {p.stem: json.loads(p.read_text()) for p in out.glob("job_*.json")}
    assert sorted(done) == ["job_1", "job_3"]  # the other jobs still ran
    # one job at a time although Ray has 2 CPUs: job 3 started after job 1 ended
    assert done["job_3"]["start"] >= done["job_1"]["end"]


def test_finetuning_sweep_with_the_ray_launcher(tmp_path):
    """The README's offline sweep at a small size: tiny towers, one short epoch, two weights."""
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "-m", "hydra/launcher=ray", "model.model.clip_weight=0,1.0",
         "+hydra.launcher.ray.max_concurrent_tasks=2", "+model=clip_tiny", "+data=mmimdb",
         'mode="train"', "trainer.max_epochs=1", f"trainer.default_root_dir={tmp_path}",
         "+class_idx=19", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=2",
         "+trainer.limit_test_batches=1", "+trainer.enable_progress_bar=false",
         "data.batch_size=16", "data.align_samples=32", *RAY_ON_2_CORES],
        capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = tmp_path / "CLIPSup-tiny" / "class_19" / "seed_42"
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
