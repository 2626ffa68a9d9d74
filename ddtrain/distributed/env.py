"""Launcher detection: who started this process (torchrun, Open MPI, MPICH/Intel MPI, SLURM or nobody).

Everything here is a pure function of the mapping passed in (never os.environ directly) so
every launcher can be tested from a table of environments. Standard library only: this module
is imported before torch or mpi4py are loaded, and must not load them.

Rules, first match wins:

1. torchrun / torch elastic / plain ``env://``: RANK and WORLD_SIZE set.
2. Open MPI (mpirun/mpiexec): OMPI_COMM_WORLD_RANK set.
3. MPICH / Intel MPI (Hydra) or any PMI-1/2 launcher: PMI_RANK set -- except when the PMI vars
   were put there by Slurm's own PMI plugin in a plain ``srun`` step (see ``_is_slurm_own_pmi``).
4. horovodrun with its Gloo controller: HOROVOD_RANK and HOROVOD_SIZE set (rendezvous by Horovod).
5. SLURM ``srun`` step: SLURM_PROCID set and SLURM_STEP_ID (or SLURM_STEPID) set.
6. Otherwise a single process.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

from ddtrain.distributed.slurm import parse_slurm_nodelist, slurm_master_port
from ddtrain.errors import UserError

__all__ = ["DistEnv", "detect", "parse_slurm_nodelist", "slurm_master_port"]

LAUNCHERS = ("torchrun", "openmpi", "mpich", "horovodrun", "slurm", "single")

LOCALHOST = "127.0.0.1"
# torchrun's own default, so `RANK=0 WORLD_SIZE=1 python ...` behaves like torchrun does.
TORCH_DEFAULT_PORT = 29500



@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job: launcher, ranks, and the rendezvous address if known."""

    launcher: str
    """One of torchrun, openmpi, mpich (MPICH or Intel MPI, PMI_* vars), horovodrun (Gloo), slurm, single."""
    rank: int
    world_size: int
    local_rank: int
    """Rank among the processes of this node; picks the GPU."""
    local_world_size: int
    master_addr: str | None
    """Host of rank 0's TCP store; None = decided at rendezvous (MPI: rank 0 picks, broadcasts)."""
    master_port: int | None
    """None = decided at rendezvous (MPI) or not needed (single)."""
    node_rank: int = 0
    """Index of this node: torchrun GROUP_RANK, SLURM_NODEID; 0 where the launcher does not say (MPI)."""

    @property
    def is_mpi(self) -> bool:
        """True when an MPI launcher started the job (rendezvous can go through mpi4py)."""
        return self.launcher in ("openmpi", "mpich")


# ----------------------------------------------------------------------------- helpers


def _get(environ: Mapping[str, str], name: str) -> str | None:
    """The stripped value of name, or None when unset or empty (``export X=`` means unset)."""
    value = environ.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def _first(environ: Mapping[str, str], *names: str) -> tuple[str, str] | None:
    """(name, value) of the first of names that is set, or None."""
    for name in names:
        value = _get(environ, name)
        if value is not None:
            return name, value
    return None


def _to_int(name: str, value: str) -> int:
    """Parse value of variable name as an int, or raise UserError naming both."""
    try:
        return int(value)
    except ValueError:
        raise UserError(f"{name}={value!r} is not an integer") from None


def _int(environ: Mapping[str, str], name: str, default: int | None = None) -> int:
    """Integer value of name; default when unset, UserError when unset with no default."""
    value = _get(environ, name)
    if value is None:
        if default is None:
            raise UserError(f"{name} is not set but the launcher's other variables are")
        return default
    return _to_int(name, value)


def _port(environ: Mapping[str, str], default: int | None) -> int | None:
    """MASTER_PORT as a valid TCP port, or default when unset."""
    value = _get(environ, "MASTER_PORT")
    if value is None:
        return default
    port = _to_int("MASTER_PORT", value)
    if not 1 <= port <= 65535:
        raise UserError(f"MASTER_PORT={value!r} is not a TCP port (1-65535)")
    return port


def _check(
    launcher: str,
    names: tuple[str, str, str, str],
    rank: int,
    world_size: int,
    local_rank: int,
    local_world_size: int,
) -> None:
    """Raise UserError when the four numbers are inconsistent; names are the variables they came from."""
    rank_var, world_var, local_var, local_world_var = names
    if world_size < 1:
        raise UserError(f"{world_var}={world_size} must be at least 1 ({launcher} launch)")
    if not 0 <= rank < world_size:
        raise UserError(f"{rank_var}={rank} is not in [0, {world_var}={world_size}) ({launcher} launch)")
    if local_rank < 0:
        raise UserError(f"{local_var}={local_rank} must not be negative ({launcher} launch)")
    if local_world_size < 1:
        raise UserError(f"{local_world_var}={local_world_size} must be at least 1 ({launcher} launch)")
    if local_rank >= local_world_size:
        raise UserError(
            f"{local_var}={local_rank} is not in [0, {local_world_var}={local_world_size}) ({launcher} launch)"
        )


