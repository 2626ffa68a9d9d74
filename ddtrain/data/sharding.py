"""Which samples each rank reads: one global sample order, cut into global batches, split across ranks.

The global order is an endless stream of per-epoch permutations (epoch e is a permutation of the
training set seeded by (seed, e)). Global batch k is stream[k*B : (k+1)*B]; rank r takes its slice of
each accumulation micro-step. So the union of the per-rank batches at step k is exactly the
one-process batch of step k, whatever the world size, and every epoch of samples sees each sample
exactly once: nothing is dropped at epoch ends and nothing is repeated. The position in the data is
the step number alone, which makes resuming exact.
"""

from __future__ import annotations

import numpy as np
import torch


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of one epoch: a permutation of range(num_samples), the same on every rank."""
    # SeedSequence mixes (seed, epoch) so that nearby seeds and epochs give unrelated orders
    state = int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.randperm(num_samples, generator=torch.Generator().manual_seed(state))


class SampleStream:
    """The training samples in the order they are consumed: epoch 0's permutation, then epoch 1's, ..."""

    def __init__(self, num_samples: int, seed: int, device: torch.device | str = "cpu"):
        self.num_samples = num_samples
        self.seed = seed
        self.device = torch.device(device)
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) >= 2:  # batches only ever straddle two epochs
                del self._perms[min(self._perms)]
            # one copy per epoch to where the data lives, instead of a blocking index copy per step
            self._perms[epoch] = epoch_permutation(self.num_samples, self.seed, epoch).to(self.device)
        return self._perms[epoch]

    def take(self, start: int, count: int) -> torch.Tensor:
        """Sample indices at stream positions [start, start + count)."""
        parts, pos, end = [], start, start + count
        while pos < end:
            epoch, offset = divmod(pos, self.num_samples)
            n = min(end - pos, self.num_samples - offset)
            parts.append(self._perm(epoch)[offset:offset + n])
            pos += n
        return parts[0] if len(parts) == 1 else torch.cat(parts)


class RankBatches:
    """Which samples one rank reads at each (optimizer step, accumulation micro-step), from the sample stream."""

    def __init__(self, num_samples: int, *, seed: int, plan, rank: int, device: torch.device | str = "cpu"):
        self.num_samples = num_samples
        self.stream = SampleStream(num_samples, seed, device)
        self.plan = plan  # ddtrain.batching.BatchPlan
        self.rank = rank
        self.global_batch_size, self.world_size = plan.global_batch_size, plan.world_size
        self.grad_accum_steps, self.per_rank_batch_size = plan.grad_accum_steps, plan.per_rank_batch_size

    def position(self, step: int, micro_step: int = 0) -> int:
        """Stream position of this rank's first sample at (step, micro_step); position // num_samples is its epoch."""
        return step * self.global_batch_size + (micro_step * self.world_size + self.rank) * self.per_rank_batch_size

    def indices(self, step: int, micro_step: int = 0) -> torch.Tensor:
        """Sample indices this rank reads at optimizer step `step`, accumulation micro-step `micro_step`."""
        return self.stream.take(self.position(step, micro_step), self.per_rank_batch_size)


class ShardedBatches(RankBatches):
    """Per-rank micro-batches of an in-memory dataset, served by index gathering (no per-sample collation)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, *, seed: int, plan, rank: int):
        super().__init__(len(x), seed=seed, plan=plan, rank=rank, device=x.device)
        self.x, self.y = x, y

    def get(self, step: int, micro_step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The (inputs, labels) micro-batch of this rank, on the dataset's device."""
        idx = self.indices(step, micro_step)
        return self.x.index_select(0, idx), self.y.index_select(0, idx)


def eval_shard(num_samples: int, rank: int, world_size: int) -> range:
    """This rank's contiguous share of an evaluation set: shares differ by at most one, none overlap.

    Unlike a padded DistributedSampler, no sample is evaluated twice, so reduced accuracy is exact.
    """
    return range(num_samples * rank // world_size, num_samples * (rank + 1) // world_size)
