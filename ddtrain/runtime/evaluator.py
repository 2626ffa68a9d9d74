"""Exact evaluation across ranks, on its own cadence, with the best validation accuracy and the target.

Each rank evaluates a contiguous share of the split (no padding, no sample twice) and the sums are
reduced once, so the accuracy is exact whatever the world size (pytorch/examples' AverageMeter.all_reduce).
"""

from __future__ import annotations

import logging
import math
import time

import torch

from ddtrain.runtime.metrics import SumMeter

log = logging.getLogger("ddtrain")


class Evaluator:
    """Validates every train.eval_every steps (or evals_per_epoch times per epoch) and tests at the end."""

    def __init__(self, engine, step, data, plan, train_cfg):
        self.engine = engine
        self.step = step  # the TrainStep: its model, autocast and device placement
        self.data = data
        self.plan = plan
        self.eval_every, self.evals_per_epoch = train_cfg.eval_every, train_cfg.evals_per_epoch
        self.target = train_cfg.target_accuracy  # or, for losses without accuracy, a validation loss to reach:
        self.target_loss = getattr(train_cfg, "target_loss", 0.0)
        self.has_val = data.sizes["val"] > 0
        self.eval_time_s = 0.0
        self.last_val: dict = {}
        self.last_val_step: int | None = None
        self.best_val_accuracy: float | None = None
        self.reached: dict = {}  # steps, epochs and time at which the target was first reached

    @property
    def has_target(self) -> bool:
        """A target accuracy or validation loss is set."""
        return bool(self.target or self.target_loss)

    def epoch_at(self, step: int) -> float:
        return self.plan.epoch_at(step, self.data.sizes["train"])

    def due(self, done: int, last: bool) -> bool:
        """Validate here? Every eval_every steps, or (0) whenever 1/evals_per_epoch of an epoch completes."""
        if not self.has_val or last:  # the last step is validated by finish()
            return False
        if self.eval_every > 0:
            return done % self.eval_every == 0
        k = self.evals_per_epoch
        return math.floor(k * self.epoch_at(done)) > math.floor(k * self.epoch_at(done - 1))

    @torch.no_grad()
    def evaluate(self, split: str) -> dict:
        """Loss (and accuracy, for classification) over a whole split ("val" or "test"), each sample counted once across ranks."""
        model = self.engine.unwrap(self.step.model)
        was_training = model.training
        model.eval()
        meter = SumMeter(self.engine.device, self.step.loss.accuracy)
        batch = max(self.plan.per_rank_batch_size, 256)
        t0 = time.perf_counter()
        for xb, yb in self.data.eval_batches(split, self.engine.rank, self.engine.world_size, batch):
            xb, yb = self.step.to_device(xb, yb)
            with self.step.autocast():
                logits = model(xb)
            meter.add(self.step.loss(logits, yb), logits, yb)
        model.train(was_training)
        result = meter.reduce(self.engine)
        self.eval_time_s += time.perf_counter() - t0
        return result

    def validate(self, done: int, sink, train_time_s: float) -> dict:
        """Evaluate on the validation set; track the best accuracy and when the target was first reached."""
        val = self.evaluate("val")
        self.last_val, self.last_val_step = val, done
        sink.log(done, {"epoch": round(self.epoch_at(done), 4), **_figures(val)}, "val")
        if "accuracy" in val and (self.best_val_accuracy is None or val["accuracy"] > self.best_val_accuracy):
            self.best_val_accuracy = val["accuracy"]
        hit = ((self.target and val.get("accuracy", -1.0) >= self.target)
               or (self.target_loss and val["loss"] <= self.target_loss))
        if hit and not self.reached:
            self.reached = {"steps_to_target": done, "epochs_to_target": round(self.epoch_at(done), 4),
                            "time_to_target_s": train_time_s}
            what = f"accuracy {self.target:.3f}" if self.target else f"validation loss {self.target_loss:.4g}"
            log.info("target %s reached at step %d (%.1f s of training)", what, done, train_time_s)
        return val

    def finish(self, done: int, sink, train_time_s: float) -> dict:
        """Final validation (unless this step was just validated) and the test evaluation; their figures."""
        val = {}
        if self.has_val:
            val = self.last_val if self.last_val_step == done else self.validate(done, sink, train_time_s)
        test = self.evaluate("test")
        sink.log(done, _figures(test), "test")
        figures = {"val_loss": val.get("loss"), "test_loss": test["loss"], "eval_s": self.eval_time_s,
                   "steps_to_target": self.reached.get("steps_to_target"),
                   "epochs_to_target": self.reached.get("epochs_to_target"),
                   "time_to_target_s": self.reached.get("time_to_target_s")}
        if self.target_loss:
            figures["target_loss"] = self.target_loss
        if not self.step.loss.accuracy:  # a regression or sequence loss: accuracy does not apply
            return figures
        return {**figures, "val_accuracy": val.get("accuracy"), "best_val_accuracy": self.best_val_accuracy,
                "test_accuracy": test["accuracy"], "target_accuracy": self.target or None}


def _figures(result: dict) -> dict:
    """What a split's evaluation logs: the loss, and the accuracy where it applies."""
    return {k: result[k] for k in ("loss", "accuracy") if k in result}
