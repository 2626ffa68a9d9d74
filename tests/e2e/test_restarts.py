"""ddtrain-launch --max-restarts: a rank killed mid-run, the job restarts by itself in the same run directory and
ends with the parameters of an uninterrupted run; a rank's own error is not restarted; torchrun names the cause."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import BIN, FAST, base_env
from ddtrain.errors import EXIT_FAILED
from helpers.rankrun import run_ranks

pytestmark = pytest.mark.slow

RUN = ["model=mlp", "model.dropout=0.1", "train.max_steps=30", "train.global_batch_size=64", "train.eval_every=0",
       "logging.tensorboard=false", "checkpoint.every_steps=4", "checkpoint.keep_last=3", "dist.timeout_s=20"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, mnist1d_cache):
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    run_ranks(RUN, run_dir, mnist1d_cache)
    return json.loads((run_dir / "summary.json").read_text())


def launch(via, run_dir, cache, fault, *extra, restarts=1, cwd=None):
    env = dict(base_env(), PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", OMP_NUM_THREADS="1",
               DDTRAIN_INJECT_FAULT=fault)
    cmd = [str(BIN / "ddtrain-launch"), "-n", "2", "--via", via, "--max-restarts", str(restarts), "--",
           str(BIN / "ddtrain-train"), *FAST, f"dataset.cache_dir={cache}", *RUN, *extra,
           *([f"hydra.run.dir={run_dir}"] if run_dir else [])]
    return subprocess.run(cmd, env=env, cwd=cwd or run_dir.parent, text=True, capture_output=True, timeout=400)


@pytest.mark.parametrize("via", ["mpirun", "torchrun"])
def test_a_killed_rank_restarts_the_job_which_ends_as_if_uninterrupted(via, uninterrupted, tmp_path, mnist1d_cache):
    # no hydra.run.dir: ddtrain-launch resolves outputs/<date>/<time> once, so the restart finds the checkpoints
    p = launch(via, None, mnist1d_cache, "1:10:kill:0", cwd=tmp_path)  # rank 1 SIGKILLs itself at step 10, once
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    summaries = list((tmp_path / "outputs").glob("*/*/summary.json"))
    assert len(summaries) == 1, summaries  # one run directory, one summary
    run_dir = summaries[0].parent
    summary = json.loads(summaries[0].read_text())
    assert summary["resumed_from"] == str(run_dir / "checkpoints" / "step_00000008.pt")
    assert summary["steps"] == 30 and summary["trained_steps_this_run"] == 22
    assert summary["parameter_digest"] == uninterrupted["parameter_digest"]
    notes = (run_dir / "failures.log").read_text()
    if via == "mpirun":  # mpirun kills the other ranks at once; ddtrain-launch notes what happened and restarts
        assert ("ddtrain-launch: attempt 1 ended with exit status 137 (a rank was killed by SIGKILL); restarting "
                f"(1 of 1), resuming from the newest checkpoint in {run_dir}") in notes, notes
        assert "restarting (1 of 1)" in p.stderr
    else:  # torchrun restarts by itself; the survivor noted why it stopped
        assert "[rank 0/2] exit status 3: lost rank 1 (host " in notes, notes


def test_a_rank_own_error_is_not_restarted(tmp_path, mnist1d_cache):
    p = launch("mpirun", tmp_path / "run", mnist1d_cache, "1:10:raise")
    assert p.returncode == EXIT_FAILED, p.stderr[-3000:]
    assert "ddtrain-launch: exit status 1 (a rank's own error or bad input): not restarted" in p.stderr
    assert "restarting" not in p.stderr
    assert "[rank 1/2] exit status 1: rank 1 failed: ValueError: injected bad batch at step 10" in \
        (tmp_path / "run" / "failures.log").read_text()
    assert not (tmp_path / "run" / "summary.json").exists()


def test_torchrun_summary_names_the_cause(tmp_path, mnist1d_cache):
    """Without restarts left, torchrun's own failure summary shows ddtrain's line (TORCHELASTIC_ERROR_FILE)."""
    p = launch("torchrun", tmp_path / "run", mnist1d_cache, "1:10:raise", restarts=0)
    assert p.returncode != 0
    out = p.stdout + p.stderr
    assert "Root Cause" in out and "error_file: <N/A>" not in out.split("Root Cause")[1], out[-3000:]
    assert "traceback : rank 1 failed: ValueError: injected bad batch at step 10" in out, out[-3000:]
