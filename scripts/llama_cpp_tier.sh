#!/usr/bin/env bash
# The llama.cpp tier of the GGUF export tests (tests/export/test_llama_cpp.py): llama.cpp itself runs
# the exported files and its greedy generation must equal transformers'.
#
# llama-cpp-python has no binary wheel for this platform, so it is built from source (about 30 minutes
# on 2 cores) into its own virtual environment, .venv-llamacpp -- never into the project's .venv.
# Only llama_cpp (and its small pure-Python dependency diskcache) is installed there; the tests run
# with the project's .venv, which finds llama_cpp through PYTHONPATH.
#
#   scripts/llama_cpp_tier.sh            build once (skipped when .venv-llamacpp already imports it), run
#   LLAMA_CPP_REBUILD=1 scripts/llama_cpp_tier.sh     rebuild first
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV="$ROOT/.venv-llamacpp"
MAIN_PY="$ROOT/.venv/bin/python"
[ -x "$MAIN_PY" ] || { echo "no project .venv at $ROOT/.venv" >&2; exit 2; }

if [ "${LLAMA_CPP_REBUILD:-0}" = 1 ]; then rm -rf "$VENV"; fi
llama_cpp_path() {  # llama_cpp's folders in .venv-llamacpp, for the project's python (llama_cpp needs numpy, which only .venv has)
    "$VENV/bin/python" -c "import sysconfig; p = sysconfig.get_paths(); print(p['purelib'] + ':' + p['platlib'])"
}
if ! { [ -x "$VENV/bin/python" ] && PYTHONPATH="$(llama_cpp_path)" "$MAIN_PY" -c "import llama_cpp" 2>/dev/null; }; then
    command -v cmake >/dev/null || echo "note: cmake not on PATH; pip brings its own through the build requirements" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --upgrade pip >/dev/null
    echo "building llama-cpp-python from source into $VENV (about 30 minutes on 2 cores)..." >&2
    CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON}" MAKEFLAGS="-j$(nproc)" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
        "$VENV/bin/pip" install --no-binary llama-cpp-python --no-deps llama-cpp-python diskcache
fi
export PYTHONPATH="$(llama_cpp_path)${PYTHONPATH:+:$PYTHONPATH}"
"$MAIN_PY" -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__)"
exec "$MAIN_PY" -m pytest -q --run-slow tests/export/test_llama_cpp.py "$@"
