"""The extract and measure stages through a local Ray instance give the local run's files."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")

from platonic.errors import PlatonicError  # noqa: E402
from platonic.io.features import feature_path, load_features, save_features  # noqa: E402
from platonic.io.results import grids_path  # noqa: E402
from platonic.io.storage import level_dir  # noqa: E402
from platonic.models.registry import LANGUAGE, VISION, ModelSpec  # noqa: E402
from platonic.run import (  # noqa: E402
    extract_features,
    ray_runner,  # noqa: E402
    ray_stages,
)
from platonic.run.cli_args import RaySettings  # noqa: E402
from platonic.run.measure_alignment import main as measure_main  # noqa: E402
from platonic.stages import extract  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
LEVELS = "0,100"
N = 10


@pytest.fixture
def custom_models(monkeypatch, tiny_llama_dir, tiny_custom_models):
    monkeypatch.setenv("PLATONIC_CUSTOM_MODELS", str(tiny_custom_models))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return [(str(tiny_llama_dir), "avg"), ("test_vit", "cls")]


def extract_args(out: Path, *extra: str) -> list[str]:
    return ["--modelset", "custom", "--dataset", "embedded", "--num_samples", str(N),
            "--levels", LEVELS, "--output_dir", str(out / "u={}_features"), "--batch_size", "4",
            "--device", "cpu", *extra]


def measure_args(out: Path, *extra: str) -> list[str]:
    return ["--modelset", "custom", "--dataset", "embedded", "--subset", "seed0",
            "--levels", LEVELS, "--topk", "3", "--input_dir", str(out / "u={}_features"),
            "--output_dir", str(out / "u={}_alignment"), "--device", "cpu", *extra]


def feature_files(out: Path, models) -> dict[tuple[int, str], Path]:
    return {(level, model): feature_path(level_dir(str(out / "u={}_features"), level), "embedded",
                                         "seed0", model, pool)
            for level in (0, 100) for model, pool in models}


def assert_same_features(ours: Path, theirs: Path, models) -> None:
    for key, path in feature_files(ours, models).items():
        mine, local = load_features(path), load_features(feature_files(theirs, models)[key])
        assert torch.equal(mine.feats, local.feats), key
        assert mine.extras.keys() == local.extras.keys()
        for name in mine.extras:
            assert torch.equal(mine.extras[name], local.extras[name]), (key, name)
        assert mine.meta == local.meta, key


def alignment_files(out: Path) -> list[Path]:
    return sorted((out).rglob("mutual_knn_k3.json"))


def assert_same_alignment(ours: Path, theirs: Path) -> None:
    mine, local = alignment_files(ours), alignment_files(theirs)
    assert len(mine) == len(local) == 2
    for a, b in zip(mine, local, strict=True):
        ja, jb = json.loads(a.read_text()), json.loads(b.read_text())
        assert ja["scores"] == jb["scores"] and ja["indices"] == jb["indices"]
        ga, gb = np.load(grids_path(a)), np.load(grids_path(b))
        assert sorted(ga.files) == sorted(gb.files)
        for name in ga.files:
            np.testing.assert_array_equal(ga[name], gb[name])


def no_temporaries(root: Path) -> bool:
    return not [p for p in root.rglob("*.tmp")]


def test_demo_like_stages_through_ray_equal_a_local_run(tmp_path, local_ray, custom_models, capsys,
                                                        ray_submissions):
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    assert extract_features.main(extract_args(local)) == 0
    assert measure_main(measure_args(local)) == 0
    capsys.readouterr()
    assert extract_features.main(extract_args(on_ray, "--ray", "--ray_retries", "0")) == 0
    assert "wrote 4 feature files, reused 0, model loads {" in capsys.readouterr().out
    assert_same_features(on_ray, local, custom_models)
    assert measure_main(measure_args(on_ray, "--ray", "--ray_retries", "0")) == 0
    assert_same_alignment(on_ray, local)
    # every task of every kind was submitted with the --ray_retries given
    assert {name.split()[0] for name, _ in ray_submissions} == {"extract", "kernels", "align"}
    assert {retries for _, retries in ray_submissions} == {0}
    # The alignment JSON names its inputs; beside that, the contents are the local run's.
    assert no_temporaries(on_ray)
    assert extract_features.main(extract_args(on_ray, "--ray")) == 0
    assert "wrote 0 feature files, reused 4, model loads {}" in capsys.readouterr().out
    assert measure_main(measure_args(on_ray, "--ray")) == 0
    assert capsys.readouterr().out.count("up to date:") == 2


def test_calibrated_null_through_ray_equals_a_local_run(tmp_path, local_ray, custom_models):
    """With --null the permutations are seeded by the pair's files: the same calibration."""
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    extract_features.main(extract_args(local))
    null = ("--null", "4", "--bootstrap", "5")
    measure_main(measure_args(local, *null))
    # The same feature files, measured through Ray.
    shutil.copytree(local / "u=0_features", on_ray / "u=0_features")
    shutil.copytree(local / "u=100_features", on_ray / "u=100_features")
    assert measure_main(measure_args(on_ray, *null, "--ray")) == 0
    assert_same_alignment(on_ray, local)
    for a, b in zip(alignment_files(on_ray), alignment_files(local), strict=True):
        calibration = json.loads(a.read_text())["calibration"]
        assert calibration == json.loads(b.read_text())["calibration"] and calibration[0][0]


