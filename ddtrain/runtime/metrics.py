"""Meters that stay on the device, and rank 0's sinks.

Only the sinks here write metric files: metrics.jsonl, TensorBoard events and summary.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ddtrain.fileio import atomic_open


class SumMeter:
    """Running (loss sum, correct, count) on the device; reduced across ranks only when read.

    accuracy=False (a regression or sequence loss): no argmax, and reduce() reports the loss alone.
    """

    def __init__(self, device: torch.device, accuracy: bool = True):
        self.totals = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, correct
        self._loss_sum, self._correct = self.totals[0], self.totals[1]  # views: add() updates totals in place
        self.count = 0  # known on the host: keeping it there avoids a host-to-device copy per step
        self.accuracy = accuracy

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch (of len(labels) samples) whose mean loss is `loss`; no host synchronisation."""
        n = len(labels)
        self._loss_sum.add_(loss, alpha=n)  # two in-place ops instead of a stacked copy: this runs every step
        if self.accuracy:
            self._correct.add_((logits.argmax(dim=1) == labels).sum())
        self.count += n

    def reduce(self, dist) -> dict:
        """Mean loss, accuracy and count over all ranks since the last reduce; resets the meter."""
        count = torch.full((1,), float(self.count), dtype=torch.float64, device=self.totals.device)
        totals = dist.all_reduce_sum(torch.cat([self.totals, count]))
        loss_sum, correct, count = totals.tolist()
        self.totals.zero_()
        self.count = 0
        if count == 0:
            result = {"loss": float("nan"), "accuracy": float("nan"), "count": 0}
        else:
            result = {"loss": loss_sum / count, "accuracy": correct / count, "count": int(count)}
        if not self.accuracy:
            del result["accuracy"]
        return result


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this rank: allocated CUDA memory on GPUs, the process's peak RSS on CPUs."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON so that readers see either the old file or the complete new one."""
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


class MetricsSink:
    """Rank 0's metric outputs: metrics.jsonl and TensorBoard scalars; a no-op on other ranks."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, config_yaml: str = ""):
        self.enabled = enabled
        self._jsonl = None
        self._tb = None
        if not enabled:
            return
        self._jsonl = open(run_dir / "metrics.jsonl", "a", buffering=1)  # line-buffered: readable live
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(log_dir=str(run_dir / "tb"), flush_secs=10)
            if config_yaml:
                self._tb.add_text("config", "```yaml\n" + config_yaml + "\n```", 0)

    def log(self, step: int, values: dict, group: str) -> None:
        """Record one logged step: a JSON line with the raw values, TensorBoard scalars as group/name."""
        if not self.enabled:
            return
        self._jsonl.write(json.dumps({"step": step, **values}) + "\n")
        if self._tb is not None:
            for key, value in values.items():
                if key not in ("step", "epoch", "split") and isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{group}/{key}", value, step)

    def close(self) -> None:
        """Flush and close the files."""
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
