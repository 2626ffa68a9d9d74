"""Fail fast on one machine: a rank that raises, a non-finite loss with train.stop_on_nan, a killed rank.

Every other rank stops at once with one line naming the failed rank and the newest checkpoint, exits
non-zero, and so do mpirun and torchrun. Faults are injected with DDTRAIN_INJECT_FAULT (real
exceptions, a real SIGKILL); the network faults between two hosts are in test_two_hosts.py.
"""

from __future__ import annotations

import subprocess

import pytest
import torch

from conftest import BIN, FAST, base_env, free_port
from ddtrain.distributed import failure
from ddtrain.distributed.failure import Job
from ddtrain.errors import EXIT_FAILED, EXIT_PEER
from helpers.rankrun import finish, start_ranks

TIMEOUT_S = 10  # dist.timeout_s of these runs
RUN = ["model=mlp", "train.max_steps=30", "train.global_batch_size=64", "train.eval_every=0",
       "logging.tensorboard=false", "checkpoint.every_steps=4", f"dist.timeout_s={TIMEOUT_S}"]
GLOO_RESET = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error "
              "[10.233.0.2]:41194: Connection reset by peer. This is typically caused by a remote worker hanging "
              "or bugs in the application. Check the logs of the remote worker before reporting an error.")
GLOO_TIMEOUT = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] "
                "Timed out waiting 10000ms for recv operation to complete")
# a rank's own errors inside a collective (what torch 2.x prints), and NCCL's word for a lost peer
NCCL_OWN_CUDA_ERROR = ("NCCL error in: /pytorch/torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:3356, unhandled cuda "
                       "error (run with NCCL_DEBUG=INFO for details), NCCL version 2.21.5\nncclUnhandledCudaError: "
                       "Call to CUDA function failed.\nLast error:\nCuda failure 'an illegal memory access was "
                       "encountered'")
GLOO_OWN_ERROR = ("ProcessGroupGloo::allreduce: unsupported reduction operation (allreduce of sparse tensors only "
                  "works with ReduceOp.SUM)")
NCCL_REMOTE = ("NCCL error in: ProcessGroupNCCL.cpp:1970, remote process exited or there was a network error, NCCL "
               "version 2.21.5\nncclRemoteError: A call failed possibly due to a network error or a remote process "
               "exiting prematurely.")


# ---- the pieces, in this process ---------------------------------------------------------------

def test_backend_errors_are_told_apart_from_bugs():
    assert failure.is_collective_error(RuntimeError(GLOO_RESET))
    assert failure.is_collective_error(RuntimeError(GLOO_TIMEOUT))
    assert failure.is_collective_error(torch.distributed.DistBackendError("NCCL communicator was aborted"))
    assert not failure.is_collective_error(ValueError("bad batch"))
    assert not failure.is_collective_error(RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 5x6)"))
    # classified by what happened, not by the library's name in the message
    assert not failure.is_collective_error(torch.distributed.DistBackendError(NCCL_OWN_CUDA_ERROR))
    assert not failure.is_collective_error(RuntimeError(GLOO_OWN_ERROR))
    assert failure.is_collective_error(torch.distributed.DistBackendError(NCCL_REMOTE))
    assert failure.is_collective_error(torch.distributed.DistNetworkError("failed to recv, got 0 bytes"))
    assert failure.one_line(RuntimeError(GLOO_RESET)) == \
        "RuntimeError: Read error [10.233.0.2]:41194: Connection reset by peer"
    assert failure.one_line(ValueError("a\nb")) == "ValueError: a"


@pytest.fixture
def two_rank_job(tmp_path, monkeypatch):
    """This process as rank 0 of 2 (rank 1 on host n1, 10.233.0.2), checkpoints in tmp_path/checkpoints."""
    job = Job(rank=0, world_size=2, run_dir=tmp_path, checkpoints=tmp_path / "checkpoints",
              note="no checkpoint written yet", hosts=[("n0", ["127.0.0.1", "10.233.0.1"]),
                                                      ("n1", ["127.0.0.1", "10.233.0.2"])])
    monkeypatch.setattr(failure, "job", job)
    monkeypatch.setattr(failure, "PEER_REPORT_WAIT_S", 0.2)
    return job


