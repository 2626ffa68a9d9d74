"""The noise-scale estimate rides in checkpoints: a resumed run continues it, and still knows the target's point."""

from __future__ import annotations

import json

import torch

from ddtrain import fit
from ddtrain.compose import compose

# one rank, two accumulation micro-batches: the first micro-batch is the small batch of the estimator
RUN = ["model=mlp", "dataset=mnist1d", "train.global_batch_size=64", "train.grad_accum_steps=2",
       "train.max_steps=40", "train.noise_scale=true", "train.log_every=5", "train.eval_every=5",
       "train.target_accuracy=0.23", "checkpoint.every_steps=20", "checkpoint.keep_last=2", "schedule=constant",
       "logging.tensorboard=false", "logging.progress=false"]


def test_resumed_run_continues_the_noise_scale(in_process, tmp_path, mnist1d_cache):
    cache = [f"dataset.cache_dir={mnist1d_cache}"]
    straight = fit(compose("train", RUN + cache), run_dir=tmp_path / "straight")
    assert straight["steps_to_target"] is not None and straight["steps_to_target"] <= 20  # before the checkpoint
    halfway = tmp_path / "straight" / "checkpoints" / "step_00000020.pt"
    resumed = fit(compose("train", RUN + cache + [f"checkpoint.resume={halfway}"]), run_dir=tmp_path / "resumed")
    assert resumed["trained_steps_this_run"] == 20

    def state(run):
        return torch.load(tmp_path / run / "checkpoints" / "step_00000040.pt", weights_only=True)["noise_scale"]

    # 8 reads (every 5 steps) in both: the resumed run went on from the 4 of its checkpoint, it did not restart
    assert state("straight")["step"] == 8 and state("resumed") == state("straight")
    assert torch.load(halfway, weights_only=True)["noise_scale"]["step"] == 4
    assert resumed["noise_scale"] == straight["noise_scale"] is not None
    # the target was reached before the checkpoint: the resumed run reports when, and the noise scale there
    for key in ("steps_to_target", "epochs_to_target", "noise_scale_at_target", "best_val_accuracy"):
        assert resumed[key] == straight[key], key
    assert straight["noise_scale_at_target"] is not None
    # the logged noise scale of the resumed run continues the straight run's line
    logged = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in logged if "noise_scale" in r)
    ref = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert first["noise_scale"] == next(r["noise_scale"] for r in ref if r.get("step") == first["step"]
                                        and "noise_scale" in r)
