"""Hydra multirun under launchers: every job on every rank, in order, one directory per job chosen by rank 0,
the process group reused; a bad job stops every rank before any training."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import BIN, FAST, base_env, free_port
from ddtrain.errors import EXIT_USER

pytestmark = pytest.mark.slow

RUN = ["model=mlp", "train.max_steps=10", "train.global_batch_size=64", "train.lr_scaling=none", "train.eval_every=0",
       "logging.tensorboard=false"]


def launcher(via: str) -> list[str]:
    if via == "mpirun":
        return [str(BIN / "mpirun"), "-np", "2", "--oversubscribe", "--bind-to", "none"]
    return [str(BIN / "torchrun"), "--nproc-per-node=2", f"--master-port={free_port()}", "--no-python"]


def multirun(via, tmp_path, cache, *overrides, timeout=300):
    cmd = [*launcher(via), str(BIN / "ddtrain-train"), "-m", *FAST, f"dataset.cache_dir={cache}", *RUN, *overrides]
    return subprocess.run(cmd, env=dict(base_env(), OMP_NUM_THREADS="1"), cwd=tmp_path, text=True,
                          capture_output=True, timeout=timeout)


@pytest.mark.parametrize("via", ["mpirun", "torchrun"])
def test_every_job_runs_on_every_rank_in_its_own_directory(via, launch, tmp_path, mnist1d_cache):
    work = tmp_path / "work"
    work.mkdir()
    p = multirun(via, work, mnist1d_cache, "train.lr=0.05,0.1", "hydra.sweep.dir=multi")
    assert p.returncode == 0, p.stdout + p.stderr
    # only rank 0's Hydra wrote anything: the sweep directory, nothing else in the working directory
    assert sorted(x.name for x in work.iterdir()) == ["multi"]
    assert sorted(x.name for x in (work / "multi").iterdir()) == ["0", "1", "multirun.yaml"]
    jobs = [json.loads((work / "multi" / str(i) / "summary.json").read_text()) for i in (0, 1)]
    assert [j["lr"] for j in jobs] == [0.05, 0.1] and all(j["world_size"] == 2 and j["ranks_identical"] for j in jobs)
    assert all("[rank 1/2]" in (work / "multi" / str(i) / "train.log").read_text() for i in (0, 1))
    # the second job, on the reused process group, trains exactly what a run of its own does
    alone = launch([*RUN, "train.lr=0.1"], ranks=2)
    assert alone.returncode == 0, alone.stderr
    assert jobs[1]["parameter_digest"] == alone.summary["parameter_digest"]


def test_a_bad_job_stops_every_rank_before_any_training(tmp_path, mnist1d_cache):
    p = multirun("mpirun", tmp_path, mnist1d_cache, "train.lr=0.1,abc", "hydra.sweep.dir=multi")
    assert p.returncode == EXIT_USER, p.stdout + p.stderr
    lines = [line for line in p.stderr.splitlines() if line.startswith("ddtrain: error:")]
    # the same line on every rank that got to say it (mpirun stops the others once one rank exits non-zero)
    assert lines and set(lines) == {"ddtrain: error: train.lr=abc: 'abc' is not a number; train.lr takes a number, "
                                    "e.g. train.lr=0.2"}, p.stderr
    assert not (tmp_path / "multi").exists()