def test_survivor_names_the_lost_peer_and_the_checkpoint(two_rank_job, tmp_path):
    line = failure.peer_message(RuntimeError(GLOO_RESET))
    assert line.startswith("lost rank 1 (host n1, 10.233.0.2)") and "Connection reset by peer" in line
    line = failure.peer_message(RuntimeError(GLOO_TIMEOUT))
    assert line.startswith("no answer from rank 1 (host n1, 10.233.0.2) within dist.timeout_s")
    assert failure.checkpoint_note() == f"no checkpoint written yet in {tmp_path / 'checkpoints'}"
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "step_00000004.pt").write_bytes(b"x")
    (tmp_path / "checkpoints" / "step_00000008.pt").write_bytes(b"x")
    (tmp_path / "checkpoints" / ".step_00000012.pt.abc.tmp").write_bytes(b"half")  # never named
    assert failure.checkpoint_note().startswith(f"newest checkpoint {tmp_path / 'checkpoints' / 'step_00000008.pt'}")


def test_survivor_prefers_the_failed_rank_own_message(two_rank_job, tmp_path):
    two_rank_job.rank = 1
    failure.record("NonFiniteLoss: loss is nan at step 6")
    assert (tmp_path / "failures" / "rank1.txt").read_text() == "NonFiniteLoss: loss is nan at step 6\n"
    two_rank_job.rank = 0
    assert failure.peer_message(RuntimeError(GLOO_RESET)) == "rank 1 failed: NonFiniteLoss: loss is nan at step 6"


# ---- real processes --------------------------------------------------------------------------

def _checkpoint_loads(run_dir, step):
    ckpts = run_dir / "checkpoints"
    assert not [p.name for p in ckpts.iterdir() if p.name.startswith(".")], "half-written checkpoint left"
    state = torch.load(ckpts / f"step_{step:08d}.pt", weights_only=True)
    assert state["step"] == step


@pytest.mark.slow
def test_nan_on_one_rank_stops_every_rank_with_its_message(tmp_path, mnist1d_cache):
    run_dir = tmp_path / "run"
    ranks = start_ranks([*RUN, "train.stop_on_nan=true"], run_dir, mnist1d_cache,
                        env_per_rank={1: {"DDTRAIN_INJECT_FAULT": "1:10:nan"}})
    codes = finish(ranks, 180)
    out = ranks[0].output() + ranks[1].output()
    assert codes == [EXIT_PEER, EXIT_FAILED], out
    expected = ("rank 1 failed: NonFiniteLoss: loss is nan at step 10 on rank 1's batch (train.stop_on_nan=true); "
                f"newest checkpoint {run_dir / 'checkpoints' / 'step_00000008.pt'}")
    for r in ranks:  # one line each, the same on both ranks
        assert len(r.error_lines()) == 1 and expected in r.error_lines()[0], r.output()
    assert "terminate called" not in out and "Traceback" not in out
    # a connection reset, not a timeout: rank 0 left right after rank 1 (well within dist.timeout_s)
    assert ranks[0].ended - ranks[1].ended < TIMEOUT_S
    assert (run_dir / "failures" / "rank1.txt").read_text().startswith("NonFiniteLoss: loss is nan")
    assert "Traceback" in (run_dir / "train.log").read_text()  # the details go to the log, not the console
    _checkpoint_loads(run_dir, 8)


@pytest.mark.slow
def test_own_error_inside_a_collective_is_not_a_lost_rank(tmp_path, mnist1d_cache):
    """Rank 1's own Gloo error (a bad collective call): it exits 1 with that error; rank 0 names rank 1's failure."""
    run_dir = tmp_path / "run"
    ranks = start_ranks(RUN, run_dir, mnist1d_cache, env_per_rank={1: {"DDTRAIN_INJECT_FAULT": "1:10:collective"}})
    codes = finish(ranks, 180)
    out = ranks[0].output() + ranks[1].output()
    assert codes == [EXIT_PEER, EXIT_FAILED], out
    expected = "rank 1 failed: RuntimeError: ProcessGroupGloo::allreduce: unsupported reduction operation"
    for r in ranks:
        assert len(r.error_lines()) == 1 and expected in r.error_lines()[0], r.output()
    assert "lost rank" not in out


