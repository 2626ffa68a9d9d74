"""Where a rank runs and how the ranks find each other: device choice, CPU threads, rank 0's address under MPI.

Nothing here connects the ranks; the engines (ddtrain.distributed.engines) do, with what this
module works out.
"""

from __future__ import annotations

import os
import socket

import torch

from ddtrain.distributed.env import DistEnv
from ddtrain.errors import UserError


def pick_device(env: DistEnv) -> torch.device:
    """cuda:<local rank> when CUDA is present (device 0 when each rank sees a single GPU), else CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    count = torch.cuda.device_count()
    index = 0 if count == 1 else env.local_rank
    if index >= count:
        raise UserError(f"local rank {env.local_rank} has no GPU: only {count} visible "
                        f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); "
                        "start at most one rank per GPU per node")
    return torch.device("cuda", index)


def limit_cpu_threads(env: DistEnv) -> int:
    """Give each rank on a node its share of the cores for intra-op parallelism (unless OMP_NUM_THREADS is set)."""
    if "OMP_NUM_THREADS" in os.environ:
        return torch.get_num_threads()
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    # a launcher that binds each rank already gave it its share; otherwise divide the node
    share = allowed if allowed < (os.cpu_count() or allowed) else allowed // max(1, env.local_world_size)
    threads = max(1, share)
    torch.set_num_threads(threads)
    return threads


def place(env: DistEnv) -> torch.device:
    """This rank's device, made current (CUDA), or its share of the CPU threads."""
    device = pick_device(env)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        limit_cpu_threads(env)
    return device


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def own_address() -> str:
    """This host's address as its hostname resolves (127.0.0.1 when it does not)."""
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def mpi_world(env: DistEnv, purpose: str):
    """mpi4py's COMM_WORLD, checked against the launcher's world size (a wrong PMI gives N worlds of one)."""
    from ddtrain.distributed.engines import require

    require("mpi4py", purpose)
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    if comm.Get_size() != env.world_size:
        hint = ("with srun use --mpi=pmix for Open MPI (pmi2 for MPICH)" if env.launcher == "slurm"
                else "start the job with mpirun (or srun --mpi=pmix)" if comm.Get_size() == 1
                else "check that mpi4py uses the MPI library of this launcher")
        raise UserError(f"MPI reports {comm.Get_size()} rank(s) but the launcher ({env.launcher}) says "
                        f"{env.world_size}: {hint}")
    return comm


def mpi_master(env: DistEnv) -> tuple[str, int]:
    """Under MPI, rank 0 picks its address and a free port and broadcasts them with mpi4py."""
    comm = mpi_world(env, "a torch process group started by mpirun without MASTER_ADDR/MASTER_PORT")
    choice = None
    if comm.Get_rank() == 0:
        addr = os.environ.get("MASTER_ADDR") or own_address()
        port = int(os.environ.get("MASTER_PORT") or free_port())
        choice = (addr, port)
    return comm.bcast(choice, root=0)
