#!/usr/bin/env bash
# Build the documentation site (docs/ -> site/) with `mkdocs build --strict`, as CI does: a broken
# link or a page missing from the navigation fails the build.
#
#   bash scripts/docs.sh            mkdocs from requirements/constraints-docs.txt, in .venv-docs
#   bash scripts/docs.sh --latest   the newest mkdocs, in .venv-docs-latest (no lock)
#
# On success the environment is stamped for scripts/lock.sh, like the test environments.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh
dir=.venv-docs pins=(-c requirements/constraints-docs.txt) upgrade=()
if [ "${1:-}" = "--latest" ]; then
  dir=.venv-docs-latest pins=() upgrade=(--upgrade --upgrade-strategy eager)
fi
[ -x "$dir/bin/python" ] || "$PY" -m venv "$dir"
"$dir/bin/python" -m pip install -q "${pins[@]}" --upgrade pip
"$dir/bin/python" -m pip install -q "${pins[@]}" "${upgrade[@]}" "mkdocs>=1.6"
rm -f "$dir/.suite-passed"
"$dir/bin/python" -m mkdocs build --strict --quiet
frozen_versions "$dir" > "$dir/.suite-passed"
echo "docs: built site/ with mkdocs $("$dir/bin/python" -c "import mkdocs; print(mkdocs.__version__)")"