@pytest.mark.slow
def test_killed_rank_survivor_names_it(tmp_path, mnist1d_cache):
    run_dir = tmp_path / "run"
    ranks = start_ranks(RUN, run_dir, mnist1d_cache, env_per_rank={1: {"DDTRAIN_INJECT_FAULT": "1:10:kill"}})
    codes = finish(ranks, 180)
    assert codes == [EXIT_PEER, -9], ranks[0].output()
    line = ranks[0].error_lines()
    assert len(line) == 1 and "[rank 0/2] lost rank 1 (host " in line[0] and "Connection" in line[0], line
    assert f"newest checkpoint {run_dir / 'checkpoints' / 'step_00000008.pt'}" in line[0]
    assert ranks[0].ended - ranks[1].ended < TIMEOUT_S
    _checkpoint_loads(run_dir, 8)


def _launcher(cmd, tmp_path, fault):
    env = dict(base_env(), DDTRAIN_INJECT_FAULT=fault, OMP_NUM_THREADS="1")
    try:
        return subprocess.run(cmd, env=env, cwd=tmp_path, text=True, capture_output=True, timeout=180)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"launcher still running after 180 s: {exc.stdout}{exc.stderr}") from None


@pytest.mark.slow
def test_mpirun_exits_nonzero_when_a_rank_is_killed(tmp_path, mnist1d_cache):
    args = [*FAST, f"dataset.cache_dir={mnist1d_cache}", f"hydra.run.dir={tmp_path / 'run'}", *RUN]
    p = _launcher([str(BIN / "mpirun"), "-np", "2", "--oversubscribe", "--bind-to", "none",
                   str(BIN / "ddtrain-train"), *args], tmp_path, "1:10:kill")
    assert p.returncode != 0
    assert "rank 1" in p.stdout + p.stderr and "signal 9" in p.stdout + p.stderr


@pytest.mark.slow
def test_torchrun_exits_nonzero_on_a_rank_exception(tmp_path, mnist1d_cache):
    args = [*FAST, f"dataset.cache_dir={mnist1d_cache}", f"hydra.run.dir={tmp_path / 'run'}", *RUN]
    p = _launcher([str(BIN / "torchrun"), "--nproc-per-node=2", f"--master-port={free_port()}", "--no-python",
                   str(BIN / "ddtrain-train"), *args], tmp_path, "1:10:raise")
    assert p.returncode != 0
    lines = [ln for ln in p.stderr.splitlines() if "ddtrain: error:" in ln]
    assert any(ln.startswith("ddtrain: error: [rank 1/2] rank 1 failed: ValueError: injected bad batch at step 10")
               for ln in lines), p.stderr


@pytest.mark.slow
def test_sweep_entry_point_fails_fast_too(tmp_path, mnist1d_cache):
    sweep_dir = tmp_path / "sweep"
    cmd = [str(BIN / "ddtrain-sweep"), "logging.progress=false", f"dataset.cache_dir={mnist1d_cache}",
           f"hydra.run.dir={sweep_dir}", "model=mlp", "sweep.batch_sizes=[64]", "sweep.seeds=[0]",
           "sweep.budget=steps:20", "sweep.warmup_steps=2", "sweep.measure_steps=5"]
    p = _launcher(cmd, tmp_path, "0:3:raise")
    assert p.returncode == EXIT_FAILED, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if "ddtrain: error:" in ln]
    assert lines == [f"ddtrain: error: ValueError: injected bad batch at step 3; finished points are kept in "
                     f"{sweep_dir / 'sweep.csv'}; run the same command with hydra.run.dir={sweep_dir} to train "
                     "only the missing ones"], p.stderr
