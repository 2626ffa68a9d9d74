"""Real multi-process runs on gloo: equal parameters across world sizes, real launchers, exact resume."""

from __future__ import annotations

import shutil

import pytest

from conftest import EQUIV, assert_same_model

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("ranks,accum", [(2, 1), (2, 2), (1, 2)])
def test_world_size_and_accumulation_do_not_change_the_model(launch, one_rank_model, ranks, accum):
    r = launch([*EQUIV, f"train.grad_accum_steps={accum}"], ranks=ranks)
    assert r.returncode == 0, r.stderr
    s = r.summary
    assert (s["world_size"], s["grad_accum_steps"], s["per_rank_batch_size"]) == (ranks, accum, 32 // ranks // accum)
    assert s["ranks_identical"] is True
    assert_same_model(r.checkpoint(24)["model"], one_rank_model)


REQUIRED = ["world_size", "global_batch_size", "per_rank_batch_size", "grad_accum_steps", "steps", "epochs",
            "samples_per_s", "step_time_ms_median", "final_train_loss", "val_accuracy", "test_accuracy", "wall_s",
            "engine", "backend", "device", "precision", "peak_memory_bytes", "torch_version"]


@pytest.mark.parametrize("via,launcher", [("mpirun", "openmpi"), ("torchrun", "torchrun")])
def test_real_launchers_end_to_end(launch, tmp_path, via, launcher):
    # no hydra.run.dir: rank 0 picks the timestamped directory and every rank uses it
    r = launch(["train.max_steps=40", "train.global_batch_size=64", "hydra.run.dir=outputs/${now:%H-%M-%S-%f}"],
               ranks=2, via=via, run_dir=None)
    assert r.returncode == 0, r.stderr + r.stdout
    run_dirs = [p.parent for p in (tmp_path / "outputs").glob("*/summary.json")]
    assert len(list((tmp_path / "outputs").iterdir())) == 1 and len(run_dirs) == 1
    r.run_dir = run_dirs[0]
    s = r.summary
    assert set(REQUIRED) <= s.keys()
    assert (s["world_size"], s["launcher"], s["engine"], s["backend"]) == (2, launcher, "ddp", "gloo")
    assert s["steps"] == 40 and s["per_rank_batch_size"] == 32 and s["ranks_identical"] is True
    assert 0.0 <= s["test_accuracy"] <= 1.0 and 0.0 <= s["val_accuracy"] <= 1.0
    assert s["samples_per_s"] > 0 and s["step_time_ms_median"] > 0 and s["peak_memory_bytes"] > 0
    assert (r.run_dir / ".hydra" / "config.yaml").is_file()
    log = (r.run_dir / "train.log").read_text()
    assert "[rank 0/2]" in log
    lines = (r.run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) >= 8 and '"samples_per_s"' in lines[0]
    assert "test accuracy" in r.stdout


def test_resume_continues_exactly(launch, tmp_path):
    # dropout makes the RNG state part of what must be restored
    common = ["model=mlp", "model.dropout=0.2", "model.hidden_sizes=[64,64,64]", "dataset=synthetic",
              "dataset.shape=[40]", "dataset.num_samples=600", "train.global_batch_size=32", "train.max_steps=30",
              "checkpoint.every_steps=10", "checkpoint.keep_last=3", "logging.tensorboard=false",
              "schedule=cosine", "schedule.warmup_epochs=0.5"]
    full = launch(common, ranks=2, run_dir=tmp_path / "full")
    assert full.returncode == 0, full.stderr
    # an interrupted run: only the step-10 checkpoint survived
    part = tmp_path / "interrupted"
    (part / "checkpoints").mkdir(parents=True)
    shutil.copy(full.run_dir / "checkpoints" / "step_00000010.pt", part / "checkpoints")
    resumed = launch([*common, "checkpoint.resume=auto"], ranks=2, run_dir=part)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.summary["resumed_from"].endswith("step_00000010.pt")
    assert resumed.summary["trained_steps_this_run"] == 20
    a, b = full.checkpoint(30), resumed.checkpoint(30)
    assert_same_model(a["model"], b["model"], exact=True)
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    assert resumed.summary["parameter_digest"] == full.summary["parameter_digest"]
    assert sorted(p.name for p in (part / "checkpoints").iterdir()) == [
        "step_00000010.pt", "step_00000020.pt", "step_00000030.pt"]


def test_tensorboard_shows_the_scalars(launch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    r = launch(["train.max_steps=20", "train.global_batch_size=64", "train.eval_every=10"], ranks=2)
    assert r.returncode == 0, r.stderr
    events = EventAccumulator(str(r.run_dir / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/accuracy", "train/lr", "train/samples_per_s",
            "val/loss", "val/accuracy", "test/accuracy"} <= scalars
    steps = [e.step for e in events.Scalars("train/loss")]
    assert steps == sorted(steps) and steps[-1] == 20
    assert any("config" in tag for tag in events.Tags()["tensors"])
