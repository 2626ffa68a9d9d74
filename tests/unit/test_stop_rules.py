"""train.stop_after_steps and train.stop_at_target end a run early without changing its schedule."""

from __future__ import annotations

import json

from ddtrain import fit
from ddtrain.compose import compose

RUN = ["model=mlp", "dataset=mnist1d", "train.global_batch_size=64", "train.max_steps=20", "schedule=cosine",
       "schedule.warmup_epochs=0", "train.log_every=2", "train.eval_every=2", "logging.tensorboard=false",
       "logging.progress=false"]


def lrs(run_dir) -> dict:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["lr"] for r in lines if "lr" in r}


def test_stop_after_steps_keeps_the_schedule_and_stop_at_target_stops_there(in_process, tmp_path, mnist1d_cache):
    cache = [f"dataset.cache_dir={mnist1d_cache}"]
    full = fit(compose("train", RUN + cache), run_dir=tmp_path / "full")
    cut = fit(compose("train", RUN + cache + ["train.stop_after_steps=8"]), run_dir=tmp_path / "cut")
    assert full["steps"] == 20 and cut["steps"] == 8
    # the cosine spans 20 steps in both: the cut run is the full run's first 8 steps, LR for LR
    assert lrs(tmp_path / "cut") == {k: v for k, v in lrs(tmp_path / "full").items() if k <= 8}
    assert lrs(tmp_path / "cut")[8] > lrs(tmp_path / "full")[20]
    # a target the full run first reached at some evaluation: the run stops at that evaluation
    target = [f"train.target_accuracy={full['best_val_accuracy'] - 1e-6}"]
    reached = fit(compose("train", RUN + cache + target), run_dir=tmp_path / "full-target")
    stopped = fit(compose("train", RUN + cache + target + ["train.stop_at_target=true"]), run_dir=tmp_path / "stop")
    assert stopped["steps"] == stopped["steps_to_target"] == reached["steps_to_target"]
    assert stopped["status"] == "ok" and reached["steps"] == 20