def test_one_missing_feature_file_remade_through_ray(tmp_path, local_ray, custom_models, capsys):
    """A rerun after a lost file makes only that file, and the alignment only that level."""
    out = tmp_path / "run"
    extract_features.main(extract_args(out))
    measure_main(measure_args(out))
    before = {p: p.read_bytes() for p in alignment_files(out)}
    lm, pool = custom_models[0]
    lost = feature_files(out, [(lm, pool)])[(100, lm)]
    kept = feature_files(out, [(lm, pool)])[(0, lm)]
    kept_bytes, lost_bytes = kept.read_bytes(), lost.read_bytes()
    lost.unlink()
    capsys.readouterr()
    assert extract_features.main(extract_args(out, "--ray")) == 0
    assert "wrote 1 feature files, reused 3" in capsys.readouterr().out
    assert lost.read_bytes() == lost_bytes and kept.read_bytes() == kept_bytes
    assert measure_main(measure_args(out, "--ray")) == 0
    assert {p: p.read_bytes() for p in alignment_files(out)} == before


def _die_once_mid_write(marker: str, real_path: str):
    """A language model `source`: on the first attempt (no marker yet), makes the worker write
    half of its second feature file and then die; afterwards, the real model folder."""
    if not os.path.exists(marker):
        Path(marker).write_text("died once")
        from platonic.io.storage import atomic_path
        from platonic.stages import extract as worker_extract

        real_save = worker_extract.save_features
        calls = []

        def save_then_die(path, feats, meta, extras=None):
            calls.append(path)
            if len(calls) == 1:
                return real_save(path, feats, meta, extras)
            with atomic_path(path) as tmp:
                tmp.write_bytes(b"\x00" * 100)
                os._exit(1)

        worker_extract.save_features = save_then_die
    return real_path


def test_worker_killed_mid_write_is_retried_and_leaves_whole_equal_files(
        tmp_path, local_ray, tiny_llama_dir):
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    marker = tmp_path / "died"
    lm = ModelSpec(str(tiny_llama_dir), LANGUAGE, "Tiny", "2l", options={
        "source": lambda: _die_once_mid_write(str(marker), str(tiny_llama_dir))})
    vit = ModelSpec("test_vit", VISION, "Test ViT", "tiny", options={"random_init_seed": 0})
    from platonic.data.datasets import load_data

    data = load_data("embedded", "seed0", N)
    captions = extract.texts_by_level(data, [0, 100])
    settings = {"dataset": "embedded", "subset": "seed0", "batch_size": 4, "device": "cpu"}
    plain_lm = ModelSpec(str(tiny_llama_dir), LANGUAGE, "Tiny", "2l")
    local = extract.run([plain_lm], [vit], captions, data.images,
                                   extract.Settings(str(tmp_path / "local/u={}"), **settings))
    assert len(local.written) == 4
    args = distributed_args(retries=2)
    stats = ray_stages.extract_on_ray([lm], [vit], captions, data.images,
                                       extract.Settings(str(tmp_path / "ray/u={}"), **settings),
                                       args)
    assert marker.exists(), "the first attempt did not run"
    # The dead attempt had written level 0 whole: the retry reused it and wrote the rest.
    first = feature_path(tmp_path / "ray/u=0", "embedded", "seed0", str(tiny_llama_dir), "avg")
    assert stats.reused == [first]
    assert sorted(map(str, stats.written + stats.reused)) == sorted(
        str(p).replace("/local/", "/ray/") for p in local.written)
    models = [(str(tiny_llama_dir), "avg"), ("test_vit", "cls")]
    for level in (0, 100):
        for model, pool in models:
            ours = load_features(feature_path(tmp_path / f"ray/u={level}", "embedded", "seed0", model, pool))
            theirs = load_features(feature_path(tmp_path / f"local/u={level}", "embedded", "seed0", model, pool))
            assert torch.equal(ours.feats, theirs.feats) and ours.meta == theirs.meta
    assert no_temporaries(tmp_path / "ray")


