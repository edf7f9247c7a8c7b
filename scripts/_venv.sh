# Sourced by the set-up scripts: one way to build a virtual environment, pinned or newest.
#
#   make_venv DIR LOCK PIP_ARGS...
#
# LOCK is a constraints file (requirements/*.txt): every package gets the version the test suite last
# passed on. LOCK empty: the newest releases of everything but torch (the canary, scripts/test.sh
# --latest). torch is always the CPU build 2.13.0 and installed first: a range asked for by another
# package would otherwise pull a multi-GB CUDA build (see README, Install).
PY=${PYTHON:-python3}
TORCH_PIN="torch==2.13.0"

make_venv() {
  local dir=$1 lock=$2
  shift 2
  [ -x "$dir/bin/python" ] || "$PY" -m venv "$dir" || return 1
  local pins=() upgrade=()
  if [ -n "$lock" ]; then
    pins=(-c "$lock")
  else
    local torch_only="$dir/torch-only.txt"
    echo "$TORCH_PIN" > "$torch_only"
    pins=(-c "$torch_only")
    upgrade=(--upgrade --upgrade-strategy eager)
  fi
  # each step checked: callers run this under `if` (where bash ignores set -e) to report a failure
  "$dir/bin/python" -m pip install -q "${pins[@]}" --upgrade pip || return 1
  "$dir/bin/python" -m pip install -q "${pins[@]}" "$TORCH_PIN" || return 1
  "$dir/bin/python" -m pip install -q "${pins[@]}" "${upgrade[@]}" "$@" || return 1
}

# The installed versions, one `name==version` a line, as a lock file holds them (local version labels
# such as torch's +cpu dropped, so that the file also constrains a CUDA build of the same release).
frozen_versions() {
  "$1/bin/python" -m pip freeze --all --exclude-editable 2>/dev/null | sed -E 's/\+[A-Za-z0-9.]+$//' | LC_ALL=C sort -f
}

# Packages whose installed version differs from LOCK: "name lock -> installed" lines ("(none)" on the
# side that lacks the package).
lock_drift() {
  local dir=$1 lock=$2
  LC_ALL=C join -i -t= -a1 -a2 -e '(none)' -o 0,1.2,2.2 \
    <(grep -E '^[A-Za-z0-9]' "$lock" | sed 's/==/=/' | LC_ALL=C sort -f -t= -k1,1) \
    <(frozen_versions "$dir" | sed 's/==/=/' | LC_ALL=C sort -f -t= -k1,1) \
    | awk -F= '$2 != $3 { printf "  %-28s %-12s -> %s\n", $1, $2, $3 }'
}