# ----------------------------------------------------------------------------- launchers


def _torchrun(environ: Mapping[str, str]) -> DistEnv:
    rank = _int(environ, "RANK")
    world_size = _int(environ, "WORLD_SIZE")
    if _get(environ, "LOCAL_RANK") is None:
        # Plain env:// user who did not say where the process sits on its node: treat it as
        # alone there (local 0 of 1, i.e. cuda:0 / its CUDA_VISIBLE_DEVICES) -- consistent,
        # unlike "local rank 0 of WORLD_SIZE" for every rank.
        local_rank, local_world_size = 0, 1
    else:
        local_rank = _int(environ, "LOCAL_RANK")
        # torchrun always sets LOCAL_WORLD_SIZE; a launcher that sets LOCAL_RANK alone is
        # assumed single-node (WORLD_SIZE is an upper bound that keeps LOCAL_RANK valid).
        local_world_size = _int(environ, "LOCAL_WORLD_SIZE", default=world_size)
    _check("torchrun", ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"),
           rank, world_size, local_rank, local_world_size)
    master_addr = _get(environ, "MASTER_ADDR")
    if master_addr is None:
        if world_size > 1:
            raise UserError(
                f"MASTER_ADDR is not set but WORLD_SIZE={world_size}: export MASTER_ADDR (rank 0's host)"
            )
        master_addr = LOCALHOST
    node_rank = _int(environ, "GROUP_RANK", default=0)
    if node_rank < 0:
        raise UserError(f"GROUP_RANK={node_rank} must not be negative")
    return DistEnv("torchrun", rank, world_size, local_rank, local_world_size,
                   master_addr, _port(environ, TORCH_DEFAULT_PORT), node_rank)


def _mpi(environ: Mapping[str, str], launcher: str, names: tuple[str, str, str, str]) -> DistEnv:
    rank_var, world_var, local_var, local_world_var = names
    rank = _int(environ, rank_var)
    world_size = _int(environ, world_var)
    # A PMI launcher without a local-rank variable: say local 0 of 1 rather than guess. With a
    # local rank but no local size, the smallest consistent size (local rank + 1).
    local_rank = _int(environ, local_var, default=0)
    local_world_size = _int(environ, local_world_var, default=local_rank + 1)
    _check(launcher, names, rank, world_size, local_rank, local_world_size)
    # MPI launchers do not give a TCP rendezvous point: None unless the user exported one,
    # and then rank 0 picks and broadcasts it with mpi4py.
    return DistEnv(launcher, rank, world_size, local_rank, local_world_size,
                   _get(environ, "MASTER_ADDR"), _port(environ, None))


def _slurm_world_size(environ: Mapping[str, str]) -> tuple[str, int]:
    # The step's task count, not the allocation's: `srun -n 2` inside `sbatch -n 8` runs 2.
    found = _first(environ, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS")
    if found is None:
        raise UserError("SLURM_STEP_NUM_TASKS and SLURM_NTASKS are not set inside a SLURM job step")
    name, value = found
    return name, _to_int(name, value)


def _tasks_on_node(name: str, value: str, node_id: int | None) -> int:
    """Task count of node node_id (first node when None) from a SLURM form like "2(x3),1"."""
    counts: list[int] = []
    for part in value.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:\(x(\d+)\))?\s*", part)
        if not m:
            raise UserError(f"{name}={value!r} is not a SLURM tasks-per-node list like '2(x3),1'")
        counts.extend([int(m.group(1))] * int(m.group(2) or 1))
    index = 0 if node_id is None else node_id
    if index >= len(counts):
        raise UserError(f"SLURM_NODEID={node_id} is past the {len(counts)} nodes of {name}={value!r}")
    return counts[index]