def distributed_args(retries: int = 3, device: str | None = "cpu") -> RaySettings:
    return RaySettings("local", retries, device)


def test_a_failed_task_is_named_and_the_stage_fails(tmp_path, local_ray, custom_models, capsys):
    out = tmp_path / "run"
    extract_features.main(extract_args(out))
    lm = custom_models[0][0]
    bad = feature_files(out, [(lm, "avg")])[(100, lm)]
    ff = load_features(bad)
    ff.feats[3, 1, 0] = float("nan")  # caught when the task loads the file, not when planning
    save_features(bad, ff.feats, ff.meta, ff.extras)
    with pytest.raises(PlatonicError) as err:
        measure_main(measure_args(out, "--ray"))
    message = str(err.value)
    assert message.startswith("1 of 2 Ray task(s) failed after retries: model ")
    assert f"model {lm} (level 100): {bad}" in message and "layer(s) [1]" in message
    assert "\n" not in message
    # The level whose task succeeded is written; the failed one is not.
    assert [p.relative_to(out).parts[0] for p in alignment_files(out)] == ["u=0_alignment"]


def _closed_port() -> socket.socket:
    """A socket bound to a port on 127.0.0.1 and never listening: connections are refused."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    return closed


def test_an_unreachable_ray_address_is_one_line_at_once(tmp_path):
    """Nothing listens at the address: one line naming it, exit 2, in seconds (Ray alone
    printed warnings for minutes)."""
    from tests.stages.test_measure import LANG, VIS, write_models

    write_models(tmp_path / "feats")
    with _closed_port() as closed:
        address = f"127.0.0.1:{closed.getsockname()[1]}"
        proc = subprocess.run(
            [sys.executable, str(REPO / "measure_alignment.py"), "--dataset", "toy", "--subset",
             "s", "--models_x", *LANG, "--models_y", *VIS, "--input_dir", str(tmp_path / "feats"),
             "--output_dir", str(tmp_path / "align"), "--topk", "5", "--ray", address],
            capture_output=True, text=True, timeout=90)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --ray {address}: nothing accepts "
                                                   f"connections at {address} (")
    assert not (tmp_path / "align").exists()


def test_an_unreachable_ray_client_address_is_refused_before_ray_starts():
    with _closed_port() as closed:
        port = closed.getsockname()[1]
        with pytest.raises(PlatonicError, match=rf"--ray ray://127.0.0.1:{port}: nothing accepts"):
            ray_runner.check_reachable(f"ray://127.0.0.1:{port}")
    assert ray_runner.host_and_port("ray://[::1]:10001") == ("::1", 10001)
    assert ray_runner.host_and_port("auto") is None


@pytest.mark.parametrize("value", ["-5", "-1"])
def test_negative_ray_retries_are_refused_by_every_stage(value, capsys):
    """-1 would mean endless retries to Ray, -5 a traceback: every script with the Ray flags
    refuses both with one error line."""
    from platonic.mmimdb import commands as mmimdb_cli
    from platonic.run import measure_alignment

    parsers = [extract_features.build_parser, measure_alignment.build_parser,
               mmimdb_cli.extract_parser,
               mmimdb_cli.probe_parser, mmimdb_cli.measure_parser]
    for parser in parsers:
        with pytest.raises(SystemExit) as exit_code:
            parser().parse_args(["--ray", "--ray_retries", value])
        assert exit_code.value.code == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.endswith(f"error: argument --ray_retries: must be at least 0, got {value}")
        assert parser().parse_args(["--ray_retries", "0"]).ray_retries == 0


@pytest.mark.parametrize("params, dtype, qlora, memory, expected", [
    (65e9, "bfloat16", False, 80, 2),   # 65e9 x 2 B x 1.2 = 156 GB over 80 GiB = 85.9 GB: 1.8
    (7e9, "bfloat16", False, 80, 1),    # 16.8 GB: 0.2
    (30e9, "float32", False, 80, 2),    # 144 GB: 1.7
    (70e9, "bfloat16", False, 40, 4),   # 168 GB over 40 GiB = 42.9 GB: 3.9
    (65e9, "bfloat16", True, 40, 1),    # 4 bit: 39 GB: 0.9
])
def test_gpu_request_from_parameters_and_dtype(params, dtype, qlora, memory, expected):
    settings = extract.Settings("out", "embedded", "seed0", dtype=dtype, qlora=qlora)
    spec = ModelSpec("m", LANGUAGE, "F", "x", params / 1e9)
    assert ray_stages.model_gpus(spec, settings, memory) == expected


def test_registry_sizes_are_known():
    from platonic.models.registry import MODEL_SETS

    for spec in MODEL_SETS["val"] + MODEL_SETS["test"]:
        assert ray_stages.estimated_params(spec) is not None, spec.id
