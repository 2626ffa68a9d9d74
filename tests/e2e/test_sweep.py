"""ddtrain-sweep: artefacts of a real 2-rank sweep, out-of-memory agreed across ranks, resume, bad keys."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from conftest import BIN, base_env
from ddtrain.compose import compose
from ddtrain.errors import UserError
from ddtrain.sweep.runner import parse_budget, point_config, validate_sweep

SMALL = ["logging.progress=false", "train.log_every=10", "sweep.seeds=[0]", "sweep.evals_per_epoch=2",
         "sweep.warmup_steps=2", "sweep.measure_steps=20", "sweep.target=0.5"]


def sweep(overrides, sweep_dir, cache, ranks=2, env=None, wait=True):
    """Start ddtrain-sweep (under mpirun for several ranks); wait for it unless told not to."""
    cmd = [str(BIN / "ddtrain-sweep"), *SMALL, f"dataset.cache_dir={cache}", f"hydra.run.dir={sweep_dir}",
           *overrides]
    if ranks > 1:
        cmd = [str(BIN / "mpirun"), "-np", str(ranks), "--oversubscribe", "--bind-to", "none", *cmd]
    proc = subprocess.Popen(cmd, env={**base_env(), **(env or {})}, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=sweep_dir.parent)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out, err


def rows(sweep_dir):
    return {(r["batch_size"], r["seed"]): r for r in json.loads((sweep_dir / "sweep.json").read_text())}


@pytest.mark.slow
def test_two_rank_sweep_writes_every_artefact(tmp_path, mnist1d_cache):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    d = tmp_path / "sweep"
    code, out, err = sweep(["sweep.batch_sizes=[64,256,1024]", "sweep.budget=epochs:4"], d, mnist1d_cache)
    assert code == 0, err + out
    got = rows(d)
    assert sorted(got) == [(64, 0), (256, 0), (1024, 0)]
    for (bs, _), r in got.items():
        assert r["status"] in ("ok", "target_not_reached") and r["per_rank_batch_size"] == bs // 2
        for key in ("best_val_accuracy", "final_val_accuracy", "test_accuracy"):
            assert 0.0 <= r[key] <= 1.0
        assert r["samples_per_s"] > 0 and r["step_time_ms_median"] > 0 and r["noise_scale"] is not None
        assert (d / f"bs{bs}_s0" / "summary.json").is_file() and (d / f"bs{bs}_s0" / "tb").is_dir()
    # for this small model a larger batch keeps the cores busier
    assert got[(64, 0)]["samples_per_s"] < got[(256, 0)]["samples_per_s"] < got[(1024, 0)]["samples_per_s"]
    header = (d / "sweep.csv").read_text().splitlines()[0].split(",")
    for column in ("batch_size", "per_rank_batch_size", "grad_accum_steps", "lr", "lr_scaling", "samples_per_s",
                   "step_time_ms_median", "steps", "epochs", "steps_to_target", "epochs_to_target",
                   "time_to_target_s", "best_val_accuracy", "final_val_accuracy", "test_accuracy",
                   "final_train_loss", "peak_memory_bytes", "noise_scale", "status", "wall_s"):
        assert column in header
    assert (d / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (d / "report.md").read_text()
    assert "| 256 |" in report and "Critical batch size" in report
    events = EventAccumulator(str(d / "tb" / "bs256_s0"))
    events.Reload()
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")
    assert "hparam/samples_per_s" in events.Tags()["scalars"]
    assert "batch   1024 seed 0" in out  # one console line per point


@pytest.mark.slow
@pytest.mark.parametrize("auto", [False, True])
def test_out_of_memory_on_one_rank_is_agreed(tmp_path, mnist1d_cache, auto):
    d = tmp_path / "sweep"
    # rank 1 runs out of memory whenever its micro-batch has 128 samples or more
    code, out, err = sweep(["sweep.batch_sizes=[64,256,512]", "sweep.budget=steps:12",
                            f"sweep.auto_accumulate={str(auto).lower()}"], d, mnist1d_cache,
                           env={"DDTRAIN_INJECT_OOM": "1:128"})
    assert code == 0, err + out
    got = rows(d)
    assert got[(64, 0)]["status"] in ("ok", "target_not_reached")
    for bs in (256, 512):
        if auto:  # the global batch is kept by splitting it into micro-batches that fit
            assert got[(bs, 0)]["status"] in ("ok", "target_not_reached")
            assert got[(bs, 0)]["grad_accum_steps"] * got[(bs, 0)]["per_rank_batch_size"] == bs // 2
            assert got[(bs, 0)]["per_rank_batch_size"] < 128 and got[(bs, 0)]["steps"] == 12
        else:
            assert got[(bs, 0)]["status"] == "oom" and got[(bs, 0)]["test_accuracy"] is None


@pytest.mark.slow
def test_interrupted_sweep_runs_only_the_missing_points(tmp_path, mnist1d_cache):
    d = tmp_path / "sweep"
    args = ["sweep.batch_sizes=[512,256,32]", "sweep.budget=epochs:6"]
    proc = sweep(args, d, mnist1d_cache, ranks=1, wait=False)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # stop it once two points have landed
        if (d / "sweep.json").exists() and len(json.loads((d / "sweep.json").read_text())) == 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.communicate(timeout=60)
    first = rows(d)
    assert sorted(first) == [(256, 0), (512, 0)], "the sweep finished before it could be interrupted"
    code, out, err = sweep(args, d, mnist1d_cache, ranks=1)
    assert code == 0, err
    assert "1 point(s) to run, 2 already done" in out
    second = rows(d)
    assert sorted(second) == [(32, 0), (256, 0), (512, 0)]
    for key in first:  # finished rows are kept as they were, not redone
        assert second[key] == first[key]


def test_budget_and_point_config():
    assert parse_budget("epochs=20") == ("epochs", 20.0) and parse_budget("time_s:90") == ("time_s", 90.0)
    with pytest.raises(UserError, match="sweep.budget"):
        parse_budget("hours=2")
    cfg = compose("sweep", ["sweep.budget=samples:1000", "sweep.lr_scaling=sqrt"])
    p = point_config(cfg, 256, 3, 2)
    assert (p.train.global_batch_size, p.train.seed, p.train.grad_accum_steps) == (256, 3, 2)
    assert p.train.max_steps == 4 and p.train.lr_scaling == "sqrt" and p.train.noise_scale
    assert p.checkpoint.resume == "never" and p.train.target_accuracy == cfg.sweep.target
    by_loss = point_config(compose("sweep", ["sweep.target_metric=val_loss", "sweep.target=0.3"]), 64, 0, 1)
    assert (by_loss.train.target_accuracy, by_loss.train.target_loss) == (0.0, 0.3)


@pytest.mark.parametrize("overrides,key", [
    (["sweep.batch_sizes=[64,102]"], "sweep.batch_sizes"),
    (["sweep.target=1.5"], "sweep.target"),
    (["sweep.target_metric=loss"], "sweep.target_metric"),
    (["dataset.val_fraction=0"], "dataset.val_fraction"),
    (["sweep.lr_scaling=cubic"], "sweep.lr_scaling"),
    (["loss._target_=torch.nn.MSELoss"], "sweep.target_metric=val_loss"),  # no accuracy to reach
    (["sweep.target_metric=val_loss", "sweep.target=0"], "sweep.target"),
])
def test_bad_sweep_keys(overrides, key):
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        validate_sweep(compose("sweep", overrides), world_size=4)


@pytest.mark.slow
def test_time_budget_and_divergence_are_recorded(tmp_path, mnist1d_cache):
    timed = tmp_path / "timed"
    code, out, err = sweep(["sweep.batch_sizes=[64]", "sweep.budget=time_s:2"], timed, mnist1d_cache, ranks=1)
    assert code == 0, err
    row = rows(timed)[(64, 0)]
    assert "time budget of 2 s spent" in out and row["steps"] < 1000 and row["status"] != "diverged"
    diverging = tmp_path / "diverging"
    code, out, err = sweep(["sweep.batch_sizes=[64]", "sweep.budget=epochs:2", "train.lr=1e6"], diverging,
                           mnist1d_cache, ranks=1)
    assert code == 0, err
    assert rows(diverging)[(64, 0)]["status"] == "diverged"