def _slurm(environ: Mapping[str, str]) -> DistEnv:
    rank = _int(environ, "SLURM_PROCID")
    world_var, world_size = _slurm_world_size(environ)
    local_rank = _int(environ, "SLURM_LOCALID", default=0)
    node_id = _int(environ, "SLURM_NODEID") if _get(environ, "SLURM_NODEID") is not None else None
    if node_id is not None and node_id < 0:
        raise UserError(f"SLURM_NODEID={node_id} must not be negative")
    per_node = _first(environ, "SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE")
    if per_node is not None:
        local_world_var = per_node[0]
        local_world_size = _tasks_on_node(per_node[0], per_node[1], node_id)
    else:
        # srun always sets these; without them the smallest consistent value.
        local_world_var = "SLURM_STEP_TASKS_PER_NODE"
        local_world_size = local_rank + 1
    _check("slurm", ("SLURM_PROCID", world_var, "SLURM_LOCALID", local_world_var),
           rank, world_size, local_rank, local_world_size)

    master_addr = _get(environ, "MASTER_ADDR")
    if master_addr is None:
        nodelist = _first(environ, "SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
        hosts = parse_slurm_nodelist(nodelist[1]) if nodelist else []
        if hosts:
            # The step's first node runs rank 0 under SLURM's block distribution (the default);
            # with another --distribution, export MASTER_ADDR.
            master_addr = hosts[0]
        elif world_size == 1:
            master_addr = LOCALHOST
        else:
            raise UserError("SLURM_STEP_NODELIST and SLURM_JOB_NODELIST are not set: export MASTER_ADDR")

    master_port = _port(environ, None)
    if master_port is None:
        job = _first(environ, "SLURM_JOB_ID", "SLURM_JOBID")
        if job is None:
            raise UserError("SLURM_JOB_ID is not set inside a SLURM job step: export MASTER_PORT")
        master_port = slurm_master_port(job[1])
    return DistEnv("slurm", rank, world_size, local_rank, local_world_size,
                   master_addr, master_port, node_id or 0)


def _in_slurm_step(environ: Mapping[str, str]) -> bool:
    # In an sbatch script outside srun SLURM_PROCID=0 and SLURM_NTASKS=N are set too, but
    # only one process runs: the step id is what tells an srun task apart.
    return _get(environ, "SLURM_PROCID") is not None and (
        _get(environ, "SLURM_STEP_ID") is not None or _get(environ, "SLURM_STEPID") is not None
    )


def _is_slurm_own_pmi(environ: Mapping[str, str]) -> bool:
    """True when PMI_RANK/PMI_SIZE come from Slurm's PMI plugin in a plain srun step.

    With MpiDefault=pmi2 (or srun --mpi=pmi2) slurmstepd sets PMI_RANK=SLURM_PROCID and
    PMI_SIZE=task count in every task of a plain `srun python ...`, which is no MPI launch and
    may have no mpi4py. Hydra's mpiexec (MPICH, Intel MPI) sets MPI_LOCALRANKID, and when it
    runs inside an allocation its ranks inherit the SLURM_PROCID of the per-node proxy, which
    differs from PMI_RANK -- so those stay "mpich".
    """
    if not _in_slurm_step(environ) or _get(environ, "MPI_LOCALRANKID") is not None:
        return False
    world = _first(environ, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS")
    return (
        world is not None
        and _get(environ, "PMI_RANK") == _get(environ, "SLURM_PROCID")
        and _get(environ, "PMI_SIZE") == world[1]
    )


# ----------------------------------------------------------------------------- public API


def detect(environ: Mapping[str, str]) -> DistEnv:
    """Work out launcher, ranks and rendezvous address from environ (pass os.environ); UserError if malformed."""
    # Order matters: `srun torchrun` and `mpirun` inside an allocation also carry SLURM_*
    # variables, which describe the outer launcher (one task per node), not this process.
    if _get(environ, "RANK") is not None and _get(environ, "WORLD_SIZE") is not None:
        return _torchrun(environ)
    if _get(environ, "OMPI_COMM_WORLD_RANK") is not None:
        return _mpi(environ, "openmpi", ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
                                         "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"))
    if _get(environ, "PMI_RANK") is not None and not _is_slurm_own_pmi(environ):
        return _mpi(environ, "mpich", ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"))
    if _get(environ, "HOROVOD_RANK") is not None and _get(environ, "HOROVOD_SIZE") is not None:
        names = ("HOROVOD_RANK", "HOROVOD_SIZE", "HOROVOD_LOCAL_RANK", "HOROVOD_LOCAL_SIZE")
        found = _mpi(environ, "horovodrun", names)
        return DistEnv("horovodrun", found.rank, found.world_size, found.local_rank, found.local_world_size,
                       found.master_addr, found.master_port, _int(environ, "HOROVOD_CROSS_RANK", default=0))
    if _in_slurm_step(environ):
        return _slurm(environ)
    return DistEnv("single", 0, 1, 0, 1, LOCALHOST, None)
