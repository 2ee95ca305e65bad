"""perturbed/create_dataset.py as users run it: kill and resume, one-line errors, --validate."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_chat_server import FakeChatServer, scripted_captions

from platonic.captions.store import finished_indices, journal_path
from platonic.errors import PlatonicError
from platonic.io import published_captions as published
from platonic.run.exit_codes import run_cli

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "perturbed" / "create_dataset.py"
PUBLISHED = ROOT.parent / "shared" / "reference" / "perturbed_data.json"
SECRET = "sk-test-NEVER-PRINT-77d0e3b5"
pytestmark = pytest.mark.timeout(180)


def _cli_module():
    spec = importlib.util.spec_from_file_location("create_dataset", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    return {**env, "HF_HUB_OFFLINE": "1", **extra}


def _captions_file(path: Path, n: int) -> list[str]:
    captions = [f'Figure {i}: "Mosaicing" of two images.\nClose-ups: (c) and (d).' for i in range(n)]
    path.write_text("".join(json.dumps({"text": c}) + "\n" for c in captions), encoding="utf-8")
    return captions


def _run_args(server: FakeChatServer, captions_file: Path, save: Path) -> list[str]:
    """The output is rewritten only at the end, so a killed run's record is the journal alone."""
    return [sys.executable, str(SCRIPT), "--base_url", server.base_url, "--model", "fake",
            "--captions_file", str(captions_file), "--save_path", str(save),
            "--sim_model", "offline", "--num_workers", "2", "--save_every", "1000",
            "--timeout", "2", "--backoff", "0.01"]


def _wait_for_finished(proc: subprocess.Popen, save: Path, at_least: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if len(finished_indices(save)) >= at_least:
            return
        time.sleep(0.02)
    raise AssertionError(f"the run ended or stalled before {at_least} captions were finished")


def test_killed_run_resumes_without_asking_again(tmp_path):
    captions = _captions_file(tmp_path / "c.jsonl", 24)
    save = tmp_path / "out" / "data.json"
    logs = tmp_path / "first.log"
    with FakeChatServer({captions[7]: ["500"], captions[9]: ["nine"]}, delay=0.15) as server:
        args = _run_args(server, tmp_path / "c.jsonl", save)
        with open(logs, "w") as log:
            proc = subprocess.Popen(args, cwd=tmp_path, env=_env(OPENAI_API_KEY=SECRET),
                                    stdout=log, stderr=subprocess.STDOUT)
            try:
                _wait_for_finished(proc, save, at_least=6)
            finally:
                proc.kill()
                proc.wait(timeout=10)
        durable = finished_indices(save)
        only_journal = not save.exists() and journal_path(save).exists()
        mark = len(server.requests)
        second = subprocess.run(args, cwd=tmp_path, env=_env(OPENAI_API_KEY=SECRET),
                                capture_output=True, text=True, timeout=150)
        asked_again = server.captions_requested(since=mark)
    assert 6 <= len(durable) < 24, "the kill must land mid-run"
    assert only_journal, "before the first batch is written, the journal alone holds the work"
    assert second.returncode == 0, second.stderr
    assert not {captions[i] for i in durable} & set(asked_again)
    assert {captions[i] for i in range(24) if i not in durable} <= set(asked_again)
    entries = published.read(save)
    assert list(entries) == list(range(24))
    assert all(e.captions == tuple(scripted_captions(captions[e.index])) for e in entries.values())
    assert not journal_path(save).exists()
    seen = logs.read_text() + second.stdout + second.stderr + save.read_text(encoding="utf-8")
    assert SECRET not in seen
    assert all(r.authorization == f"Bearer {SECRET}" for r in server.requests)


def test_missing_key_is_one_line_and_asks_nothing(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT)], cwd=tmp_path, env=_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error: no API key")
    assert not (tmp_path / "perturbed").exists()


