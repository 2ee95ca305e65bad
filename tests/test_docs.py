"""The README and the pages of docs/: every relative link resolves (files and anchors), every
module path they name exists, and every command they show runs a script that exists and takes
the flags it names (the script's own --help; Hydra overrides through compose)."""

from __future__ import annotations

import functools
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
HYDRA_APPS = {"mmimdb/clip_finetune_binary.py"}
PYTHONS = {"python", "python3", ".venv/bin/python"}


def _links(page: Path) -> list[str]:
    return [target for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text())
            if not re.match(r"[a-z]+:", target)]


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {_slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    for target in _links(page):
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.name}: link to {target} does not resolve"
        if anchor:
            assert anchor in _anchors(resolved), f"{page.name}: no heading #{anchor} in {path}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_module_path_named_exists(page):
    for path in re.findall(r"`(platonic/[\w/]*(?:\.py|/))", page.read_text()):
        assert (REPO / path).exists(), f"{page.name}: {path} does not exist"


def _command_lines(page: Path) -> list[str]:
    """Commands in code blocks (continuation lines joined) and in inline code spans."""
    text = page.read_text()
    commands = []
    for block in re.findall(r"```(?:bash)?\n(.*?)```", text, flags=re.S):
        commands += block.replace("\\\n", " ").splitlines()
    outside = re.sub(r"```.*?```", "", text, flags=re.S)
    commands += re.findall(r"`((?:bash|python|\.venv/bin/python) [^`]+)`", outside)
    return commands


def _commands(page: Path) -> list[tuple[str, list[str]]]:
    """(script, arguments) of each command that runs a script of this repository."""
    found = []
    for line in _command_lines(page):
        for part in line.split("&&"):
            try:
                words = shlex.split(part, comments=True)
            except ValueError:
                continue
            if len(words) < 2:
                continue
            if ((words[0] in PYTHONS and words[1].endswith(".py"))
                    or (words[0] == "bash" and words[1].endswith(".sh"))):
                found.append((words[1], words[2:]))
    return found


@functools.cache
def _help(script: str) -> str:
    runner = ["bash"] if script.endswith(".sh") else [sys.executable]
    proc = subprocess.run([*runner, str(REPO / script), "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"{script} --help: {proc.stderr[-1000:]}"
    return proc.stdout


def _check_hydra_overrides(script: str, args: list[str]) -> None:
    from hydra import compose, initialize_config_dir

    overrides = []
    for arg in args:
        if arg.startswith("-"):
            continue
        key, _, value = arg.partition("=")
        overrides.append(f"{key}={value.split(',')[0]}")  # a sweep: its first value
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        compose("train_mmimdb", overrides=overrides, return_hydra_config=True)


def test_the_readme_shows_commands():
    scripts = {script for script, _ in _commands(REPO / "README.md")}
    assert {"run_platonic_unique.sh", "mmimdb/run_mmimdb.sh", "setup.sh",
            "mmimdb/clip_finetune_binary.py"} <= scripts


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_shown_exists_with_its_flags(page):
    for script, args in _commands(page):
        assert (REPO / script).is_file(), f"{page.name}: {script} does not exist"
        if script in HYDRA_APPS:
            _check_hydra_overrides(script, args)
            continue
        flags = {arg.split("=")[0] for arg in args if arg.startswith("--")} - {"--help"}
        if flags and script != "setup.sh":
            shown = set(re.findall(r"--[\w-]+", _help(script)))
            assert flags <= shown, f"{page.name}: {script} has no {sorted(flags - shown)}"
