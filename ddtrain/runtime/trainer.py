"""The training loop: each part decides its own cadence (log, evaluate, checkpoint, throughput window); the loop asks.

SIGTERM/SIGUSR1 during the loop: every rank stops at the same step boundary, the checkpoint is
saved and ddtrain.errors.Preempted raised (see ddtrain.distributed.preempt).
"""

from __future__ import annotations

import logging
import math

import torch

from ddtrain.distributed import preempt
from ddtrain.errors import Preempted

log = logging.getLogger("ddtrain")


class Trainer:
    """Runs synchronized SGD steps from a start step to the end; components arrive built."""

    def __init__(self, *, engine, step, feed, evaluator, meter, checkpointer, total_steps: int, train_cfg,
                 progress: bool):
        self.engine = engine
        self.step = step  # ddtrain.runtime.step.TrainStep
        self.feed = feed  # start_step -> iterator over this rank's micro-batches
        self.evaluator, self.meter, self.checkpointer = evaluator, meter, checkpointer
        self.total_steps = total_steps
        self.log_every = train_cfg.log_every
        self.time_budget_s = train_cfg.time_budget_s
        self.stop_at_target = train_cfg.stop_at_target
        # stop_after_steps ends the loop early; the schedule was built for total_steps and keeps that length
        self.end_step = min(total_steps, train_cfg.stop_after_steps or total_steps)
        self.progress = progress
        self.sink = None  # set by run() once the memory probe (sweeps) has passed
        self.status = "ok"
        self.last_train: dict = {}
        self.noise_scale: float | None = None
        self.noise_scale_at_target: float | None = None

    def fit(self, start_step: int = 0) -> dict:
        """Train from start_step to total_steps (or the time budget); returns the figures for summary.json."""
        installed = preempt.install()
        try:
            done = self._loop(start_step)
        finally:
            if installed:
                preempt.uninstall()
        return self._figures(start_step, done)

    def _loop(self, start_step: int) -> int:
        from tqdm import tqdm

        bar = tqdm(total=self.total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                   disable=not (self.engine.is_main and self.progress))
        self.bar, feed, vote = bar, self.feed(start_step), preempt.StopVote(self.engine)
        self.step.model.train()
        self.meter.restart(start_step)
        done = start_step
        for step in range(start_step, self.end_step):
            self.step(step, feed)
            done = step + 1
            self.meter.lap(done)
            bar.update(1)
            if vote.poll():  # some rank got SIGTERM/SIGUSR1: all stop here
                self._preempted(done)
            last = done == self.end_step
            if (done % self.log_every == 0 or last or self.meter.due(done) or self.evaluator.due(done, last)
                    or self.checkpointer.due(done, last)) and not self._sync_point(done, last):
                break
        if vote.drain():  # a GPU vote still in flight when the loop ended
            self._preempted(done)
        bar.close()
        return done

    def _sync_point(self, done: int, last: bool) -> bool:
        """Reduce the meters (this waits for the device), log, validate, checkpoint; False: stop training."""
        train = self.step.meter.reduce(self.engine)
        samples_per_s, step_s = self.meter.interval(done)
        if train["count"]:
            self._log_train(done, train, samples_per_s, step_s)
            if not math.isfinite(train["loss"]):  # every rank sees the same reduced loss: all stop
                self.status = "diverged"
                log.error("training loss is %s at step %d: stopping", train["loss"], done)
                return False
        if self.evaluator.due(done, last):
            reached = bool(self.evaluator.reached)
            self.evaluator.validate(done, self.sink, self.meter.train_time_s)
            if self.evaluator.reached and not reached:
                self.noise_scale_at_target = self.noise_scale
        stop = self.stop_at_target and bool(self.evaluator.reached)
        if self.checkpointer.due(done, last or stop):
            self.checkpointer.save(done, self.state_dict(done))
        if stop:
            log.info("target reached at step %d: stopping (train.stop_at_target)", done)
            return False
        if self.time_budget_s and self._out_of_time():
            log.info("time budget of %.0f s spent at step %d", self.time_budget_s, done)
            return False
        self.meter.restart(done)  # evaluation and checkpoints are not training time
        return True

    def _log_train(self, done: int, train: dict, samples_per_s: float, step_s: float) -> None:
        self.last_train = train
        record = {"epoch": round(self.evaluator.epoch_at(done), 4), "loss": train["loss"],
                  **({"accuracy": train["accuracy"]} if "accuracy" in train else {}),
                  "lr": self.step.optimizer.param_groups[0]["lr"],
                  "samples_per_s": samples_per_s, "step_time_ms": 1000 * step_s,
                  **self.meter.utilization(samples_per_s)}
        if self.step.noise is not None:
            self.noise_scale = self.step.noise_scale()
            if self.noise_scale is not None:
                record["noise_scale"] = self.noise_scale
            record.update(self.step.noise.last_interval)  # this interval's own |G|^2 and tr(Sigma) estimates
        self.sink.log(done, record, "train")
        acc = {"acc": f"{train['accuracy']:.3f}"} if "accuracy" in train else {}
        self.bar.set_postfix(loss=f"{train['loss']:.4f}", **acc, samples_s=f"{samples_per_s:,.0f}", refresh=False)
        if self.bar.disable:
            log.info("step %d/%d epoch %.2f loss %.4f%s lr %.4g %.0f samples/s", done, self.total_steps,
                     record["epoch"], train["loss"], f" acc {acc['acc']}" if acc else "", record["lr"],
                     samples_per_s)

    def _out_of_time(self) -> bool:
        # ranks' clocks differ slightly: decide on their mean, which every rank computes identically
        spent = self.engine.all_reduce_sum(
            torch.tensor([self.meter.train_time_s], dtype=torch.float64, device=self.engine.device))
        return spent.item() / self.engine.world_size >= self.time_budget_s

    def _preempted(self, done: int) -> None:
        """Every rank agreed to stop: save the checkpoint, log one line, raise Preempted (exit status 75)."""
        self.bar.close()
        path = self.checkpointer.save(done, self.state_dict(done))
        self.engine.barrier()  # rank 0's checkpoint is on disk before any rank exits (srun --kill-on-bad-exit)
        self.sink.close()
        got = preempt.received()
        message = (f"preempted ({preempt.signal_name(got) if got else 'signal on another rank'}) at step {done}/"
                   f"{self.total_steps}: checkpoint {path}; exit status {Preempted.exit_code}, rerun with the "
                   "same run directory and checkpoint.resume=auto to resume")
        (log.warning if self.engine.is_main else log.info)(message)
        raise Preempted(message)

    def _figures(self, start_step: int, done: int) -> dict:
        """Final evaluation and the run's figures for summary.json."""
        evaluation = self.evaluator.finish(done, self.sink, self.meter.train_time_s)
        status = self.status
        if status == "ok" and self.evaluator.has_target and not self.evaluator.reached:
            status = "target_not_reached"
        accuracy = {"final_train_accuracy": self.last_train.get("accuracy")} if self.step.loss.accuracy else {}
        return {"status": status, "steps": done, "epochs": round(self.evaluator.epoch_at(done), 4),
                **self.meter.figures(), "final_train_loss": self.last_train.get("loss"), **accuracy, **evaluation,
                "noise_scale": self.noise_scale, "noise_scale_at_target": self.noise_scale_at_target,
                "trained_steps_this_run": done - start_step}

    def state_dict(self, step: int) -> dict:
        """What a checkpoint holds besides the step and RNG states (the step is also the data position)."""
        s = self.step
        state = {"epoch": self.evaluator.epoch_at(step), "samples_seen": step * self.meter.global_batch_size,
                 "model": self.engine.unwrap(s.model).state_dict(), "optimizer": s.optimizer.state_dict(),
                 "scheduler": s.scheduler.state_dict(), "scaler": s.scaler.state_dict(),
                 "global_batch_size": self.meter.global_batch_size}
        if s.noise is not None:
            state["noise_scale"] = s.noise.state_dict()
        # so a resumed run still reports when the target was reached, and the noise scale there
        state["evaluation"] = {"best_val_accuracy": self.evaluator.best_val_accuracy,
                               "reached": dict(self.evaluator.reached),
                               "noise_scale_at_target": self.noise_scale_at_target}
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore model, optimizer, scheduler, scaler and the noise-scale estimate from a checkpoint."""
        s = self.step
        self.engine.unwrap(s.model).load_state_dict(state["model"])
        s.optimizer.load_state_dict(state["optimizer"])
        s.scheduler.load_state_dict(state["scheduler"])
        s.scaler.load_state_dict(state["scaler"])
        if s.noise is not None and "noise_scale" in state:
            s.noise.load_state_dict(state["noise_scale"])
        evaluation = state.get("evaluation") or {}
        self.evaluator.best_val_accuracy = evaluation.get("best_val_accuracy")
        self.evaluator.reached = dict(evaluation.get("reached") or {})
        self.noise_scale_at_target = evaluation.get("noise_scale_at_target")
