"""The batch plan: how one optimizer step's samples are cut across ranks and accumulation micro-steps.

Computed once per run (ddtrain.runtime.run) and passed on to the data, the noise-scale meter and
the sweep, so the per-rank batch and the length of the run are worked out in this one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from ddtrain.errors import UserError


@dataclass(frozen=True)
class BatchPlan:
    """global_batch_size = world_size x grad_accum_steps x per_rank_batch_size, exactly."""

    global_batch_size: int
    world_size: int
    grad_accum_steps: int

    def __post_init__(self):
        parts = self.world_size * self.grad_accum_steps
        if self.global_batch_size <= 0 or self.global_batch_size % parts:
            lo = max(parts, self.global_batch_size // parts * parts)
            raise UserError(
                f"train.global_batch_size={self.global_batch_size} does not split into {self.world_size} rank(s) x "
                f"{self.grad_accum_steps} accumulation step(s); use a multiple of {parts} (e.g. {lo} or {lo + parts})")

    @property
    def per_rank_batch_size(self) -> int:
        """Samples in one rank's micro-batch."""
        return self.global_batch_size // (self.world_size * self.grad_accum_steps)

    def steps_per_epoch(self, train_size: int) -> float:
        """Optimizer steps per pass over train_size samples (fractional: epochs may end inside a batch)."""
        return train_size / self.global_batch_size

    def total_steps(self, epochs: float, max_steps: int, train_size: int) -> int:
        """Steps of the run: max_steps if set, else enough to cover epochs x train_size samples."""
        if max_steps > 0:
            return max_steps
        # exact decimal arithmetic: 1.1 epochs of 50000 samples at batch 100 is 550 steps, not 551
        return max(1, math.ceil(Fraction(repr(float(epochs))) * train_size / self.global_batch_size))

    def epoch_at(self, step: int, train_size: int) -> float:
        """Passes over the training set completed after `step` optimizer steps."""
        return step * self.global_batch_size / train_size
