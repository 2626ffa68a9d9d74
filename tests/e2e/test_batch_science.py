"""The tuned sweep and the probe under mpirun -np 2: artefacts, min over trials, resume, prediction and comparison."""

from __future__ import annotations

import json
import shutil

import pytest

from ddtrain.compose import compose
from ddtrain.errors import UserError
from ddtrain.sweep.points import budget_steps, point_config, validate_sweep
from test_sweep import sweep

# MNIST-1D CNN to 40% validation accuracy, constant LR: a few hundred steps at most
TINY = ["model=cnn1d", "dataset=mnist1d", "schedule=constant", "schedule.warmup_epochs=0", "train.log_every=10",
        "logging.tensorboard=false", "sweep.batch_sizes=[32,128]", "sweep.target=0.4", "sweep.budget=steps:300",
        "sweep.timing_rounds=2", "sweep.timing_steps=3", "sweep.warmup_steps=1", "sweep.tune_evals=60"]
TUNED = TINY + ["sweep.tune=true", "sweep.seeds=[0,1]", "sweep.tune_lrs=3", "sweep.tune_lr_span=16"]


@pytest.fixture(scope="module")
def tuned_sweep(tmp_path_factory, mnist1d_cache):
    """One real 2-rank tuned sweep: (directory, stdout)."""
    d = tmp_path_factory.mktemp("tuned") / "sweep"
    code, out, err = sweep(TUNED, d, mnist1d_cache)
    assert code == 0, err + out
    return d, out


