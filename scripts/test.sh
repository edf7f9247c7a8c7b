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
# Second mode: the SAGE integration tests with SAGE's packages from PyPI: isage-common (the interface)
# and isage-cli (the real `sage` command, for `sage finetune`). On top of this venv isage-cli takes about
# a minute and ~60 small packages (its torch>=2.7 is met by the CPU build above; it pins
# huggingface_hub<2). Afterwards the venv is put back as it was, so that the first mode stays standalone.
export LC_ALL=C
before=$(mktemp) after=$(mktemp)
python -m pip list --format=freeze --exclude-editable | sort > "$before"
pip install -q isage-common isage-cli
status=0
python -m pytest -q tests/sage "$@" || status=$?
python -m pip list --format=freeze --exclude-editable | sort > "$after"
# what it added (never pip itself), and the versions it changed
added=$(comm -13 <(cut -d= -f1 "$before" | sort) <(cut -d= -f1 "$after" | sort) | grep -vxE 'pip|setuptools|wheel' || true)
changed=$(comm -23 "$before" "$after")
[ -z "$added" ] || python -m pip uninstall -q -y $added
[ -z "$changed" ] || python -m pip install -q --no-deps $changed
rm -f "$before" "$after"
exit $status
