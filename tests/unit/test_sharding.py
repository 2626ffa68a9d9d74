"""Which samples each rank reads: the properties a user relies on, checked without any process group.

- the union of the per-rank micro-batches at a step is exactly the one-process batch of that step,
  whatever the world size and accumulation;
- each epoch of the sample stream visits every training sample exactly once (nothing dropped at an
  epoch end, nothing repeated);
- the order depends on the seed and the epoch only, and is the same however it is accessed;
- evaluation shards partition the set, so all-reduced accuracy is exact;
- the batch arithmetic of the config (per-rank batch, total steps).
"""

from __future__ import annotations

import math
from collections import Counter
from fractions import Fraction

import pytest
import torch

from ddtrain.batching import BatchPlan
from ddtrain.data.sharding import SampleStream, ShardedBatches, epoch_permutation, eval_shard
from ddtrain.errors import UserError
from ddtrain.runtime.metrics import SumMeter

SEED = 1234


def layouts():
    """(N, global batch, world size, accum) with N not a multiple of the batch and ws*accum dividing it."""
    out = []
    for n, b in ((103, 24), (100, 8), (10, 8)):
        for ws in (1, 2, 3, 4):
            for accum in (1, 2):
                if b % (ws * accum) == 0:
                    out.append((n, b, ws, accum))
    return out


LAYOUTS = layouts()


def make_ranks(n: int, b: int, ws: int, accum: int, seed: int = SEED) -> list[ShardedBatches]:
    x = torch.arange(n)
    return [ShardedBatches(x, x.clone(), seed=seed, plan=BatchPlan(b, ws, accum), rank=r) for r in range(ws)]


def reference_stream(n: int, seed: int, epochs: int) -> torch.Tensor:
    """The global sample order built independently: epoch permutations one after another."""
    return torch.cat([epoch_permutation(n, seed, e) for e in range(epochs)])


def steps_for(n: int, b: int, epochs: int = 3) -> int:
    """Enough steps to cover at least `epochs` epochs, ending on an epoch boundary (a multiple of lcm(N, B))."""
    lcm = n * b // math.gcd(n, b)
    per_lcm = lcm // b
    steps = per_lcm
    while steps * b < epochs * n:
        steps += per_lcm
    return steps


def by_id(layout):
    n, b, ws, accum = layout
    return f"N{n}-B{b}-ws{ws}-acc{accum}"


# ------------------------------------------------------------------------------ epoch permutations


@pytest.mark.parametrize("n", [1, 2, 7, 100, 103])
def test_epoch_permutation_is_a_permutation(n):
    for epoch in range(4):
        perm = epoch_permutation(n, SEED, epoch)
        assert perm.dtype == torch.int64
        assert sorted(perm.tolist()) == list(range(n))


def test_epoch_orders_depend_on_seed_and_epoch_only():
    n = 103
    orders = [epoch_permutation(n, SEED, e) for e in range(5)]
    # different epochs give different orders
    for i in range(len(orders)):
        for j in range(i + 1, len(orders)):
            assert not torch.equal(orders[i], orders[j]), (i, j)
    # the same (seed, epoch) gives the same order every time; another seed another order
    assert torch.equal(epoch_permutation(n, SEED, 3), orders[3])
    for e in range(5):
        assert not torch.equal(epoch_permutation(n, SEED + 1, e), orders[e])
    # nearby (seed, epoch) pairs are not shifted copies of each other
    assert not torch.equal(epoch_permutation(n, 0, 1), epoch_permutation(n, 1, 0))


def test_sample_stream_take_spans_epochs():
    n = 10
    stream = SampleStream(n, SEED)
    ref = reference_stream(n, SEED, 5)
    # one take longer than an epoch, straddling three epochs
    assert torch.equal(stream.take(7, 25), ref[7:32])
    # random access in any order (epochs evicted from the cache and recomputed) gives the same values
    for start, count in ((40, 3), (0, 10), (33, 9), (5, 1), (48, 2), (9, 2)):
        assert torch.equal(stream.take(start, count), ref[start:start + count]), (start, count)


