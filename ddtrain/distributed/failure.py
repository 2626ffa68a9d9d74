"""Fail fast when a rank dies, a host becomes unreachable or one rank raises: what happened, in one line.

Once the ranks agree on a run directory, attach() records it, where checkpoints go and every rank's
host and addresses. explain() then turns any exception into the line to print and the exit status
(the console scripts print it and leave: ddtrain.cli.common.exit_path):

- bad input (UserError): its message, EXIT_USER, the same on every rank; bad input that only one
  rank meets (an image that does not decode, in its shard) is recorded, and the other ranks, whose
  collectives then fail, print that rank's line with EXIT_USER too;
- an exception on this rank (a bad batch, a non-finite loss with train.stop_on_nan, out of memory)
  writes "<message>" atomically to <run_dir>/failures/rank<N>.txt; the line is
  "rank N failed: <message>; <checkpoint note>", EXIT_FAILED;
- a collective error (a peer was killed: "Connection reset by peer" at once; a host unreachable or a
  rank stopped: "Timed out waiting ...ms" after dist.timeout_s) waits up to PEER_REPORT_WAIT_S for a
  peer's failure file and says "rank N failed: <its message>", or else names the peer (rank, host,
  address) and what the backend said; EXIT_PEER;
- a rendezvous that cannot be reached (Unreachable): its message (the advertised address and how to
  set another), EXIT_PEER;
- a preemption (Preempted: checkpoint saved, line already logged): no line, EXIT_PREEMPTED.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from ddtrain.errors import EXIT_FAILED, EXIT_PEER, EXIT_PREEMPTED, EXIT_USER, Preempted, Unreachable, UserError
from ddtrain.fileio import atomic_open, list_checkpoints

log = logging.getLogger("ddtrain")

PEER_REPORT_WAIT_S = 3.0  # how long a survivor waits for the failed rank's own message
FAILURES = "failures"
BAD_INPUT = ".bad-input"  # beside rank<N>.txt: that rank's failure was bad input (UserError)

# what happened when a peer is gone or cannot be reached, in the words gloo, NCCL, the c10d store, MPI and
# Horovod use; which library raised is no evidence (a CUDA error inside an NCCL call is this rank's own)
_PEER_GONE = ("connection reset", "connection closed", "connection refused", "broken pipe", "by peer", "timed out",
              "timeout", "remote process exited", "ncclremoteerror", "socket closed", "end of file",
              "no route to host", "host is unreachable", "network is unreachable", "clients joined",
              "communicator was aborted", "proc_failed", "process failure", "has been shut down")
_PEER_TYPES = {"DistNetworkError", "DistStoreError", "HorovodInternalError", "HostsUpdatedInterrupt"}


@dataclass
class Job:
    """What a failure message needs to know about the running job (set by attach)."""

    rank: int = 0
    world_size: int = 1
    attached: bool = False  # False: rank and world size still come from the launcher's environment
    run_dir: Path | None = None  # holds failures/
    checkpoints: Path | None = None  # where checkpoints go; None: this job writes none
    note: str = ""  # said when there is no checkpoint (or, for a sweep, how to continue)
    hosts: list = field(default_factory=list)  # per rank: (hostname, [IPv4 addresses])


job = Job()


def own_addresses() -> list[str]:
    """This host's IPv4 addresses, one per interface (the one gloo uses is among them)."""
    from ddtrain.distributed.network import interfaces

    return [f.addr for f in interfaces()]


def attach(d, run_dir: Path, checkpoints: Path | None = None, note: str = "") -> None:
    """Called on every rank once the run directory is agreed: clear old failure files, learn every rank's host."""
    if d.is_main:
        for old in (run_dir / FAILURES).glob("rank*.*"):  # left by an earlier attempt in this directory
            old.unlink(missing_ok=True)
    # a collective: rank 0 has cleared before any rank can write a failure of this attempt
    hosts = d.all_gather_object((socket.gethostname(), own_addresses()))
    job.rank, job.world_size, job.run_dir, job.attached = d.rank, d.world_size, Path(run_dir), True
    job.checkpoints, job.note, job.hosts = checkpoints, note, hosts


