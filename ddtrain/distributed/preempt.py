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

Cost (the trade-off): a vote is a small allreduce, and on this kind of machine a one-element gloo
allreduce between two local processes takes about 0.4 ms -- as much as 15% of a small CPU step. So
ranks do not vote every step but about every VOTE_INTERVAL_S seconds: each vote also sums every
rank's time since the previous vote (whole microseconds, so the sum is exact and every rank
computes the same next cadence), and the next vote comes after the number of steps that took
about that long (at least 1). The first vote is after the first step. A signal is thus acted on
within about half a second plus a step, far below SLURM's grace periods (KillWait, the lead time
of --signal), at a cost of one small allreduce per half second. On GPUs the vote is only enqueued
on the stream (values staged through pinned memory) and read at the next step, after waiting on a
CUDA event recorded behind it, i.e. for that earlier step's work only: no blocking host sync per
step, and the device queue is never drained. Agreeing only at the existing log points
(train.log_every) would be free but could delay the stop by minutes with slow steps.

A second signal of either kind while the first is still pending kills the process (the default
action), so `kill` twice still works. Handlers are installed for the training loop only and the
previous ones restored afterwards; a signal that arrives after the last vote lets the run finish.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

import torch

from ddtrain.errors import EXIT_PREEMPTED as PREEMPTED_EXIT_CODE

__all__ = ["PREEMPTED_EXIT_CODE", "StopVote", "install", "received", "signal_name", "uninstall"]
log = logging.getLogger("ddtrain")

VOTE_INTERVAL_S = 0.5  # about how often the ranks agree on stopping
MAX_EVERY = 10_000  # at most this many steps between votes
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
    """All ranks' agreement on stopping, polled every step, voted about every VOTE_INTERVAL_S (module docstring)."""

    def __init__(self, dist, interval_s: float = VOTE_INTERVAL_S):
        self.dist = dist
        self.device = dist.device
        self.interval_us = 1e6 * interval_s
        self.lagged = dist.world_size > 1 and self.device.type == "cuda"
        self.every = 1  # steps from one vote to the next, agreed at each vote
        self._steps = 0  # steps since the last vote
        self._t0 = time.perf_counter()
        self._pending_steps = 0  # steps covered by the vote in flight (GPUs); 0: none
        if self.lagged:
            self._send = torch.zeros(2, dtype=torch.float64, pin_memory=True)
            self._recv = torch.zeros(2, dtype=torch.float64, pin_memory=True)
            self._event = torch.cuda.Event()

    def poll(self) -> bool:
        """Called by every rank after every step: True when some rank has received a signal."""
        if self.dist.world_size == 1:
            return _received is not None
        stop = self.drain()
        self._steps += 1
        if self._steps >= self.every:
            stop = self._vote() or stop
        return stop

    def _vote(self) -> bool:
        """Start a vote: (signal flag, microseconds since the last vote) summed over ranks."""
        now = time.perf_counter()
        values = (0.0 if _received is None else 1.0, float(round(1e6 * (now - self._t0))))
        self._t0 = now
        steps, self._steps = self._steps, 0
        if not self.lagged:
            total = self.dist.all_reduce_sum(torch.tensor(values, dtype=torch.float64, device=self.device))
            return self._agree(total.tolist(), steps)
        # the pinned buffers are free again: drain() waited for the previous vote's event
        self._send[0], self._send[1] = values
        total = self.dist.all_reduce_sum(self._send.to(self.device, non_blocking=True))
        self._recv.copy_(total, non_blocking=True)
        self._event.record()
        self._pending_steps = steps
        return False

    def _agree(self, total: list, steps: int) -> bool:
        """The vote's outcome, and the cadence of the next one (identical on every rank: exact sums)."""
        flags, micros = total
        mean_step_us = micros / self.dist.world_size / steps
        self.every = max(1, min(MAX_EVERY, int(self.interval_us / max(mean_step_us, 1.0))))
        return flags > 0

    def drain(self) -> bool:
        """The outcome of the vote in flight on GPUs (False when none): waits for that vote only."""
        if not self._pending_steps:
            return False
        self._event.synchronize()
        steps, self._pending_steps = self._pending_steps, 0
        return self._agree(self._recv.tolist(), steps)
