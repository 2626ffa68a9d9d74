"""Shared helpers: launch ddtrain for real (one process, env:// ranks, torchrun, mpirun) and read its outputs."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

BIN = Path(sys.executable).parent  # the virtualenv's bin: ddtrain-train, mpirun, torchrun

# small, fast defaults for end-to-end runs
FAST = ["logging.progress=false", "train.log_every=5", "train.throughput_warmup_steps=2"]


@dataclass
class Result:
    """What a launched job left: exit code, output, and its run directory."""

    returncode: int
    stdout: str
    stderr: str
    run_dir: Path

    @property
    def summary(self) -> dict:
        return json.loads((self.run_dir / "summary.json").read_text())

    def checkpoint(self, step: int) -> dict:
        return torch.load(self.run_dir / "checkpoints" / f"step_{step:08d}.pt", weights_only=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env() -> dict:
    env = dict(os.environ)
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", PYTHONUNBUFFERED="1")
    for key in list(env):  # a test must not inherit a launcher's identity from its own environment
        if key.startswith(("OMPI_COMM_WORLD", "PMI_", "SLURM_", "HOROVOD_")) or key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            env.pop(key)
    return env


LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                 "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
                 "OMPI_COMM_WORLD_LOCAL_SIZE", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "SLURM_PROCID",
                 "SLURM_NTASKS", "SLURM_STEP_ID", "SLURM_STEPID")


@pytest.fixture
def in_process(monkeypatch):
    """For ddtrain.train.run() inside the test process: one rank, and afterwards no log handlers left open."""
    for name in LAUNCHER_VARS:
        monkeypatch.delenv(name, raising=False)
    yield
    logger = logging.getLogger("ddtrain")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


@pytest.fixture(scope="session")
def mnist1d_cache(tmp_path_factory) -> Path:
    """One MNIST-1D cache for the whole session (generated once, about a second)."""
    return tmp_path_factory.mktemp("ddtrain-cache")


@pytest.fixture
def launch(mnist1d_cache, tmp_path):
    """launch(overrides, ranks=1, via="env"|"torchrun"|"mpirun", run_dir=None, cwd=None) -> Result."""

    def _launch(overrides, ranks=1, via="env", run_dir=None, cwd=None, timeout=240, extra_env=None):
        run_dir = Path(run_dir) if run_dir else tmp_path / "run"
        args = [*FAST, f"dataset.cache_dir={mnist1d_cache}", *overrides]
        if not any(a.startswith("hydra.run.dir=") for a in args) and run_dir is not None:
            args.append(f"hydra.run.dir={run_dir}")
        env = base_env()
        env.update(extra_env or {})
        train = str(BIN / "ddtrain-train")
        if via == "mpirun":
            cmd = [str(BIN / "mpirun"), "-np", str(ranks), "--oversubscribe", "--bind-to", "none", train, *args]
        elif via == "torchrun":
            cmd = [str(BIN / "torchrun"), f"--nproc-per-node={ranks}", f"--master-port={free_port()}",
                   "--no-python", train, *args]
        elif ranks == 1:
            cmd = [train, *args]
        else:  # env:// ranks started by hand, as any launcher would
            port = free_port()
            procs = []
            for rank in range(ranks):
                e = dict(env, RANK=str(rank), WORLD_SIZE=str(ranks), LOCAL_RANK=str(rank),
                         LOCAL_WORLD_SIZE=str(ranks), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
                procs.append(subprocess.Popen([train, *args], env=e, cwd=cwd or tmp_path, text=True,
                                              stdout=subprocess.PIPE, stderr=subprocess.PIPE))
            outs = [p.communicate(timeout=timeout) for p in procs]
            code = max(abs(p.returncode) for p in procs)
            return Result(code, "".join(o for o, _ in outs), "".join(e for _, e in outs), run_dir)
        p = subprocess.run(cmd, env=env, cwd=cwd or tmp_path, text=True, capture_output=True, timeout=timeout)
        return Result(p.returncode, p.stdout, p.stderr, run_dir)

    return _launch


# SGD with momentum on the MNIST-1D CNN; 24 steps, final state saved as a checkpoint to compare
EQUIV = ["model=cnn1d", "dataset=mnist1d", "optimizer=sgd", "optimizer.momentum=0.9", "schedule=constant",
         "train.lr=0.05", "train.lr_scaling=none", "train.global_batch_size=32", "train.max_steps=24",
         "checkpoint.every_steps=24", "logging.tensorboard=false"]


def assert_same_model(a: dict, b: dict, exact: bool = False) -> None:
    """Equal state dicts: bit for bit, or within fp32 tolerance (rtol 1e-4, atol 1e-6)."""
    assert a.keys() == b.keys()
    for name in a:
        if exact:
            assert torch.equal(a[name], b[name]), name
        else:
            torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.fixture(scope="session")
def one_rank_model(tmp_path_factory, mnist1d_cache):
    """The reference for EQUIV: one process, global batch 32 (every world size and engine must reproduce it)."""
    run_dir = tmp_path_factory.mktemp("one-rank")
    p = subprocess.run([str(BIN / "ddtrain-train"), *FAST, f"dataset.cache_dir={mnist1d_cache}", *EQUIV,
                        f"hydra.run.dir={run_dir}"], env=base_env(), text=True, capture_output=True, timeout=240)
    assert p.returncode == 0, p.stderr
    return torch.load(run_dir / "checkpoints" / "step_00000024.pt", weights_only=True)["model"]
