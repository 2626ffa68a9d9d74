"""Preemption: SIGTERM or SIGUSR1 make every rank checkpoint at the next step boundary and exit with 75.

SLURM sends SIGTERM when it preempts or cancels a job (SIGKILL follows after KillWait) and, with
`#SBATCH --signal=USR1@<seconds>`, SIGUSR1 that long before the time limit. The handler only sets
a flag; the training loop asks `StopVote.poll()` at every step boundary, and all ranks stop at
the same step because the decision is a sum of every rank's flag over a collective (a rank that
got no signal, or got it later, stops too, and nobody is left waiting in an allreduce). Then the
trainer saves a checkpoint, logs one line and raises ddtrain.errors.Preempted, which the entry
points turn into exit status 75 (PREEMPTED_EXIT_CODE) without tearing down the process group;
launch/slurm.sbatch requeues the job on that status, and the requeued job resumes from the newest
checkpoint in the same run directory (checkpoint.resume=auto).

Cost, and why the vote is read one step late on GPUs: the vote is a one-element allreduce per
step. On CPUs (gloo, MPI) collectives are synchronous anyway; the vote costs one small round
trip per step (tens of microseconds on one machine), negligible against a step of milliseconds,
and is read at once. On GPUs the allreduce is only enqueued on the stream, its result is copied
to pinned host memory without blocking, and it is read at the *next* boundary after waiting on a
CUDA event recorded behind that copy, i.e. for the previous step's work only; the host may thus
run at most one step ahead of the device instead of many, which keeps the device fed (a full
host sync every step would drain the queue). The price is one step of extra latency between a
signal and the stop, far below SLURM's grace periods. Agreeing only at the existing log/eval
points would be free but could delay the stop by up to train.log_every steps, which with slow
steps can exceed KillWait.

A second signal of either kind while the first is still pending kills the process (the default
action), so `kill` twice still works. Handlers are installed for the training loop only and the
previous ones restored afterwards; a signal that arrives after the last vote lets the run finish.
"""

from __future__ import annotations

import logging
import signal
import threading

import torch

from ddtrain.errors import PREEMPTED_EXIT_CODE

__all__ = ["PREEMPTED_EXIT_CODE", "StopVote", "install", "received", "signal_name", "uninstall"]
log = logging.getLogger("ddtrain")
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

_received: int | None = None  # number of the first signal received while installed
_previous: dict = {}


def _handler(signum, frame) -> None:
    global _received
    if _received is not None:  # second signal: give up gracefulness, die as the default action does
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)
        return
    _received = signum


def install() -> bool:
    """Catch SIGTERM and SIGUSR1 (main thread only); returns False where handlers cannot be installed."""
    global _received
    if threading.current_thread() is not threading.main_thread():
        return False
    if not _previous:
        _received = None
        for sig in SIGNALS:
            _previous[sig] = signal.signal(sig, _handler)
    return True


def uninstall() -> None:
    """Restore the handlers install() replaced and forget any signal received."""
    global _received
    for sig, old in list(_previous.items()):
        signal.signal(sig, old)
    _previous.clear()
    _received = None


def received() -> int | None:
    """The signal number received since install(), or None."""
    return _received


def signal_name(signum: int | None) -> str:
    """SIGTERM, SIGUSR1, ... (or 'a signal')."""
    try:
        return signal.Signals(signum).name
    except (TypeError, ValueError):
        return "a signal"


class StopVote:
    """All ranks' agreement on stopping, polled once per step; see the module docstring for the cost."""

    def __init__(self, dist):
        self.dist = dist
        self.device = dist.device
        self.lagged = dist.world_size > 1 and self.device.type == "cuda"
        self._pending = False
        if self.lagged:
            self._host = torch.zeros(1, pin_memory=True)
            self._event = torch.cuda.Event()

    def _flag(self) -> torch.Tensor:
        # torch.full launches a fill kernel: no host-to-device copy, no synchronisation
        return torch.full((1,), 0.0 if _received is None else 1.0, device=self.device)

    def poll(self) -> bool:
        """Called by every rank at every step boundary: True when some rank has received a signal."""
        if self.dist.world_size == 1:
            return _received is not None
        if not self.lagged:
            return self.dist.all_reduce_sum(self._flag()).item() > 0
        agreed = self.drain()
        total = self.dist.all_reduce_sum(self._flag())
        self._host.copy_(total, non_blocking=True)
        self._event.record()
        self._pending = True
        return agreed

    def drain(self) -> bool:
        """The vote still in flight (GPUs), read now: True when it said stop. No collective."""
        if not self._pending:
            return False
        self._event.synchronize()
        self._pending = False
        return self._host.item() > 0