def checkpoint_note() -> str:
    """Where the newest checkpoint is, or that there is none."""
    if job.checkpoints is None:
        return job.note or "no checkpoint (the ranks failed before agreeing on a run directory)"
    found = list_checkpoints(job.checkpoints)
    if not found:
        return f"{job.note or 'no checkpoint written yet'} in {job.checkpoints}"
    return (f"newest checkpoint {found[-1]} (continue with checkpoint.resume=auto "
            f"hydra.run.dir={job.checkpoints.parent})")


def one_line(exc: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message (gloo's file prefix cut)."""
    text = str(exc).strip().split("\n")[0]
    text = re.sub(r"^\[[^\]]*\.(cc|cpp|h|hpp):\d+\]\s*", "", text)  # "[/.../pair.cc:537] Read error ..."
    text = text.split(". This is typically caused")[0]
    if len(text) > 300:
        text = text[:297] + "..."
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def is_collective_error(exc: BaseException) -> bool:
    """True when a peer is gone or unreachable (reset, closed, timed out); False for this rank's own error.

    Classified by what happened, not by which library raised: a CUDA error inside an NCCL collective
    or a bad argument to a Gloo one is this rank's failure (exit 1), not a lost peer (exit 3).
    """
    if {cls.__name__ for cls in type(exc).__mro__} & _PEER_TYPES or isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    mpi = any(cls.__module__.startswith("mpi4py") for cls in type(exc).__mro__)
    if isinstance(exc, RuntimeError) or mpi:
        text = str(exc).lower()
        return any(marker in text for marker in _PEER_GONE)
    return False


def failure_file(rank: int) -> Path | None:
    """Where rank N writes its one-line message (None before attach)."""
    return job.run_dir / FAILURES / f"rank{rank}.txt" if job.run_dir else None


def record(message: str, bad_input: bool = False) -> None:
    """Write this rank's one-line message atomically where the other ranks look for it (and mark bad input)."""
    path = failure_file(job.rank)
    if path is None:
        return
    with contextlib.suppress(OSError):
        if bad_input:  # marked before the message appears, so a peer that sees the message sees the mark
            path.parent.mkdir(parents=True, exist_ok=True)
            path.with_suffix(BAD_INPUT).touch()
        with atomic_open(path) as f:
            f.write(message + "\n")


def bad_input_reported(reports: list[tuple[int, str]]) -> str | None:
    """The message of the first reporting peer whose failure was bad input (a UserError), or None."""
    for rank, message in reports:
        path = failure_file(rank)
        if path is not None and path.with_suffix(BAD_INPUT).exists():
            return message
    return None


def peer_reports(wait_s: float | None = None) -> list[tuple[int, str]]:
    """Failure messages of other ranks, waiting up to wait_s (PEER_REPORT_WAIT_S) for the first to appear."""
    if job.run_dir is None:
        return []
    wait_s = PEER_REPORT_WAIT_S if wait_s is None else wait_s
    deadline = time.monotonic() + wait_s
    while True:
        found = []
        for path in sorted((job.run_dir / FAILURES).glob("rank*.txt")):
            rank = int(path.stem[4:]) if path.stem[4:].isdigit() else -1
            if rank != job.rank:
                with contextlib.suppress(OSError):
                    found.append((rank, path.read_text().strip()))
        if found or time.monotonic() >= deadline:
            return sorted(found)
        time.sleep(0.1)


def describe_rank(rank: int, text: str = "") -> str:
    """ "rank 1 (host n1, 10.233.0.2)" from what attach gathered (the address a backend message names, if any)."""
    if 0 <= rank < len(job.hosts):
        hostname, addrs = job.hosts[rank]
        shown = [a for a in addrs if a in _addresses(text)] or [a for a in addrs if not a.startswith("127.")] or addrs
        return f"rank {rank} (host {hostname}{', ' + shown[0] if shown else ''})"
    return f"rank {rank}"


def suspected_peers(text: str) -> list[int]:
    """The ranks a backend message points at: by the address it names, or the only other rank."""
    others = [r for r in range(job.world_size) if r != job.rank]
    if len(others) == 1:
        return others
    named = _addresses(text)
    return [r for r in others if r < len(job.hosts) and named & set(job.hosts[r][1])]


def _addresses(text: str) -> set[str]:
    return set(re.findall(r"(\d+\.\d+\.\d+\.\d+)", text))


def peer_message(exc: BaseException) -> str:
    """The line a survivor prints: the failed rank's own message when it left one, else what the backend said."""
    reports = peer_reports()
    if reports:
        return "; ".join(f"rank {r} failed: {m}" for r, m in reports)
    what = one_line(exc)
    lost = suspected_peers(str(exc))
    who = " or ".join(describe_rank(r, str(exc)) for r in lost) if lost else "a peer"
    if "timed out" in what.lower() or "timeout" in what.lower():
        return f"no answer from {who} within dist.timeout_s (host unreachable, or the rank hangs): {what}"
    return f"lost {who} (killed, crashed or out of memory?): {what}"


def _from_launcher() -> None:
    """Before attach(): rank and world size as the launcher's environment says (for the line's prefix)."""
    if job.attached:
        return
    with contextlib.suppress(Exception):
        from ddtrain.distributed.env import detect

        env = detect(os.environ)
        job.rank, job.world_size = env.rank, env.world_size


def explain(exc: BaseException) -> tuple[str | None, int]:
    """(the one line to print, the exit status) for an exception that ends this rank's work (module docstring).

    Records this rank's own failure where the other ranks look for it.
    """
    _from_launcher()
    if isinstance(exc, UserError):
        record(str(exc), bad_input=True)
        return str(exc), exc.exit_code
    if isinstance(exc, Preempted):
        return None, EXIT_PREEMPTED
    if isinstance(exc, Unreachable):  # the rendezvous failed: its message says which address and what to set
        return str(exc), EXIT_PEER
    if job.world_size > 1 and is_collective_error(exc):
        bad_input = bad_input_reported(peer_reports())
        if bad_input is not None:  # a peer met bad input: the same line and exit status on every rank
            return bad_input, EXIT_USER
        return f"{peer_message(exc)}; {checkpoint_note()}", EXIT_PEER
    message = one_line(exc)
    record(message)
    who = f"rank {job.rank} failed: " if job.world_size > 1 else ""
    return f"{who}{message}; {checkpoint_note()}", EXIT_FAILED


def prefixed(line: str, code: int) -> str:
    """The printed form: "[rank r/n] " before a rank's own or a peer's failure (bad input reads the same everywhere)."""
    _from_launcher()
    who = f"[rank {job.rank}/{job.world_size}] " if job.world_size > 1 and code in (EXIT_FAILED, EXIT_PEER) else ""
    return f"{who}{line}"


def note(line: str | None, code: int) -> None:
    """Keep why this attempt stopped in <run_dir>/failures.log, which (unlike failures/) survives restarts.

    Rank 0 notes its line; another rank its own failure, or rank 0's (the others would repeat rank 0's news).
    """
    about_rank0 = code == EXIT_PEER and re.search(r"\brank 0\b", line or "")
    if line is None or job.run_dir is None or (job.rank != 0 and code != EXIT_FAILED and not about_rank0):
        return
    with contextlib.suppress(OSError):
        with open(job.run_dir / "failures.log", "a") as f:  # O_APPEND: ranks' lines never interleave
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [rank {job.rank}/{job.world_size}] exit status "
                    f"{code}: {line}\n")


def tell_torchrun(line: str | None) -> None:
    """Under torchrun: write the line into TORCHELASTIC_ERROR_FILE, so torchrun's own summary names the cause."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path or line is None:
        return
    import json

    with contextlib.suppress(OSError):  # the string form: torchrun prints it as the failure's message
        with open(path, "w") as f:
            json.dump({"message": line, "timestamp": str(int(time.time()))}, f)


def log_to_file(line: str, exc: BaseException | None = None) -> None:
    """Write the traceback and the line to train.log only (the console gets the line alone)."""
    trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)) if exc is not None else ""
    for handler in log.handlers:
        if isinstance(handler, logging.FileHandler):
            with contextlib.suppress(Exception):
                if trace:
                    handler.stream.write(f"[rank {job.rank}/{job.world_size}] traceback:\n{trace}")
                handler.stream.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
