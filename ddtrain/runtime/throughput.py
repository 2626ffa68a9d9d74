"""Throughput: samples/s over the steady-state window, per-step times, achieved FLOP/s and MFU.

The window starts after train.throughput_warmup_steps (start-up, allocator warm-up, compilation) and
lasts train.throughput_measure_steps (0: to the end). Intervals are timed between synchronised
points of the loop, so evaluation and checkpoints never count as training time. Per-step times come
from CUDA events on GPUs (read later: no host sync per step) and the wall clock on CPUs.
"""

from __future__ import annotations

import statistics
import time

import torch


class StepTimer:
    """Durations of individual steps: CUDA events on GPUs (read later, no sync), wall clock on CPUs."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._last = None
        self._pending: list = []
        self.durations_s: list[float] = []

    def _now(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def restart(self) -> None:
        """Start timing from here, discarding the time since the last mark (evaluation, checkpoints)."""
        self._last = self._now()

    def lap(self, keep: bool = True) -> None:
        """Mark the end of a step; its duration is kept when `keep` (steady state) is true."""
        now = self._now()
        if keep and self._last is not None:
            self._pending.append((self._last, now))
        self._last = now

    def collect(self) -> None:
        """Turn pending marks into seconds (synchronises on the last CUDA event only)."""
        if not self._pending:
            return
        if self.cuda:
            self._pending[-1][1].synchronize()
            self.durations_s += [a.elapsed_time(b) / 1000.0 for a, b in self._pending]
        else:
            self.durations_s += [b - a for a, b in self._pending]
        self._pending.clear()

    def median_ms(self) -> float | None:
        """Median steady-state step time in milliseconds."""
        self.collect()
        return statistics.median(self.durations_s) * 1000.0 if self.durations_s else None


class ThroughputMeter:
    """Owns the steady-state window: when it starts and ends, the training time, samples/s and MFU."""

    def __init__(self, device, plan, start_step: int, warmup_steps: int, measure_steps: int,
                 flops_per_sample: int | None = None, peak_flops_per_device: float | None = None):
        self.global_batch_size, self.world_size = plan.global_batch_size, plan.world_size
        self.warmup_end = start_step + warmup_steps
        self.measure_end = self.warmup_end + measure_steps if measure_steps else None
        self.flops_per_sample, self.peak = flops_per_sample, peak_flops_per_device
        self.timer = StepTimer(device)
        self.train_time_s = 0.0  # all training intervals, warm-up included, evaluation excluded
        self.steady_samples, self.steady_time_s = 0, 0.0
        self.steady_rates: list[float] = []  # samples/s of each steady-state interval, for the spread
        self.steady_steps, self.steady_cpu_s = 0, 0.0  # this process's CPU time (user + sys, all threads)
        self._start_s, self._start_step, self._start_cpu = time.perf_counter(), start_step, time.process_time()

    def _steady(self, step: int) -> bool:
        return self.warmup_end <= step and (self.measure_end is None or step < self.measure_end)

    def lap(self, done: int) -> None:
        """After each step (done = steps finished): mark its end."""
        self.timer.lap(keep=self._steady(done - 1))

    def due(self, done: int) -> bool:
        """The window starts or ends here: the loop must stop at a synchronised point to time it."""
        return done == self.warmup_end or done == self.measure_end

    def restart(self, done: int) -> None:
        """Start the next interval now (after evaluation or a checkpoint, which are not training time)."""
        self._start_s, self._start_step, self._start_cpu = time.perf_counter(), done, time.process_time()
        self.timer.restart()

    def interval(self, done: int) -> tuple[float, float]:
        """At a synchronised point: (samples/s, seconds per step) of the interval since restart()."""
        seconds = time.perf_counter() - self._start_s
        cpu_s = time.process_time() - self._start_cpu
        steps = done - self._start_step
        samples_per_s = steps * self.global_batch_size / seconds
        self.train_time_s += seconds
        if self._steady(self._start_step):
            self.steady_samples += steps * self.global_batch_size
            self.steady_time_s += seconds
            self.steady_rates.append(samples_per_s)
            self.steady_steps += steps
            self.steady_cpu_s += cpu_s
        return samples_per_s, seconds / max(steps, 1)

    def utilization(self, samples_per_s: float | None) -> dict:
        """Achieved FLOP/s over all ranks and MFU per device at a given throughput."""
        if not self.flops_per_sample or not samples_per_s:
            return {}
        achieved = self.flops_per_sample * samples_per_s
        out = {"achieved_tflops": achieved / 1e12}
        if self.peak:
            out["mfu"] = achieved / self.world_size / self.peak
        return out

    def figures(self) -> dict:
        """The run's throughput figures for summary.json."""
        samples_per_s = self.steady_samples / self.steady_time_s if self.steady_time_s else None
        return {"samples_per_s": samples_per_s,
                "samples_per_s_std": statistics.pstdev(self.steady_rates) if len(self.steady_rates) > 1 else None,
                "steady_intervals": len(self.steady_rates), "step_time_ms_median": self.timer.median_ms(),
                # CPU time moves far less than wall time when other work shares the machine
                "cpu_ms_per_step": 1000 * self.steady_cpu_s / self.steady_steps if self.steady_steps else None,
                **self.utilization(samples_per_s), "train_time_s": self.train_time_s}
