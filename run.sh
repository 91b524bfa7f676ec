#!/usr/bin/env bash
# Set up commlib (own virtual environment, torch first, the project, the
# offline default models and text) and run one job:
#   bash run.sh demo   # the main job on the offline default
#   bash run.sh test   # lint, type check and the test suite
# Re-running skips set-up steps that are already done.
set -euo pipefail
cd "$(dirname "$0")"

job="${1:-demo}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${COMMLIB_TORCH:-torch==2.13.0}"  # the CPU wheel on this machine kind
VENV=.venv
PIP=(-m pip --disable-pip-version-check -q)

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "[setup] installing $TORCH_SPEC (first, so nothing pulls a CUDA build)"
    "$PY" "${PIP[@]}" install --upgrade pip
    "$PY" "${PIP[@]}" install "$TORCH_SPEC"
fi
stamp="$VENV/.commlib-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "[setup] installing commlib and its dependencies"
    "$PY" "${PIP[@]}" install -e ".[dev]"
    touch "$stamp"
fi
echo "[setup] fetching the offline default (SmolLM2-135M, LAMBADA sentences)"
"$VENV/bin/commlib" fetch smollm2-135m lambada

if [ "$job" = test ] && ! command -v chromium >/dev/null 2>&1; then
    # The browser test drives Debian's Chromium (Playwright cannot download its own browser here).
    echo "[setup] installing Debian chromium for the browser test"
    sudo_=""; [ "$(id -u)" = 0 ] || sudo_="sudo -n"
    if ! { $sudo_ apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq chromium; } \
        >/tmp/commlib-apt.log 2>&1; then
        echo "[setup] could not install chromium (see /tmp/commlib-apt.log): the browser test will skip"
    fi
fi

case "$job" in
    demo)
        "$VENV/bin/commlib" demo
        ;;
    test)
        "$VENV/bin/ruff" check commlib tests benchmarks
        "$VENV/bin/ruff" format --check commlib tests benchmarks notebooks
        "$VENV/bin/mypy"
        "$VENV/bin/pytest"
        ;;
    *)
        echo "usage: bash run.sh {demo|test}" >&2
        exit 2
        ;;
esac
