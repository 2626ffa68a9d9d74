"""Preemption without SLURM: the signal handlers, the stop vote, and an in-process run stopped and resumed.

The multi-rank and real-SLURM cases (a signal to one rank only, sbatch requeue) are in test_slurm.py.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from ddtrain.distributed import preempt
from ddtrain.config import config_dir, register_configs
from ddtrain.errors import PREEMPTED_EXIT_CODE, Preempted

RUN = ["model=mlp", "train.max_steps=30", "train.global_batch_size=32", "train.eval_every=0",
       "train.log_every=5", "train.throughput_warmup_steps=0", "logging.progress=false",
       "logging.tensorboard=false", "dataset.num_samples=400", "checkpoint.every_steps=0"]


def compose_train(overrides: list[str]):
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(config_dir()), version_base="1.3", job_name="test-preempt"):
            return compose("train", overrides=overrides)
    finally:
        GlobalHydra.instance().clear()


class _One:
    world_size = 1
    device = None


def test_handlers_set_a_flag_and_are_restored():
    before = signal.getsignal(signal.SIGUSR1)
    assert preempt.install()
    try:
        vote = preempt.StopVote(_One())
        assert not vote.poll()
        signal.raise_signal(signal.SIGUSR1)  # handled: the process goes on
        assert preempt.received() == signal.SIGUSR1
        assert vote.poll()
    finally:
        preempt.uninstall()
    assert signal.getsignal(signal.SIGUSR1) is before
    assert preempt.received() is None


class _TwoRanks:
    """Two identical ranks as seen from one: the sum doubles, and the collectives are counted."""

    world_size = 2
    device = torch.device("cpu")

    def __init__(self):
        self.votes = 0

    def all_reduce_sum(self, tensor):
        self.votes += 1
        return tensor.mul_(2)


def test_votes_come_about_every_interval_and_see_a_signal():
    dist = _TwoRanks()
    vote = preempt.StopVote(dist, interval_s=0.05)
    assert preempt.install()
    try:
        time.sleep(0.002)
        assert not vote.poll()  # the first step is always voted on: it sets the cadence
        assert dist.votes == 1 and vote.every > 1  # a 2 ms step: many steps per 50 ms
        for _ in range(vote.every - 2):
            assert not vote.poll()
        signal.raise_signal(signal.SIGTERM)
        assert not vote.poll()  # a signal between votes waits for the next one
        assert dist.votes == 1  # no collective between votes
        assert vote.poll()  # the next vote: every rank sees the sum of the flags
        assert dist.votes == 2
    finally:
        preempt.uninstall()


def test_second_signal_kills():
    code = ("import signal, time\nfrom ddtrain.distributed import preempt\npreempt.install()\n"
            "signal.raise_signal(signal.SIGTERM)\nprint('first handled', flush=True)\n"
            "signal.raise_signal(signal.SIGTERM)\ntime.sleep(5)\nprint('survived')\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.stdout == "first handled\n"
    assert p.returncode == -signal.SIGTERM


def test_exit_code_is_distinct():
    assert Preempted.exit_code == PREEMPTED_EXIT_CODE == 75
    assert PREEMPTED_EXIT_CODE not in (0, 1, 2)  # success, crash, bad input (UserError)


def test_preempted_run_checkpoints_and_resumes_to_the_same_parameters(in_process, tmp_path, monkeypatch):
    """A SIGTERM during step 12 (checkpoint.every_steps=0): stop after it, checkpoint, resume, same digest."""
    from ddtrain import fit
    from ddtrain.runtime.step import TrainStep

    cache = [f"dataset.cache_dir={tmp_path / 'cache'}"]
    straight = fit(compose_train(RUN + cache), run_dir=tmp_path / "straight")

    original = TrainStep.__call__

    def signalled_step(self, step, feed):
        original(self, step, feed)
        if step == 12:
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(TrainStep, "__call__", signalled_step)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Preempted, match=r"preempted \(SIGTERM\) at step 13/30"):
        fit(compose_train(RUN + cache), run_dir=tmp_path / "cut")
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored after the loop
    assert (tmp_path / "cut" / "checkpoints" / "step_00000013.pt").is_file()
    assert not (tmp_path / "cut" / "summary.json").exists()

    monkeypatch.setattr(TrainStep, "__call__", original)
    resumed = fit(compose_train(RUN + cache), run_dir=tmp_path / "cut")
    assert resumed["resumed_from"].endswith("step_00000013.pt")
    assert resumed["trained_steps_this_run"] == 17
    assert resumed["parameter_digest"] == straight["parameter_digest"]


class _TwoRanksOnGPU(_TwoRanks):
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (launch/gpu-check.sh)")
def test_gpu_vote_is_enqueued_and_read_one_step_later():
    """On a GPU the vote goes through pinned memory and an event: its outcome is read at the next step."""
    dist = _TwoRanksOnGPU()
    vote = preempt.StopVote(dist, interval_s=0.0)  # vote at every step
    assert vote.lagged
    assert preempt.install()
    try:
        assert not vote.poll()  # first vote enqueued, nothing to read yet
        signal.raise_signal(signal.SIGUSR1)
        assert not vote.poll()  # reads the first vote (no signal then), enqueues one with the flag
        assert vote.poll()  # reads that one: stop
        assert dist.votes == 3 and vote.every == 1
        assert vote.drain()  # the third vote, still in flight, read when the loop ends
        assert not vote.drain()  # nothing left in flight
    finally:
        preempt.uninstall()
