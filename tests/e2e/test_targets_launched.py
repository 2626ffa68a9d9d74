"""The user's own model and loss (`_target_`) under real launchers: the same parameters as one process.

The user's module (tests/helpers/usernets.py) is copied into the ranks' working directory (mpirun,
srun: a console script does not put the working directory on sys.path, ddtrain does) or found through
PYTHONPATH (torchrun).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import BIN, EQUIV, FAST, assert_same_model, base_env
from helpers.rankrun import finish, start_ranks

pytestmark = pytest.mark.slow

USERNETS = Path(__file__).resolve().parents[1] / "helpers" / "usernets.py"
# EQUIV's SGD run with the user's classifier instead of the built-in CNN
WIDENET = [*EQUIV, "model._target_=usernets.WideNet", "model.width=24"]
REGRESSION = [*EQUIV, "model._target_=usernets.Regressor", "loss._target_=usernets.label_mse", "train.lr=0.01"]


def beside(folder: Path) -> Path:
    """The user's module in `folder`, as a user's project has it."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(USERNETS, folder / "usernets.py")
    return folder


def test_user_model_under_mpirun_equals_one_process(launch, tmp_path):
    cwd = beside(tmp_path / "project")
    one = launch(WIDENET, ranks=1, run_dir=tmp_path / "one", cwd=cwd)
    assert one.returncode == 0, one.stderr
    two = launch(WIDENET, ranks=2, via="mpirun", run_dir=tmp_path / "two", cwd=cwd)
    assert two.returncode == 0, two.stderr + two.stdout
    s = two.summary
    assert (s["world_size"], s["launcher"], s["model"], s["ranks_identical"]) == (2, "openmpi", "usernets.WideNet", True)
    assert two.checkpoint(24)["model"]["net.1.weight"].shape == (24, 40)  # width and the dataset's shape arrived
    assert_same_model(two.checkpoint(24)["model"], one.checkpoint(24)["model"])


def test_regression_with_an_mse_target_under_torchrun_equals_one_process(launch, tmp_path):
    lib = beside(tmp_path / "lib")
    env = {"PYTHONPATH": str(lib)}
    one = launch(REGRESSION, ranks=1, run_dir=tmp_path / "one", extra_env=env)
    assert one.returncode == 0, one.stderr
    two = launch(REGRESSION, ranks=2, via="torchrun", run_dir=tmp_path / "two", extra_env=env)
    assert two.returncode == 0, two.stderr + two.stdout
    assert_same_model(two.checkpoint(24)["model"], one.checkpoint(24)["model"])
    for run in (one, two):
        assert not [k for k in run.summary if "accuracy" in k]
        records = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
        assert records and all("loss" in r and "accuracy" not in r for r in records)
    assert "test loss" in two.stdout and "accuracy" not in two.stdout


@pytest.mark.parametrize("overrides,needle", [
    (["model._target_=usernets.NoSuchNet"], "model._target_=usernets.NoSuchNet: module usernets"),
    (["model._target_=usernets.Broken"], "model._target_=usernets.Broken failed: ValueError: cannot handle"),
    (["model._target_=usernets.Regressor"], "loss cross-entropy (the default) fails on the model's outputs"),
], ids=["does-not-import", "constructor-fails", "loss-does-not-fit"])
def test_bad_target_is_one_line_exit_2_on_every_rank(mnist1d_cache, tmp_path, overrides, needle):
    beside(tmp_path)  # start_ranks runs them in run_dir's parent
    ranks = start_ranks(overrides, tmp_path / "run", mnist1d_cache)
    codes = finish(ranks, 180)
    assert codes == [2, 2], [r.output() for r in ranks]
    lines = [r.error_lines() for r in ranks]
    assert all(len(found) == 1 for found in lines), lines
    assert lines[0] == lines[1] and needle in lines[0][0], lines  # the same line on every rank
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # stopped before any training step


def test_user_model_under_srun_from_the_working_directory(launch, mnist1d_cache, tmp_path):
    from helpers.slurm_cluster import require_slurm, start

    require_slurm()
    cwd = beside(tmp_path / "project")
    one = launch(WIDENET, ranks=1, run_dir=tmp_path / "one", cwd=cwd)
    assert one.returncode == 0, one.stderr
    args = [*FAST, f"dataset.cache_dir={mnist1d_cache}", *WIDENET, f"hydra.run.dir={tmp_path / 'srun'}"]
    with start(tmp_path / "slurm") as cluster:
        p = cluster.run(["srun", "-n", "2", str(BIN / "ddtrain-train"), *args], timeout=240, env=base_env(),
                        cwd=cwd)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    s = json.loads((tmp_path / "srun" / "summary.json").read_text())
    assert (s["world_size"], s["launcher"], s["model"]) == (2, "slurm", "usernets.WideNet")
    import torch

    got = torch.load(tmp_path / "srun" / "checkpoints" / "step_00000024.pt", weights_only=True)["model"]
    assert_same_model(got, one.checkpoint(24)["model"])


def test_regression_sweep_with_a_validation_loss_target(mnist1d_cache, tmp_path):
    import subprocess

    cwd = beside(tmp_path)
    d = tmp_path / "sweep"
    p = subprocess.run([str(BIN / "ddtrain-sweep"), "logging.progress=false", f"dataset.cache_dir={mnist1d_cache}",
                        "model._target_=usernets.Regressor", "loss._target_=usernets.label_mse", "optimizer=adam",
                        "train.lr=0.01", "sweep.batch_sizes=[64,256]", "sweep.budget=epochs:3",
                        "sweep.target_metric=val_loss", "sweep.target=9", "sweep.warmup_steps=2",
                        "sweep.measure_steps=10", f"hydra.run.dir={d}"], env=base_env(), cwd=cwd, text=True,
                       capture_output=True, timeout=600)
    assert p.returncode == 0, p.stderr + p.stdout
    rows = {r["batch_size"]: r for r in json.loads((d / "sweep.json").read_text())}
    assert sorted(rows) == [64, 256]
    for r in rows.values():  # labels 0..9 read as numbers: a loss of 9 is what predicting ~4.5 gives
        assert r["status"] == "ok" and r["steps_to_target"] is not None and r["best_val_accuracy"] is None
    assert "Target: val_loss ≤ 9" in (d / "report.md").read_text()
