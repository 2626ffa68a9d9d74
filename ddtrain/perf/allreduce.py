"""ddtrain-bench allreduce: allreduce time and bandwidth per message size and library, like nccl-tests.

    mpirun -np N ddtrain-bench allreduce [--min-bytes 4] [--max-bytes 256M] [--factor 2] [--iters 20]
                                         [--warmup 5] [--libraries gloo,nccl,mpi,horovod] [--json F]
    torchrun --nproc-per-node N --no-python ddtrain-bench allreduce ...     (gloo and nccl only)

The communication libraries are reached through the training engines' own collectives
(ddtrain.distributed.engines): gloo and nccl through the ddp engine's torch process groups, mpi
through the mpi engine's mpi4py world, horovod through the horovod engine.

For every message size (float32, in place, op SUM): a barrier, `warmup` untimed allreduces, then
`iters` timed back to back; the reported time is the max over ranks of each rank's mean time per
allreduce (nccl-tests' convention). algbw = bytes / time; busbw = algbw * 2(n-1)/n, the bytes each
rank's link carries in a ring allreduce, comparable across world sizes. Each size's result is
checked once against the known sum over ranks. Beside the libraries, a tensor copy_ of --memcpy-bytes
(best of several) gives the local memory ceiling; busbw at --ref-bytes (default 64 MiB) is printed
as a fraction of it.

No library divides by the world size: every one does a plain SUM (nccl-tests' default), so
averaging (one scale per element, the same for all libraries) is not part of the figures.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from ddtrain.errors import UserError
from ddtrain.perf.bandwidth import (DTYPE_BYTES, algorithm_bandwidth, bus_bandwidth, format_table, message_sizes,
                                    parse_bytes, reference_size, summarise)

LIBRARIES = ("gloo", "nccl", "mpi", "horovod")


def parse_libraries(text: str) -> list[str]:
    """'gloo,mpi' -> ['gloo', 'mpi']; unknown names are a UserError."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in LIBRARIES]
    if bad or not names:
        raise UserError(f"--libraries={text} names {', '.join(bad) or 'nothing'}; "
                        f"choose from {','.join(LIBRARIES)}")
    return list(dict.fromkeys(names))


# ----------------------------------------------------------------------------- libraries


@dataclass
class Library:
    """One library as the bench uses it: the engine whose collectives carry it, and the device of its tensors."""

    name: str
    engine: object  # a started ddtrain.distributed.engines.Engine
    device: object  # torch.device

    def allreduce(self, t) -> None:
        """Sum t over ranks in place (named by size: Horovod's response cache then skips negotiation)."""
        self.engine.all_reduce_sum(t, name=f"bench.{t.numel()}")

    def barrier(self) -> None:
        """Wait for every rank."""
        self.engine.barrier()

    def sync(self) -> None:
        """Wait until queued device work is done (CUDA); nothing on CPU."""
        if self.device.type == "cuda":
            import torch
            torch.cuda.synchronize(self.device)


def availability(name: str, d) -> str | None:
    """None when library `name` can run in this job, else the reason it is skipped (same on every rank)."""
    import torch.distributed as tdist

    if name == "gloo":
        return None if tdist.is_gloo_available() else "torch was built without gloo"
    if name == "nccl":
        if d.device.type != "cuda":
            return "no CUDA device visible (nccl needs GPUs)"
        if not tdist.is_nccl_available():
            return "torch was built without NCCL"
        import socket

        import torch
        gpu = (socket.gethostname(), str(getattr(torch.cuda.get_device_properties(d.device), "uuid", d.device.index)))
        gpus = d.all_gather_object(gpu)  # every rank calls availability for the same names in order
        if len(set(gpus)) < len(gpus):
            return "ranks share a GPU (nccl needs one GPU per rank): start at most one rank per GPU"
        return None
    from ddtrain.distributed.engines import INSTALL_HINTS

    if name == "mpi":
        if not d.env.is_mpi:
            return (f"not started by an MPI launcher (launcher: {d.env.launcher}); "
                    "run under mpirun -np N for the mpi library")
        try:
            from mpi4py import MPI
        except ImportError:
            return f"mpi4py is not installed: {INSTALL_HINTS['mpi4py']}"
        if MPI.COMM_WORLD.Get_size() != d.world_size:
            return (f"MPI reports {MPI.COMM_WORLD.Get_size()} rank(s), the launcher {d.world_size}: "
                    "mpi4py uses another MPI library than this mpirun")
        return None
    if name == "horovod":
        try:
            import horovod.torch  # noqa: F401
        except ImportError as exc:
            if "horovod" not in str(exc):
                return f"horovod.torch does not load ({exc}): {INSTALL_HINTS['horovod']}"
            return f"horovod is not installed: {INSTALL_HINTS['horovod']}"
        if not d.env.is_mpi and "HOROVOD_RANK" not in os.environ:
            return f"not started by mpirun or horovodrun (launcher: {d.env.launcher})"
        return None
    raise UserError(f"unknown library {name}; choose from {','.join(LIBRARIES)}")


