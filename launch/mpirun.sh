#!/usr/bin/env bash
# Several nodes with Open MPI: N nodes (the hosts of a host file) x G ranks per node (one per GPU).
#
# Usage: launch/mpirun.sh --hostfile FILE [-g PER_NODE] [--sweep] [--dry-run] [--] [override ...]
#   --hostfile  Open MPI host file, one node a line: "node01 slots=8"
#   -g          ranks per node (default: the GPUs of this node from nvidia-smi -L; without a GPU,
#               each line's slots=, or 2 CPU ranks for a line without slots=)
#   --sweep     run ddtrain-sweep instead of ddtrain-train
#   --dry-run   print the mpirun command only
# Everything else is passed to the program as Hydra overrides, e.g.
#   launch/mpirun.sh --hostfile hosts train.global_batch_size=1024 hydra.run.dir=/shared/runs/r1
# Every node needs the same paths (a shared file system or the same image): the program is started by its
# absolute path, and hydra.run.dir should be on a shared file system (rank 0 writes, every rank resumes).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${DDTRAIN_VENV:-$root/.venv}
[ -d "$venv/bin" ] && export PATH="$venv/bin:$PATH"   # the venv's tools, no activation needed

value() { [ -n "${2:-}" ] || { echo "mpirun.sh: error: $1 needs a value (see --help)" >&2; exit 2; }; }
hostfile="" per_node="" program=ddtrain-train dry=()
while [ $# -gt 0 ]; do
    case $1 in
        --hostfile) value "$@"; hostfile=$2; shift 2 ;;
        -g) value "$@"; per_node=$2; shift 2 ;;
        --sweep) program=ddtrain-sweep; shift ;;
        --dry-run) dry=(--dry-run); shift ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        --) shift; break ;;
        *) break ;;
    esac
done
[ -n "$hostfile" ] || { echo "mpirun.sh: error: --hostfile FILE is required (one node a line: 'node01 slots=8')" >&2; exit 2; }
[ -r "$hostfile" ] || { echo "mpirun.sh: error: host file $hostfile not found" >&2; exit 2; }
if [ -z "$per_node" ]; then
    gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
    [ "$gpus" -gt 0 ] && per_node=$gpus
fi

# the host file mpirun gets: each host with its ranks as slots=, so --map-by slot fills every node exactly
hosts=$(mktemp)
trap 'rm -f "$hosts"' EXIT
sed 's/#.*//' "$hostfile" | awk -v g="$per_node" 'NF { n = 2; for (i = 2; i <= NF; i++) if ($i ~ /^slots=/) n = substr($i, 7)
                                                      print $1, "slots=" (g != "" ? g : n) }' > "$hosts"
[ -s "$hosts" ] || { echo "mpirun.sh: error: no hosts in $hostfile" >&2; exit 2; }
ranks=$(awk '{ s += substr($2, 7) } END { print s }' "$hosts")
echo "mpirun.sh: $(wc -l < "$hosts") node(s) x ranks: $(paste -sd, "$hosts")"

command -v ddtrain-launch >/dev/null || { echo "mpirun.sh: error: ddtrain-launch not found; run launch/setup.sh" >&2; exit 1; }
ddtrain-launch -n "$ranks" --hostfile "$hosts" --via mpirun "${dry[@]}" \
    -- "$(command -v "$program" || echo "$program")" "$@"
