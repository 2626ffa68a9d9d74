"""Test aids, in one place: faults injected through environment variables, and an event trace.

Production code calls these hooks at the points where a test needs to step in; each is a cheap
no-op unless a test turns it on.

- DDTRAIN_INJECT_FAULT=<rank>:<step>:<kind>[:<attempt>] makes that rank fail at that (1-based) step, in
  every attempt or only in the given one of a restarted job (DDTRAIN_ATTEMPT under ddtrain-launch
  --max-restarts, TORCHELASTIC_RESTART_COUNT under torchrun; 0 is the first). Kinds: nan
  (the loss becomes NaN), raise (a bad batch: ValueError), kill (SIGKILL itself), hang (sleep forever,
  like a stopped rank), sleep<S> (pause S seconds, then go on), collective (this rank's own error inside
  a torch.distributed collective: Gloo refuses a max-allreduce of a sparse tensor).
- DDTRAIN_INJECT_OOM=<rank>:<size> makes that rank run out of memory at micro-batches >= size (sweeps).
- trace: set `testing.trace = []` to record (event, index, time) tuples, e.g. the mpi engine's buckets.
"""

from __future__ import annotations

import os
import signal
import time

trace: list | None = None


def record(event: str, index: int) -> None:
    """Append (event, index, time) to `trace` when a test has set it to a list."""
    if trace is not None:
        trace.append((event, index, time.perf_counter()))


def injected_fault(rank: int) -> tuple[int, str] | None:
    """(step, kind) that DDTRAIN_INJECT_FAULT asks of this rank, or None."""
    spec = os.environ.get("DDTRAIN_INJECT_FAULT")
    if not spec:
        return None
    at_rank, step, kind, *attempt = spec.split(":")
    now = os.environ.get("TORCHELASTIC_RESTART_COUNT") or os.environ.get("DDTRAIN_ATTEMPT") or "0"
    if attempt and int(attempt[0]) != int(now):
        return None
    return (int(step), kind) if int(at_rank) == rank else None


def apply_fault(kind: str, step: int, loss):
    """Do what an injected fault of this kind does at this step; returns the (possibly poisoned) loss."""
    if kind == "nan":
        return loss * float("nan")
    if kind == "raise":
        raise ValueError(f"injected bad batch at step {step}")
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "hang":
        while True:
            time.sleep(60)
    if kind == "collective":
        import torch
        import torch.distributed as tdist

        tdist.all_reduce(torch.zeros(2).to_sparse(), op=tdist.ReduceOp.MAX)
    if kind.startswith("sleep"):  # a slow step: a window in which a test can cut the network
        time.sleep(float(kind[5:]))
    return loss


def inject_oom(rank: int, micro_batch: int) -> None:
    """Raise torch.OutOfMemoryError when DDTRAIN_INJECT_OOM=<rank>:<size> says this micro-batch does not fit."""
    spec = os.environ.get("DDTRAIN_INJECT_OOM")
    if spec:
        at_rank, size = (int(v) for v in spec.split(":"))
        if rank == at_rank and micro_batch >= size:
            import torch
            raise torch.OutOfMemoryError(f"injected: micro-batch {micro_batch} on rank {rank}")
