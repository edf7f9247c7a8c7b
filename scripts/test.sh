#!/usr/bin/env bash
# The test suite, on the versions it last passed on:
#
#   bash scripts/test.sh [PYTEST_ARGS...]            pinned (requirements/*.txt); what CI runs via .ci/run
#   bash scripts/test.sh --latest [PYTEST_ARGS...]   the canary: the newest releases, no lock
#
# Two passes, each in its own virtual environment:
#   1. the default suite (CPU, ~10 min on 2 cores) in .venv with the dev, qlora, tensorboard, wandb and
#      deepspeed extras, without SAGE's packages (the package must work standalone);
#   2. tests/sage in .venv-sage with SAGE's packages from PyPI: isage-common (the interface) and
#      isage-cli (the real `sage` command). isage-cli pins huggingface_hub<2 and so moves transformers
#      back a release; in its own environment it cannot change the first one.
# The canary uses .venv-latest and .venv-sage-latest, then lists what differs from the lock files. When
# it passes, `bash scripts/lock.sh --latest` adopts its versions. Extra arguments go to pytest, e.g.
# `bash scripts/test.sh --run-slow`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh

LOCK=requirements/constraints.txt SAGE_LOCK=requirements/constraints-sage.txt
if [ "${1:-}" = "--latest" ]; then
  shift
  MAIN=.venv-latest SAGE=.venv-sage-latest MAIN_PIN="" SAGE_PIN="" WHAT="canary (newest releases)"
else
  MAIN=.venv SAGE=.venv-sage MAIN_PIN=$LOCK SAGE_PIN=$SAGE_LOCK WHAT="pinned (requirements/)"
fi
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1

# Only the whole default suite stamps an environment as passing (scripts/lock.sh locks from stamps):
# no stamp when pytest got a selection (files, -k, ...); flags such as --run-slow are fine.
whole_suite=1
for arg in "$@"; do
  case "$arg" in --run-slow|--gpu|-q|-v|-x|-ra) ;; *) whole_suite=0 ;; esac
done

run_pass() {  # run_pass VENV PYTEST_ARGS...: pytest in VENV; a passing whole suite stamps VENV/.suite-passed
  local dir=$1
  shift
  rm -f "$dir/.suite-passed"
  if (PATH="$PWD/$dir/bin:$PATH" VIRTUAL_ENV="$PWD/$dir" "$dir/bin/python" -m pytest -q "$@"); then
    [ $whole_suite = 0 ] || frozen_versions "$dir" > "$dir/.suite-passed"
    return 0
  fi
  return 1
}

main_status=0
if make_venv "$MAIN" "$MAIN_PIN" -e ".[dev,qlora,tensorboard,wandb,deepspeed]"; then
  "$MAIN/bin/python" -m pip uninstall -q -y isage-cli isage-common 2>/dev/null || true  # left by an older test.sh
  run_pass "$MAIN" "$@" || main_status=$?
else
  main_status="install"
fi

# the SAGE pass runs tests/sage; a selection of other tests given to the first pass is not repeated here
sage_args=()
[ $whole_suite = 0 ] || sage_args=("$@")
sage_status=0
if make_venv "$SAGE" "$SAGE_PIN" -e ".[dev,sage]" isage-cli; then
  run_pass "$SAGE" tests/sage "${sage_args[@]}" || sage_status=$?
else
  sage_status="install"
fi

result() { case "$1" in 0) echo passed ;; install) echo "FAILED (its environment did not install)" ;;
           *) echo "FAILED (exit $1)" ;; esac; }
echo
echo "test.sh, $WHAT: default suite $(result $main_status), SAGE pass $(result $sage_status)"
if [ -z "$MAIN_PIN" ]; then
  for pair in "$MAIN:$LOCK" "$SAGE:$SAGE_LOCK"; do
    drift=$(lock_drift "${pair%%:*}" "${pair#*:}")
    echo "versions in ${pair%%:*} that differ from ${pair#*:}:"
    echo "${drift:-  (none)}"
  done
  if [ $main_status = 0 ] && [ $sage_status = 0 ]; then
    echo "the newest releases pass: 'bash scripts/lock.sh --latest' adopts them"
  else
    echo "a newer release breaks the suite; the lock files keep the versions it last passed on"
  fi
fi
[ $main_status = 0 ] && [ $sage_status = 0 ]