# ------------------------------------------------------------------------------ sharded batches


@pytest.mark.parametrize("layout", LAYOUTS, ids=by_id)
def test_union_over_ranks_equals_one_process_batch(layout):
    n, b, ws, accum = layout
    ranks = make_ranks(n, b, ws, accum)
    single = make_ranks(n, b, 1, 1)[0]
    steps = steps_for(n, b)
    ref = reference_stream(n, SEED, steps * b // n + 1)
    for step in range(steps):
        one_process = single.indices(step)
        assert torch.equal(one_process, ref[step * b:(step + 1) * b])
        union = torch.cat([rk.indices(step, m) for m in range(accum) for rk in ranks])
        assert sorted(union.tolist()) == sorted(one_process.tolist()), step
        # each accumulation micro-step is one contiguous piece of the global batch, split over ranks
        # (so 2 ranks x 1 micro-step and 1 rank x 2 micro-steps read the same samples together)
        part = b // accum
        for m in range(accum):
            micro = torch.cat([rk.indices(step, m) for rk in ranks])
            assert sorted(micro.tolist()) == sorted(ref[step * b + m * part:step * b + (m + 1) * part].tolist())


@pytest.mark.parametrize("layout", LAYOUTS, ids=by_id)
def test_no_repeats_within_a_step_unless_it_straddles_an_epoch(layout):
    n, b, ws, accum = layout
    ranks = make_ranks(n, b, ws, accum)
    stream = SampleStream(n, SEED)
    for step in range(steps_for(n, b)):
        union = torch.cat([rk.indices(step, m) for m in range(accum) for rk in ranks]).tolist()
        first_epoch, last_epoch = (step * b) // n, ((step + 1) * b - 1) // n
        if first_epoch == last_epoch:
            assert len(set(union)) == len(union), step
        else:
            # a straddling batch may repeat a sample, but only across the epoch boundary:
            # the positions it covers are distinct and each epoch's part is repeat-free
            for epoch in range(first_epoch, last_epoch + 1):
                lo, hi = max(step * b, epoch * n), min((step + 1) * b, (epoch + 1) * n)
                part = stream.take(lo, hi - lo).tolist()
                assert len(set(part)) == len(part)
            assert Counter(union) == Counter(stream.take(step * b, b).tolist())


@pytest.mark.parametrize("layout", LAYOUTS, ids=by_id)
def test_every_epoch_sees_every_sample_exactly_once(layout):
    n, b, ws, accum = layout
    ranks = make_ranks(n, b, ws, accum)
    steps = steps_for(n, b)
    epochs = steps * b // n
    assert epochs >= 3 and steps * b == epochs * n
    stream = SampleStream(n, SEED)
    # per epoch of the stream (positions [e*N, (e+1)*N)): a permutation of the training set
    for e in range(epochs):
        assert sorted(stream.take(e * n, n).tolist()) == list(range(n)), e
    # and everything the ranks read over whole epochs is each sample exactly `epochs` times
    read = Counter()
    for step in range(steps):
        for rk in ranks:
            for m in range(accum):
                idx = rk.indices(step, m)
                assert len(idx) == rk.per_rank_batch_size
                read.update(idx.tolist())
    assert read == Counter({i: epochs for i in range(n)})


def test_same_seed_same_batches_other_seed_different():
    n, b = 103, 24
    a, a2 = make_ranks(n, b, 2, 2, seed=7), make_ranks(n, b, 2, 2, seed=7)
    other = make_ranks(n, b, 2, 2, seed=8)
    steps = steps_for(n, b)
    same = all(torch.equal(a[r].indices(s, m), a2[r].indices(s, m))
               for s in range(steps) for m in range(2) for r in range(2))
    assert same
    differs = [not torch.equal(a[0].indices(s, 0), other[0].indices(s, 0)) for s in range(steps)]
    assert sum(differs) > steps // 2


def test_different_epochs_give_different_batches():
    n, b = 100, 10  # 10 steps per epoch
    rk = make_ranks(n, b, 1, 1)[0]
    epoch_batches = [torch.cat([rk.indices(e * 10 + k) for k in range(10)]) for e in range(3)]
    assert not torch.equal(epoch_batches[0], epoch_batches[1])
    assert not torch.equal(epoch_batches[1], epoch_batches[2])
    assert not torch.equal(epoch_batches[0][:10], epoch_batches[1][:10])


def test_indices_do_not_depend_on_access_order():
    """Resuming at step k reads what an uninterrupted run reads at step k."""
    n, b, ws, accum = 103, 24, 3, 2
    forward = make_ranks(n, b, ws, accum)
    steps = steps_for(n, b)
    expected = {(s, m, r): forward[r].indices(s, m) for s in range(steps) for m in range(accum) for r in range(ws)}
    fresh = make_ranks(n, b, ws, accum)
    for s in reversed(range(steps)):
        for m in range(accum):
            for r in range(ws):
                assert torch.equal(fresh[r].indices(s, m), expected[(s, m, r)])


@pytest.mark.parametrize("layout", [(103, 24, 3, 2), (100, 8, 2, 2), (10, 8, 4, 1)], ids=by_id)
def test_get_returns_the_rows_of_indices(layout):
    n, b, ws, accum = layout
    x = torch.arange(n * 3, dtype=torch.float32).reshape(n, 3)
    y = torch.arange(n) + 1000
    for r in range(ws):
        rk = ShardedBatches(x, y, seed=SEED, plan=BatchPlan(b, ws, accum), rank=r)
        for step in range(steps_for(n, b)):
            for m in range(accum):
                idx = rk.indices(step, m)
                xb, yb = rk.get(step, m)
                assert xb.shape == (b // (ws * accum), 3) and xb.dtype == x.dtype
                assert torch.equal(xb, x[idx]) and torch.equal(yb, y[idx])


@pytest.mark.parametrize("layout", LAYOUTS, ids=by_id)
def test_per_rank_batch_size(layout):
    n, b, ws, accum = layout
    for rk in make_ranks(n, b, ws, accum):
        assert rk.per_rank_batch_size == b // (ws * accum) == BatchPlan(b, ws, accum).per_rank_batch_size
        assert rk.per_rank_batch_size * ws * accum == b


@pytest.mark.parametrize("n,b", [(103, 24), (100, 8), (10, 8)])
def test_epoch_at(n, b):
    plan = BatchPlan(b, 1, 1)
    assert plan.epoch_at(0, n) == 0
    for step in range(steps_for(n, b) + 1):
        assert plan.epoch_at(step, n) == pytest.approx(step * b / n)
        # whole epochs completed = epochs whose last stream position the first `step` batches consumed
        # (exact: int / int is correctly rounded, so an integral quotient is never just below it)
        assert math.floor(plan.epoch_at(step, n)) == (step * b) // n


# ------------------------------------------------------------------------------ evaluation shards


@pytest.mark.parametrize("ws", range(1, 9))
def test_eval_shards_partition_the_set(ws):
    for n in range(51):
        shards = [eval_shard(n, r, ws) for r in range(ws)]
        # contiguous and in rank order, covering range(n) exactly once
        assert shards[0].start == 0 and shards[-1].stop == n
        for a, b in zip(shards, shards[1:]):
            assert a.stop == b.start
        for s in shards:
            assert s.step == 1 and s.stop >= s.start
        seen = [i for s in shards for i in s]
        assert seen == list(range(n))
        sizes = [len(s) for s in shards]
        assert max(sizes) - min(sizes) <= 1, (n, ws, sizes)
        assert sum(sizes) == n


@pytest.mark.parametrize("n,ws", [(0, 3), (1, 4), (7, 3), (37, 8), (50, 4), (1000, 7)])
def test_distributed_accuracy_is_exact(n, ws):
    """Summing per-shard (loss sum, correct, count) as all_reduce does gives the full-set figures exactly."""
    gen = torch.Generator().manual_seed(n * 31 + ws)
    classes = 5
    logits = torch.randn(n, classes, generator=gen)
    labels = torch.randint(0, classes, (n,), generator=gen)
    full_correct = int((logits.argmax(1) == labels).sum())

    totals = torch.zeros(3, dtype=torch.float64)
    for r in range(ws):
        shard = eval_shard(n, r, ws)
        meter = SumMeter(torch.device("cpu"))
        # Trainer.evaluate walks its shard in batches; use an awkward batch size
        batch = 3 if n < 100 else 61
        for start in range(shard.start, shard.stop, batch):
            stop = min(start + batch, shard.stop)
            lb, yb = logits[start:stop], labels[start:stop]
            meter.add(torch.nn.functional.cross_entropy(lb, yb), lb, yb)
        totals += torch.cat([meter.totals, torch.tensor([float(meter.count)], dtype=torch.float64)])  # all_reduce(SUM)
    loss_sum, correct, count = totals.tolist()
    assert count == n
    assert correct == full_correct
    if n:
        assert Fraction(int(correct), int(count)) == Fraction(full_correct, n)
        full_loss = torch.nn.functional.cross_entropy(logits.double(), labels, reduction="sum").item()
        assert loss_sum == pytest.approx(full_loss, rel=1e-5)


# ------------------------------------------------------------------------------ batch math


@pytest.mark.parametrize("b,ws,accum", [(24, 5, 1), (24, 7, 2), (10, 4, 1), (8, 3, 1), (6, 4, 2), (3, 4, 1)])
def test_per_rank_batch_size_rejects_indivisible(b, ws, accum):
    with pytest.raises(UserError) as info:
        BatchPlan(b, ws, accum)
    msg = str(info.value)
    assert "train.global_batch_size" in msg and str(b) in msg
    # the suggested multiples do split
    parts = ws * accum
    assert f"multiple of {parts}" in msg


@pytest.mark.parametrize("b,ws,accum,want", [(24, 1, 1, 24), (24, 4, 2, 3), (24, 3, 2, 4), (8, 8, 1, 1),
                                              (128, 2, 4, 16)])
def test_per_rank_batch_size_values(b, ws, accum, want):
    assert BatchPlan(b, ws, accum).per_rank_batch_size == want


@pytest.mark.parametrize("epochs,n,b,want", [
    (3, 103, 24, 13),      # 309 samples / 24 = 12.875 -> 13
    (1, 100, 8, 13),       # 12.5 -> 13
    (2, 100, 10, 20),      # exact
    (0.5, 100, 10, 5),
    (0.01, 100, 8, 1),     # never 0 steps
    (2.5, 4000, 128, 79),  # 78.125 -> 79
])
def test_total_steps_from_epochs(epochs, n, b, want):
    assert BatchPlan(b, 1, 1).total_steps(epochs, 0, n) == want
    # enough steps to cover the samples, and not one more
    assert want * b >= epochs * n
    assert want == 1 or (want - 1) * b < epochs * n


def test_total_steps_exact_for_decimal_epochs():
    assert BatchPlan(100, 1, 1).total_steps(1.1, 0, 50000) == 550
    assert BatchPlan(50, 1, 1).total_steps(1.1, 0, 45000) == 990


def test_total_steps_max_steps_wins():
    assert BatchPlan(24, 1, 1).total_steps(10.0, 7, 103) == 7
    assert BatchPlan(8, 1, 1).total_steps(0.01, 1, 100) == 1
    assert BatchPlan(8, 1, 1).total_steps(100.0, 5000, 10) == 5000
