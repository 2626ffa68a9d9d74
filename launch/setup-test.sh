#!/usr/bin/env bash
# What the test suite needs beyond launch/setup.sh (idempotent; fast when done):
#   - Debian's SLURM (slurmctld, slurmd, srun/sbatch), PMIx for `srun --mpi=pmix`, iproute2 for the
#     two-host tests in network namespaces (libpmix-dev: srun loads the unversioned libpmix.so); installed with apt-get when missing (needs root);
#   - Horovod, built once by launch/install-horovod.sh and then installed from its cached wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"   # the daemons live in sbin, which PATH may lack
need=()
command -v slurmctld >/dev/null || need+=(slurmctld)
command -v slurmd >/dev/null || need+=(slurmd)
command -v srun >/dev/null || need+=(slurm-client)
command -v ip >/dev/null || need+=(iproute2)
command -v nsenter >/dev/null || need+=(util-linux)
# Debian's SLURM pmix plugin loads the unversioned libpmix.so, which only libpmix-dev provides
ls /usr/lib/*/pmix2/lib/libpmix.so /usr/lib/*/libpmix.so >/dev/null 2>&1 || need+=(libpmix2 libpmix-dev)
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
