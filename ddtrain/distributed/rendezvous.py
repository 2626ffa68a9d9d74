"""Where a rank runs and how the ranks find each other: device, CPU threads, rank 0's address, the TCP store.

mpi_master() picks rank 0's address under MPI (mpi4py carries every rank's hostname and addresses
to rank 0, which advertises the interface the other hosts reach: ddtrain.distributed.network);
connect() meets the ranks at rank 0's TCP store and works out each rank's interface for gloo.
The ddp engine builds its process group on that store.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass

import torch

from ddtrain.distributed import network
from ddtrain.distributed.env import DistEnv
from ddtrain.errors import Unreachable, UserError


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


def whoami() -> tuple[str, list[str]]:
    """(hostname, IPv4 addresses) of this rank: what rank 0 needs to tell which ranks are on other hosts."""
    return socket.gethostname(), [f.addr for f in network.interfaces()]


def remote(everyone: list, me: tuple[str, list[str]]) -> list[list[str]]:
    """The addresses of each rank that is not on this host (same hostname and same addresses: same host)."""
    key = (me[0], sorted(me[1]))
    return [list(addrs) for host, addrs in everyone if (host, sorted(addrs)) != key]


@dataclass
class Master:
    """Where the ranks meet: rank 0's address and port, how it was chosen, and rank 0's interface choice."""

    addr: str
    port: int
    how: str  # for the log line and error messages, e.g. "MASTER_ADDR" or "rank 0's eth0, chosen because ..."
    choice: network.Choice | None = None  # rank 0 only, when it chose the address itself


def env_master(env: DistEnv) -> Master:
    """The launcher's rendezvous point (torchrun, SLURM, or MASTER_ADDR/MASTER_PORT exported by the user)."""
    how = "MASTER_ADDR" if os.environ.get("MASTER_ADDR") else f"the first host of the {env.launcher} job"
    return Master(env.master_addr, env.master_port, how)


def mpi_master(env: DistEnv, interface: str = "", backend: str = "gloo") -> Master:
    """Under MPI: rank 0 picks a routable address and a free port and broadcasts them with mpi4py.

    Every rank first sends rank 0 its hostname and addresses, so rank 0 advertises an address on
    the network the other hosts share (never loopback when the job spans hosts; network.for_rank0).
    """
    comm = mpi_world(env, "a torch process group started by mpirun without MASTER_ADDR/MASTER_PORT")
    me = whoami()
    everyone = comm.gather(me, root=0)  # distributed: rank 0 learns where every rank runs
    choice, answer = None, None
    if comm.Get_rank() == 0:
        addr, how = os.environ.get("MASTER_ADDR"), "MASTER_ADDR"
        if not addr:
            choice = network.for_rank0(network.interfaces(), remote(everyone, me),
                                       network.hints(os.environ, interface, backend), me[0])
            addr, how = choice.interface.addr, f"rank 0's {choice.interface.name}, chosen because {choice.reason}"
        answer = (addr, int(os.environ.get("MASTER_PORT") or free_port()), how)
    addr, port, how = comm.bcast(answer, root=0)
    return Master(addr, port, how, choice)


def _publish(store, rank: int) -> None:
    store.set(f"ddtrain/host/{rank}", json.dumps(whoami()))


def _gather(store, world_size: int) -> list:
    return [json.loads(store.get(f"ddtrain/host/{r}")) for r in range(1, world_size)]


def connect(env: DistEnv, master: Master, timeout_s: float, interface: str = "", backend: str = "gloo"):
    """Meet the other ranks at rank 0's TCP store; returns (store, this rank's interface choice, a log line).

    The store carries the hostnames and addresses rank 0 needs when the rendezvous address alone does
    not tell it which of its interfaces the other hosts reach (e.g. MASTER_ADDR is a hostname that
    resolves to 127.0.1.1 on rank 0's own host). An unreachable rendezvous raises Unreachable with
    what to set.
    """
    from datetime import timedelta

    import torch.distributed as tdist

    given, own, host = network.hints(os.environ, interface, backend), network.interfaces(), socket.gethostname()
    addr, port, how, chosen = master.addr, master.port, master.how, master.choice
    try:
        store, _, _ = next(tdist.rendezvous(f"tcp://{addr}:{port}", env.rank, env.world_size,
                                            timeout=timedelta(seconds=timeout_s)))
    except Exception as exc:  # noqa: BLE001 - the store's errors differ by side and version
        raise Unreachable(unreachable(env.rank, addr, port, how, timeout_s, exc)) from exc
    # torchrun's agent keeps one store across the restarts of a job: keys of an earlier attempt (gloo's
    # addresses and ports) would be read as this one's, so each attempt gets its own prefix
    store = tdist.PrefixStore(f"ddtrain/attempt{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
    if env.rank:
        _publish(store, env.rank)
        choice = network.for_rank(own, network.resolve(addr) or addr, given, host)
        if choice is None:
            raise Unreachable(f"no route from host {host} to the rendezvous address {addr} ({how}); "
                              f"{HOW_TO_SET}")
        return store, choice, (f"rendezvous at {addr}:{port} ({how}); this rank's interface {choice.interface} "
                               f"({choice.reason})")
    if chosen is None:
        chosen = network.from_hints(given, own, host)
    if chosen is None:
        carrier = network.by_address(network.resolve(addr), own)
        if carrier is not None and not carrier.loopback:
            chosen = network.Choice(carrier, f"it carries the rendezvous address {addr}")
        else:  # e.g. a hostname that maps to 127.0.1.1 here: ask where the others are
            chosen = network.for_rank0(own, remote(_gather(store, env.world_size), whoami()), [], host)
    mine = "" if chosen is master.choice else f"; rank 0's interface {chosen.interface} ({chosen.reason})"
    return store, chosen, f"rendezvous at {addr}:{port} ({how}){mine}"


HOW_TO_SET = ("set dist.interface=<the interface or subnet the hosts share, e.g. eth0 or 10.0.0.0/24> "
              "(or GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME), or export MASTER_ADDR=<an address of rank 0's "
              "host that the others reach>")


def unreachable(rank: int, addr: str, port: int, how: str, timeout_s: float, exc: BaseException) -> str:
    """The one line for a rendezvous that failed: what happened, that the address may be wrong, how to set it."""
    from ddtrain.distributed.failure import one_line

    if rank == 0:
        what = f"the other ranks did not all reach the rendezvous at {addr}:{port} within dist.timeout_s"
    else:
        what = f"cannot reach the rendezvous at {addr}:{port} within dist.timeout_s"
    return (f"{what} ({timeout_s:g} s): {one_line(exc)}. The advertised address {addr} ({how}) may be wrong "
            f"for the other hosts, or a rank did not start: {HOW_TO_SET}")
