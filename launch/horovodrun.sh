#!/usr/bin/env bash
# Horovod's own launcher with its Gloo controller: horovodrun -np N -H localhost:N --gloo (or --hostfile).
#
# Usage: launch/horovodrun.sh [-n RANKS] [--hostfile FILE] [--sweep] [--dry-run] [--] [override ...]
#   -n RANKS    processes in all (default: the host file's slots; else this node's GPUs, or 2 CPU ranks)
#   --hostfile  host file, one node a line: "node01 slots=8" (default: this node only)
#   --sweep     run ddtrain-sweep instead of ddtrain-train
#   --dry-run   print the horovodrun command only
# Everything else is passed to the program as Hydra overrides, e.g.
#   launch/horovodrun.sh model=mlp train.epochs=5
# The engine is dist.engine=horovod unless an override names another (dist.engine=ddp under horovodrun
# also needs MASTER_ADDR and MASTER_PORT exported: rank 0's host and a free port).
# Why --gloo: `horovodrun --mpi` is broken with Open MPI 5 (it passes single-dash binding flags that
# mpirun 5 rejects). For Horovod over MPI start the ranks with plain mpirun (launch/mpirun.sh).
# Horovod itself: launch/install-horovod.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${DDTRAIN_VENV:-$root/.venv}
[ -d "$venv/bin" ] && export PATH="$venv/bin:$PATH"   # the venv's tools, no activation needed

value() { [ -n "${2:-}" ] || { echo "horovodrun.sh: error: $1 needs a value (see --help)" >&2; exit 2; }; }
ranks="" hostfile="" program=ddtrain-train dry=()
while [ $# -gt 0 ]; do
    case $1 in
        -n|-np) value "$@"; ranks=$2; shift 2 ;;
        --hostfile) value "$@"; hostfile=$2; shift 2 ;;
        --sweep) program=ddtrain-sweep; shift ;;
        --dry-run) dry=(--dry-run); shift ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        --) shift; break ;;
        *) break ;;
    esac
done
hosts=()
if [ -n "$hostfile" ]; then
    [ -r "$hostfile" ] || { echo "horovodrun.sh: error: host file $hostfile not found" >&2; exit 2; }
    hosts=(--hostfile "$hostfile")
    # horovodrun's host file needs slots= on every line; the default rank count is their sum
    [ -n "$ranks" ] || ranks=$(sed 's/#.*//' "$hostfile" | grep -o 'slots=[0-9]*' | awk -F= '{ s += $2 } END { print s + 0 }')
fi
if [ -z "$ranks" ]; then
    gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
    ranks=$(( gpus > 0 ? gpus : 2 ))
fi
command -v ddtrain-launch >/dev/null || { echo "horovodrun.sh: error: ddtrain-launch not found; run launch/setup.sh" >&2; exit 1; }
if [ ${#dry[@]} -eq 0 ] && ! command -v horovodrun >/dev/null; then
    echo "horovodrun.sh: error: horovodrun not found; build Horovod with launch/install-horovod.sh" >&2
    exit 1
fi
engine=(dist.engine=horovod)
for arg in "$@"; do case $arg in *dist.engine=*) engine=() ;; esac; done
exec ddtrain-launch -n "$ranks" "${hosts[@]}" --via horovodrun "${dry[@]}" \
    -- "$(command -v "$program" || echo "$program")" "${engine[@]}" "$@"