@pytest.mark.slow
def test_tuned_sweep_takes_the_minimum_over_trials(tuned_sweep):
    d, out = tuned_sweep
    got = json.loads((d / "sweep.json").read_text())
    for b in (32, 128):
        search = [r for r in got if r["batch_size"] == b and r["role"] in ("rule", "search")]
        assert len(search) == 3 and [r["role"] for r in search] == ["rule", "search", "search"]
        assert sorted(round(r["lr_factor"], 3) for r in search) == [0.25, 1.0, 4.0]
        reached = [r for r in search if r["status"] == "ok"]
        assert reached, search
        best = min(reached, key=lambda r: r["steps_to_target"])
        for r in search:
            assert (d / r["trial"] / "summary.json").is_file()  # each trial its own run directory
            if r["role"] == "search" and r["status"] == "pruned":  # stopped at the best trial's steps so far
                assert r["steps"] <= best["steps_to_target"] and r["steps_to_target"] is None
            if r["status"] == "ok":  # stopped at the first evaluation that reached the target
                assert r["steps"] == r["steps_to_target"] and r["best_val_accuracy"] >= 0.4
                assert r["steps_to_target"] % max(1, 300 // 60) == 0  # evaluations every budget/tune_evals steps
        repeat = [r for r in got if r["batch_size"] == b and r["role"] == "repeat"]
        assert len(repeat) == 1 and repeat[0]["seed"] == 1 and repeat[0]["lr"] == best["lr"]
        assert all(r["samples"] == r["steps"] * b and r["cpu_s"] > 0 for r in search + repeat)
    timing = json.loads((d / "timing.json").read_text())
    assert timing["rounds"] == 2 and all(len(e["step_time_s"]) == 2 for e in timing["batch_sizes"].values())
    report = (d / "report.md").read_text()
    assert "best lr (× rule)" in report and "Under the lr_scaling rule" in report
    assert "Cost of this sweep:** " in report and "cost of this sweep" in out
    assert "time to target s" in report and "–" in report.split("## Findings")[0]  # intervals in the table
    assert (d / "sweep.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_tuned_sweep_resumes_with_the_finished_trials(tuned_sweep, tmp_path, mnist1d_cache):
    d, _ = tuned_sweep
    again = tmp_path / "sweep"
    shutil.copytree(d, again)
    full = json.loads((again / "sweep.json").read_text())
    (again / "sweep.json").write_text(json.dumps(full[:3]))  # as if the job died after three trials
    code, out, err = sweep(TUNED, again, mnist1d_cache)
    assert code == 0, err + out
    assert "3 trial(s) already done" in out
    resumed = json.loads((again / "sweep.json").read_text())
    key = lambda r: r["trial"]  # noqa: E731
    assert sorted(map(key, resumed)) == sorted(map(key, full))
    kept = {r["trial"]: r for r in resumed}
    for r in full[:3]:
        assert kept[r["trial"]] == r  # finished trials are kept as they were, not redone
    for r in full[3:]:  # the redone ones end the same way: same seed, same trajectory
        assert (kept[r["trial"]]["status"], kept[r["trial"]]["steps_to_target"]) == (r["status"], r["steps_to_target"])


@pytest.mark.slow
def test_probe_predicts_and_compares(tuned_sweep, tmp_path, mnist1d_cache):
    measured, _ = tuned_sweep
    d = tmp_path / "probe"
    code, out, err = sweep(TINY + ["sweep.mode=predict", "sweep.probe_batch_size=32", "sweep.probe_max_samples=60000",
                                   f"sweep.compare_to={measured}"], d, mnist1d_cache)
    assert code == 0, err + out
    p = json.loads((d / "prediction.json").read_text())
    assert p["probe_batch_size"] == 32 and p["world_size"] == 2
    assert p["cost"]["samples"] <= 60000 and p["cost"]["cpu_rank_s"] > 0  # the stated budget holds
    assert p["scan"]["steps_to_target"] > 0 and p["scan"]["best_lr"] in [float(k) for k in p["scan"]["tried"]]
    assert p["noise"]["b_simple_at_target"] > 0 and p["noise"]["windows"]
    assert [a["batch_size"] for a in p["anchors"]] == [128]  # the one larger batch, from scratch to the target
    assert [e["batch_size"] for e in p["per_batch"]] == [32, 128]
    small, large = p["per_batch"]
    assert small["steps_to_target"] == pytest.approx(p["scan"]["steps_to_target"])  # b0 predicts itself
    if p["kappa_calibrated"]:  # kappa makes the noise-scale sum meet the anchor
        assert large["steps_to_target"] == pytest.approx(p["anchors"][0]["steps_to_target"], rel=1e-3)
    for e in p["per_batch"]:
        assert e["time_to_target_s"][1] <= e["time_to_target_s"][0] <= e["time_to_target_s"][2]
        assert e["time_to_target_s"][0] == pytest.approx(e["steps_to_target"] * e["step_time_s"][0])
    assert p["sweet_spot"]["batch_size"] in (32, 128)
    c = p["comparison"]
    assert [r["batch_size"] for r in c["per_batch"]] == [32, 128] and c["steps_compared"] >= 1
    assert 0 < c["cost_ratio"]["samples"]
    report = (d / "report.md").read_text()
    assert "# Probe prediction" in report and "## Predicted against measured" in report
    assert "median absolute error" in report and report in out  # the console shows the report
    assert (d / "prediction.png").read_bytes()[:4] == b"\x89PNG"


def test_tuned_trial_config_and_budget_in_steps():
    cfg = compose("sweep", ["sweep.budget=epochs:2", "sweep.min_steps=100", "sweep.tune=true", "sweep.tune_evals=50"])
    assert budget_steps("epochs=2", 16, 3600, 100) == 450 and budget_steps("epochs=2", 2048, 3600, 100) == 100
    assert budget_steps("samples=1000", 64, 3600) == 16 and budget_steps("time_s=5", 64, 3600) is None
    p = point_config(cfg, 2048, 1, 1, train_size=3600, lr_factor=0.5, tuned=True, stop_after=40)
    assert p.train.max_steps == 100 and p.train.eval_every == 2 and p.train.stop_at_target
    assert p.train.stop_after_steps == 40 and p.train.lr == pytest.approx(cfg.train.lr * 0.5)
    assert p.train.lr_scaling == cfg.sweep.lr_scaling  # the factor scales the base LR; the rule still applies
    assert point_config(cfg, 64, 0, 1, warmup_epochs=3.0).schedule.warmup_epochs == 3.0


@pytest.mark.parametrize("overrides,key", [
    (["sweep.mode=guess"], "sweep.mode"),
    (["sweep.tune_lr_span=0.5"], "sweep.tune_lr_span"),
    (["sweep.tune_lrs=0"], "sweep.tune_lrs"),
    (["sweep.timing_rounds=-1"], "sweep.timing_rounds"),
    (["sweep.compare_to=/tmp/x"], "sweep.compare_to"),
    (["sweep.mode=predict", "sweep.budget=time_s:10"], "sweep.mode=predict"),
    (["sweep.mode=predict", "sweep.probe_batch_size=30"], "sweep.batch_sizes"),
    (["sweep.probe_anchors=-1"], "sweep.probe_anchors"),
    (["sweep.tune_warmup_epochs=[-1]"], "sweep.tune_warmup_epochs"),
])
def test_bad_science_keys(overrides, key):
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        validate_sweep(compose("sweep", overrides), world_size=4)
