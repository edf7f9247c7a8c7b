#!/usr/bin/env bash
# Set up .venv with the dev, qlora, tensorboard, wandb and deepspeed extras and run the default test suite (CPU, ~minutes on 2 cores).
# Extra pytest arguments pass through, e.g. `bash scripts/test.sh --run-training`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
pip install -q torch==2.13.0          # the CPU build; must come before the project (see README)
pip install -q -e ".[dev,qlora,tensorboard,wandb,deepspeed]"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
pip uninstall -q -y isage-common 2>/dev/null || true
python -m pytest -q "$@"
# Second mode: with SAGE's interface package (isage-common) installed, the SAGE integration tests.
pip install -q isage-common
python -m pytest -q tests/sage "$@"
pip uninstall -q -y isage-common
