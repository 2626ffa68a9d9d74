#!/usr/bin/env bash
# One-time set-up of a development environment in .venv (idempotent; re-running is fast).
# Installs PyTorch's CPU build first when no NVIDIA GPU is present, so pip does not pull a CUDA build.
# DDTRAIN_TORCH_SPEC="<pip arguments>" overrides that choice, e.g. docker/Dockerfile's CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${DDTRAIN_VENV:-.venv}
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip -q --disable-pip-version-check "$@"; }
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    if [ -n "${DDTRAIN_TORCH_SPEC:-}" ]; then
        # pip arguments chosen by the caller, e.g. a CUDA build in a docker build (no GPU visible there)
        read -r -a spec <<< "$DDTRAIN_TORCH_SPEC"
        pip install "${spec[@]}"
    elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        pip install "torch>=2.2,<2.15"
    else
        # the CPU wheel; on this project's machines it comes from local disk in seconds
        pip install "torch==2.13.0" || pip install "torch>=2.2,<2.15" --index-url https://download.pytorch.org/whl/cpu
    fi
fi
pip install -e ".[mpi,test,export]"
echo "ddtrain set up in $VENV ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