def open_library(name: str, engine, timeout_s: float) -> Library:
    """Library `name` (available in this job): over the job's ddp engine (gloo, nccl) or an engine of its own."""
    import torch

    from ddtrain.distributed import engines

    cpu = torch.device("cpu")
    if name in ("gloo", "nccl"):
        # the job's own group is gloo; nccl gets a group of its own over the same ranks
        return Library(name, engine.over(name), engine.device if name == "nccl" else cpu)
    other = engines.create(name, engine.env, engine.device, BENCH_DIST)
    other.start(timeout_s)
    gpu = name == "horovod" and engine.device.type == "cuda" and other.hvd.nccl_built()
    return Library(name, other, engine.device if gpu else cpu)


@dataclass(frozen=True)
class _BenchDist:
    """The dist settings the bench's engines are created with: plain SUMs, no compression."""

    backend: str = "gloo"
    bucket_cap_mb: float = 25.0
    compression: str = "none"


BENCH_DIST = _BenchDist()


# ----------------------------------------------------------------------------- measurement


def check_once(lib: Library, nbytes: int, rank: int, world_size: int) -> bool:
    """One allreduce of a known pattern: element i of rank r holds r+1 + i%7; the sum is exact in float32."""
    import torch

    n = nbytes // DTYPE_BYTES
    pattern = torch.arange(7, dtype=torch.float32, device=lib.device).repeat(-(-n // 7))[:n]
    t = pattern + (rank + 1)
    lib.allreduce(t)
    lib.sync()
    # sum = world * pattern + world(world+1)/2: small integers, so subtracting is exact
    t.sub_(pattern, alpha=world_size)
    return bool((t == world_size * (world_size + 1) / 2).all())


def time_allreduce(lib: Library, nbytes: int, iters: int, warmup: int) -> float:
    """This rank's mean seconds per in-place allreduce of nbytes (after a barrier and warm-up)."""
    import torch

    t = torch.zeros(nbytes // DTYPE_BYTES, dtype=torch.float32, device=lib.device)  # sums stay 0: no overflow
    lib.barrier()
    for _ in range(warmup):
        lib.allreduce(t)
    lib.sync()
    lib.barrier()
    t0 = time.perf_counter()
    for _ in range(iters):
        lib.allreduce(t)
    lib.sync()
    return (time.perf_counter() - t0) / iters


def memcpy_bandwidth(nbytes: int, repeats: int = 5, device=None) -> float:
    """Best-of-`repeats` bytes/s of one tensor copy_ of nbytes on this process (size / time)."""
    import torch

    device = device or torch.device("cpu")
    src = torch.ones(nbytes // DTYPE_BYTES, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats + 1):  # the first copy touches fresh pages: not counted
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        if _ > 0:
            best = min(best, dt)
    return nbytes / best


def measure_memcpy(d, nbytes: int, repeats: int) -> dict:
    """Copy bandwidth on rank 0 alone (the ceiling reported) and on every rank at once, per device type."""
    import torch

    devices = [torch.device("cpu")] + ([d.device] if d.device.type == "cuda" else [])
    out = {}
    for device in devices:
        d.barrier()
        alone = memcpy_bandwidth(nbytes, repeats, device) if d.is_main else None
        d.barrier()
        together = d.all_gather_object(memcpy_bandwidth(nbytes, repeats, device))
        out[device.type] = {"bytes": nbytes, "repeats": repeats, "threads": torch.get_num_threads(),
                            "bytes_per_s": d.broadcast_object(alone),
                            "concurrent_per_rank_bytes_per_s": together}
    return out


def bench_library(lib: Library, d, sizes: list[int], iters: int, warmup: int) -> list[dict]:
    """One row per size: max-over-ranks mean time, algbw, busbw (bytes/s and GB/s), correctness on all ranks."""
    mine = []
    for nbytes in sizes:
        lib.barrier()
        ok = check_once(lib, nbytes, d.rank, d.world_size)
        mine.append((time_allreduce(lib, nbytes, iters, warmup), ok))
    everyone = d.all_gather_object(mine)
    rows = []
    for i, nbytes in enumerate(sizes):
        seconds = max(r[i][0] for r in everyone)
        algbw = algorithm_bandwidth(nbytes, seconds)
        busbw = bus_bandwidth(algbw, d.world_size)
        rows.append({"bytes": nbytes, "count": nbytes // DTYPE_BYTES, "time_us": seconds * 1e6,
                     "algbw_GBps": algbw / 1e9, "busbw_GBps": busbw / 1e9,
                     "time_us_per_rank": [r[i][0] * 1e6 for r in everyone],
                     "correct": all(r[i][1] for r in everyone)})
    return rows


def run(opts, d, emit=print) -> dict:
    """Measure memcpy and every requested library in the job of ddp engine d; returns the JSON-able result.

    emit(text) shows each library's table as it is done (rank 0).
    """
    sizes = message_sizes(parse_bytes(opts.min_bytes), parse_bytes(opts.max_bytes), opts.factor)
    ref = reference_size(sizes, parse_bytes(opts.ref_bytes))
    result = {"world_size": d.world_size, "launcher": d.env.launcher, "dtype": "float32", "op": "sum",
              "in_place": True, "iters": opts.iters, "warmup": opts.warmup, "factor": opts.factor,
              "sizes": sizes, "ref_bytes": ref,
              "memcpy": measure_memcpy(d, parse_bytes(opts.memcpy_bytes), opts.memcpy_repeats), "libraries": {}}
    opened = []
    for name in parse_libraries(opts.libraries):
        reason = availability(name, d)
        reasons = set(d.all_gather_object(reason))  # skip only together
        if reasons != {None}:
            result["libraries"][name] = {"status": "skipped", "reason": "; ".join(sorted(r for r in reasons if r))}
            if d.is_main:
                emit(f"# library {name}: skipped: {result['libraries'][name]['reason']}")
            continue
        lib = open_library(name, d, opts.timeout_s)
        opened.append(lib)
        rows = bench_library(lib, d, sizes, opts.iters, opts.warmup)
        at_ref = next(r for r in rows if r["bytes"] == ref)
        ceiling = result["memcpy"][lib.device.type]["bytes_per_s"]
        result["libraries"][name] = {
            "status": "ok", "device": lib.device.type, "rows": rows, "ref_bytes": ref,
            "ref_busbw_GBps": at_ref["busbw_GBps"],
            "busbw_fraction_of_memcpy": at_ref["busbw_GBps"] * 1e9 / ceiling,
            "all_correct": all(r["correct"] for r in rows)}
        if d.is_main:
            emit(format_table(name, lib.device.type, rows))
    for lib in opened:
        if lib.engine is not d and lib.name != "nccl":
            lib.engine.barrier()
            lib.engine.shutdown()
    if d.is_main:
        emit(summarise(result))
    return result


def launched_env(command: str):
    """This process's launcher environment; UserError unless at least 2 ranks take part."""
    from ddtrain.distributed.env import detect

    env = detect(os.environ)
    if env.world_size < 2:
        raise UserError(f"ddtrain-bench {command} needs at least 2 ranks: run it under mpirun -np N "
                        f"or torchrun --nproc-per-node N --no-python ddtrain-bench {command}")
    return env
