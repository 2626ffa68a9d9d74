#!/usr/bin/env bash
# One-time set-up of a development environment in .venv (idempotent; re-running is fast).
#
# PyTorch, when the venv has none:
#   - DDTRAIN_TORCH_SPEC="<pip arguments>": exactly those, e.g. docker/Dockerfile's CUDA build;
#   - an NVIDIA GPU (`nvidia-smi -L` lists one): pip's default index (on Linux, PyPI's CUDA build);
#   - no GPU: the CPU build from PyTorch's CPU index ($DDTRAIN_TORCH_CPU_INDEX, default below; a
#     10 s timeout and no retries, so an unreachable index costs seconds), else a torch wheel that
#     pip's find-links already offer on local disk, else pip's default index (on Linux x86_64 that
#     is the CUDA build, several GB; it runs on CPUs too).
# One line says which build was installed and why. Then ddtrain itself, editable, with the extras in
# $DDTRAIN_EXTRAS (default "mpi,test,export": Open MPI and mpi4py from PyPI, pytest, onnx + onnxruntime).
# Usage: launch/setup.sh   (DDTRAIN_VENV: the venv folder, default .venv; PYTHON: the interpreter
# that creates it, default python3)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${DDTRAIN_VENV:-.venv}
PY=${PYTHON:-python3}
TORCH_REQ="torch>=2.5"   # as pyproject.toml declares
CPU_INDEX=${DDTRAIN_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
EXTRAS=${DDTRAIN_EXTRAS:-mpi,test,export}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip -q --disable-pip-version-check "$@"; }
say() { echo "setup: $*"; }

# "2.13.0+cpu, the CPU build" or "2.14.1+cu130, the CUDA 13.0 build"
torch_build() {
    "$VENV/bin/python" -W ignore -c 'import torch
cuda = torch.version.cuda
print(torch.__version__ + (", the CUDA %s build" % cuda if cuda else ", the CPU build"))'
}

# pip, its output kept out of sight (a fallback follows a failure); on failure $pip_failed says why in
# a few words: the index that could not be fetched (pip logs that only with -vv), else pip's last error
try_pip() {
    local log
    log=$(mktemp)
    if "$VENV/bin/python" -m pip -vv --disable-pip-version-check "$@" >"$log" 2>&1; then
        rm -f "$log"
        return 0
    fi
    local fetch detail
    fetch=$(grep -o 'Could not fetch URL [^ ]*: [^:]*' "$log" | head -n 1 || true)
    detail=$(grep -o -E "\[Errno [^]]*\] [^'\")]*|timed out" "$log" | head -n 1 || true)
    if [ -n "$fetch" ]; then
        pip_failed="${fetch#Could not fetch URL }${detail:+ ($detail)}"
    else
        pip_failed=$(grep '^ERROR:' "$log" | tail -n 1)
    fi
    rm -f "$log"
    return 1
}

# no GPU: the CPU build, from the first source that has one; sets $why
install_torch_without_gpu() {
    # 1. PyTorch's CPU index alone: find-links and extra indexes from pip's configuration are replaced
    #    (pip ignores empty values, so by an empty folder and the CPU index itself), else pip could
    #    take a CUDA build from them
    local empty
    empty=$(mktemp -d)
    if PIP_FIND_LINKS="$empty" PIP_EXTRA_INDEX_URL="$CPU_INDEX" \
            try_pip install --timeout 10 --retries 0 --index-url "$CPU_INDEX" "$TORCH_REQ"; then
        rmdir "$empty"
        why="from PyTorch's CPU index ($CPU_INDEX): no NVIDIA GPU here"
        return
    fi
    rmdir "$empty"
    # 2. a wheel that pip's find-links offer on local disk (torch alone; its dependencies from the indexes)
    say "PyTorch's CPU index gave no torch ($pip_failed); trying a local wheel pip knows about"
    if try_pip install --no-index --no-deps "$TORCH_REQ"; then
        pip install "$TORCH_REQ"
        why="from a local wheel in pip's find-links: no NVIDIA GPU here, PyTorch's CPU index gave no torch"
        return
    fi
    # 3. pip's default index
    say "no local torch wheel either; installing torch from pip's default index (on Linux x86_64 the CUDA build, several GB)"
    pip install "$TORCH_REQ"
    why="from pip's default index: no NVIDIA GPU here, but neither PyTorch's CPU index nor a local wheel gave torch"
    why+=" (DDTRAIN_TORCH_CPU_INDEX or DDTRAIN_TORCH_SPEC choose another source)"
}

if "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    say "torch $(torch_build), is already installed in $VENV"
else
    if [ -n "${DDTRAIN_TORCH_SPEC:-}" ]; then
        # pip arguments chosen by the caller, e.g. a CUDA build in a docker build (no GPU visible there)
        read -r -a spec <<< "$DDTRAIN_TORCH_SPEC"
        pip install "${spec[@]}"
        why="as DDTRAIN_TORCH_SPEC asked ($DDTRAIN_TORCH_SPEC)"
    elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep '^GPU' >/dev/null; then
        pip install "$TORCH_REQ"
        why="from pip's default index: an NVIDIA GPU is present"
    else
        install_torch_without_gpu
    fi
    say "installed torch $(torch_build), $why"
fi
pip install -e ".[$EXTRAS]"
echo "ddtrain set up in $VENV ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