def test_unreachable_dataset_is_one_line(tmp_path):
    env = _env(OPENAI_API_KEY=SECRET, HF_HOME=str(tmp_path / "empty-hf-cache"))
    result = subprocess.run([sys.executable, str(SCRIPT)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot load data set minhuh/prh")
    assert "Traceback" not in result.stderr and SECRET not in result.stderr + result.stdout


def test_dry_run_counts_requests_and_needs_no_key(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    _captions_file(tmp_path / "c.jsonl", 5)
    save = tmp_path / "data.json"
    journal_path(save).write_text(json.dumps({"index": 1, "original": "x",
                                              "captions": [f"c{k}" for k in range(10)]}) + "\n")
    code = _cli_module().main(["--captions_file", "c.jsonl", "--save_path", str(save),
                               "--dry_run"])
    out = capsys.readouterr().out
    assert code == 0 and "5 captions, 1 already in" in out and "4 requests" in out
    assert not save.exists()


def test_bad_input_file_exits_2_with_the_line_at_fault(tmp_path, capsys):
    (tmp_path / "c.jsonl").write_text('{"text": "fine"}\nnot json\n')
    with pytest.raises(SystemExit) as exit_info:
        run_cli(_cli_module().main, ["--captions_file", str(tmp_path / "c.jsonl"),
                                     "--base_url", "http://127.0.0.1:9/v1", "--dry_run"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {tmp_path / 'c.jsonl'}: line 2 is not JSON")
    assert len(err.splitlines()) == 1


@pytest.mark.skipif(not PUBLISHED.exists(), reason="shared reference folder absent")
def test_validate_finds_the_published_files_cut_captions(capsys):
    assert _cli_module().main(["--validate", str(PUBLISHED)]) == 0
    out = capsys.readouterr().out
    cut_line = next(line for line in out.splitlines() if line.startswith("cut captions"))
    assert cut_line.endswith("4 entries: 17 (levels 1-7); 47 (levels 1, 7, 10); "
                             "128 (levels 1-10); 859 (levels 1-10)")
    assert "structure: ok" in out and "captions with line breaks (kept, not faults): 18" in out
    assert "similarity model: sentence-transformers/paraphrase-MiniLM-L6-v2 in 1024" in out
    assert "Caption 10 - 100%" in out


def test_validate_reports_structural_errors_with_exit_1(tmp_path, capsys):
    good = {"sentences": {**{published.level_key(k): f"c{k}" for k in range(1, 11)},
                          "Caption 0 - 0%": "orig"}, "similarities": [0.5] * 10}
    broken = {"sentences": {"Caption 0 - 0%": "orig"}, "similarities": [0.5] * 10}
    path = tmp_path / "data.json"
    path.write_text(json.dumps([{"Index - 0": good}, {"Index - 2": good},
                                {"Index - 3": broken}, {"Index - 1": good}]))
    assert _cli_module().main(["--validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert "entry 2 'sentences' must hold the 11 keys" in out
    assert "index 1 comes after index 2" in out


def test_validate_flags_similarities_of_two_encoders(tmp_path, capsys):
    entries = {i: published.CaptionEntry(i, f"orig {i}", tuple(f"c{i}.{k}" for k in range(10)),
                                         (0.5,) * 10, model) for i, model in
               enumerate(["offline", None, "offline"])}
    published.write(tmp_path / "data.json", entries)
    assert _cli_module().main(["--validate", str(tmp_path / "data.json")]) == 1
    assert ("similarities from 2 encoders (offline in 2, sentence-transformers/paraphrase-MiniLM-"
            "L6-v2 in 1)") in capsys.readouterr().out


def test_fallback_encoder_is_not_mixed_into_published_similarities(tmp_path, monkeypatch):
    """Offline, the default encoder falls back to 'offline': a resumed run must stop, not mix."""
    from platonic.captions import similarity

    monkeypatch.setattr(similarity, "DEFAULT_MODEL", str(tmp_path / "unreachable-model"))
    captions = _captions_file(tmp_path / "c.jsonl", 3)
    save = tmp_path / "data.json"
    published.write(save, {0: published.CaptionEntry(0, captions[0], tuple(f"c{k}" for k in range(10)),
                                                     (0.5,) * 10)})
    before = save.read_bytes()
    with FakeChatServer() as server:
        with pytest.raises(PlatonicError, match="index 0 has similarities from 'sentence-transformers/"
                                                "paraphrase-MiniLM-L6-v2', this run computes them "
                                                "with 'offline'; rerun with --sim_model"):
            _cli_module().main(["--base_url", server.base_url, "--captions_file",
                                str(tmp_path / "c.jsonl"), "--save_path", str(save), "--device", "cpu",
                                "--sim_model", str(tmp_path / "unreachable-model")])
        assert server.requests == [] and save.read_bytes() == before
