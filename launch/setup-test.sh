#!/usr/bin/env bash
# What the test suite needs beyond launch/setup.sh (idempotent; fast when done):
#   - Debian's SLURM (slurmctld, slurmd, srun/sbatch), PMIx for `srun --mpi=pmix`, iproute2 for the
#     two-host tests in network namespaces; installed with apt-get when missing (needs root);
#   - Horovod, built once by launch/install-horovod.sh and then installed from its cached wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v slurmctld >/dev/null || need+=(slurmctld)
command -v slurmd >/dev/null || need+=(slurmd)
command -v srun >/dev/null || need+=(slurm-client)
command -v ip >/dev/null || need+=(iproute2)
command -v nsenter >/dev/null || need+=(util-linux)
ls /usr/lib/x86_64-linux-gnu/libpmix.so.2* /usr/lib/*/libpmix.so.2* >/dev/null 2>&1 || need+=(libpmix2)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "setup-test: missing ${need[*]}; install them as root: apt-get install ${need[*]}" >&2
        exit 1
    fi
    echo "setup-test: apt-get install ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" munge >/dev/null
fi
VENV=${DDTRAIN_VENV:-.venv}
"$VENV/bin/python" -c "import horovod.torch" 2>/dev/null || bash launch/install-horovod.sh "$VENV/bin/python"
