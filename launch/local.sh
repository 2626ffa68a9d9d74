#!/usr/bin/env bash
# One node: one rank per GPU (counted with nvidia-smi -L), else N CPU ranks (default 2).
#
# Usage: launch/local.sh [-n RANKS] [--via auto|mpirun|torchrun] [--sweep] [--dry-run] [--] [override ...]
#   -n RANKS    processes to start (default: the GPUs of this node, or 2 CPU ranks without a GPU)
#   --via       launcher for ddtrain-launch (default auto: mpirun when installed, else torchrun)
#   --sweep     run ddtrain-sweep instead of ddtrain-train
#   --dry-run   print the launcher's command only
# Everything else is passed to the program as Hydra overrides, e.g.
#   launch/local.sh model=mlp train.epochs=5
#   launch/local.sh -n 4 --sweep 'sweep.batch_sizes=[64,256,1024]'
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${DDTRAIN_VENV:-$root/.venv}
[ -d "$venv/bin" ] && export PATH="$venv/bin:$PATH"   # the venv's tools, no activation needed

value() { [ -n "${2:-}" ] || { echo "local.sh: error: $1 needs a value (see --help)" >&2; exit 2; }; }
ranks="" via=auto program=ddtrain-train dry=()
while [ $# -gt 0 ]; do
    case $1 in
        -n) value "$@"; ranks=$2; shift 2 ;;
        --via) value "$@"; via=$2; shift 2 ;;
        --sweep) program=ddtrain-sweep; shift ;;
        --dry-run) dry=(--dry-run); shift ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        --) shift; break ;;
        *) break ;;
    esac
done
if [ -z "$ranks" ]; then
    gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
    ranks=$(( gpus > 0 ? gpus : 2 ))
fi
command -v ddtrain-launch >/dev/null || { echo "local.sh: error: ddtrain-launch not found; run launch/setup.sh" >&2; exit 1; }
exec ddtrain-launch -n "$ranks" --via "$via" "${dry[@]}" -- "$(command -v "$program" || echo "$program")" "$@"
