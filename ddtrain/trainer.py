"""The training loop: the cadence of step, log, evaluate and checkpoint. Components arrive built."""

from __future__ import annotations

import contextlib
import logging
import math
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ddtrain.data.feed import micro_batches
from ddtrain.data.sharding import ShardedBatches, eval_shard
from ddtrain.metrics import MetricsSink, StepTimer, SumMeter

log = logging.getLogger("ddtrain")

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class LoopSettings:
    """The loop's cadence, taken from the train and checkpoint config."""

    total_steps: int
    grad_accum_steps: int
    log_every: int
    eval_every: int  # 0: once per epoch
    checkpoint_every: int  # 0: never
    throughput_warmup_steps: int
    grad_clip: float
    precision: str
    progress: bool
    channels_last: bool = False
    data_on_device: bool = True  # False: host-placed data fed by DataLoader workers
    num_workers: int = 2
    prefetch_factor: int = 2
    flops_per_sample: int | None = None  # forward + backward, for achieved FLOP/s and MFU
    peak_flops_per_device: float | None = None  # None: unknown device, FLOP/s without MFU


class Trainer:
    """Runs synchronized SGD steps from a start step to the end, and evaluates exactly across ranks."""

    def __init__(self, *, settings: LoopSettings, dist, model: nn.Module, engine, optimizer, scheduler,
                 scaler, batches: ShardedBatches, splits, sink: MetricsSink, checkpointer=None):
        self.s = settings
        self.dist = dist
        self.model = model  # as wrapped by the engine
        self.engine = engine
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scaler = scaler
        self.batches = batches
        self.splits = splits
        self.sink = sink
        self.checkpointer = checkpointer
        self.device = dist.device
        dtype = AMP_DTYPES.get(settings.precision)
        self.autocast = (lambda: torch.autocast(self.device.type, dtype=dtype)) if dtype else contextlib.nullcontext
        self.meter = SumMeter(self.device)
        self.timer = StepTimer(self.device)
        self.steady_samples = 0
        self.steady_time_s = 0.0
        self.steady_rates: list[float] = []  # samples/s of each steady-state interval, for the spread
        self._feed = iter(())
        self.eval_time_s = 0.0
        self.last_train: dict = {}
        self.last_val: dict = {}

    # ---- one optimizer step -------------------------------------------------------------------
    def train_step(self, step: int) -> None:
        """Forward and backward over the accumulation micro-steps, then one optimizer step."""
        accum = self.s.grad_accum_steps
        for micro in range(accum):
            x, y = self._to_model(*next(self._feed))
            # distributed: skip the gradient exchange until the last micro-step
            sync = self.engine.no_sync(self.model) if micro < accum - 1 else contextlib.nullcontext()
            with sync:
                with self.autocast():
                    logits = self.model(x)
                    loss = F.cross_entropy(logits.float(), y)
                self.scaler.scale(loss / accum).backward()
            self.meter.add(loss.detach(), logits.detach(), y)
        self.engine.finish_gradients()
        if self.s.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)  # clip the true averaged gradient, not the scaled one
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.s.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    def _to_model(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch on the device, in the memory layout the model runs in."""
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if self.s.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def utilization(self, samples_per_s: float | None) -> dict:
        """Achieved FLOP/s over all ranks and MFU per device at a given throughput."""
        fps, peak = self.s.flops_per_sample, self.s.peak_flops_per_device
        if not fps or not samples_per_s:
            return {}
        achieved = fps * samples_per_s
        out = {"achieved_tflops": achieved / 1e12}
        if peak:
            out["mfu"] = achieved / self.dist.world_size / peak
        return out

    # ---- evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        """Loss and accuracy over a whole split, each sample counted once across ranks."""
        model = self.engine.unwrap(self.model)
        was_training = model.training
        model.eval()
        meter = SumMeter(self.device)
        shard = eval_shard(len(x), self.dist.rank, self.dist.world_size)
        batch = max(self.batches.per_rank_batch_size, 256)
        for start in range(shard.start, shard.stop, batch):
            xb, yb = self._to_model(x[start:min(start + batch, shard.stop)], y[start:min(start + batch, shard.stop)])
            with self.autocast():
                logits = model(xb)
            meter.add(F.cross_entropy(logits.float(), yb), logits, yb)
        model.train(was_training)
        return meter.reduce(self.dist)

    def _eval_due(self, step: int) -> bool:
        if self.s.eval_every > 0:
            return step % self.s.eval_every == 0
        return math.floor(self.batches.epoch_at(step)) > math.floor(self.batches.epoch_at(step - 1))

    # ---- the loop -----------------------------------------------------------------------------
    def fit(self, start_step: int = 0) -> dict:
        """Train from start_step to total_steps; returns the figures for summary.json."""
        from tqdm import tqdm

        s = self.s
        bar = tqdm(total=s.total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                   disable=not (self.dist.is_main and s.progress))
        self.model.train()
        self._feed = micro_batches(self.batches, start_step, s.total_steps, self.device,
                                   use_loader=not s.data_on_device, num_workers=s.num_workers,
                                   prefetch_factor=s.prefetch_factor)
        interval_start, interval_step = time.perf_counter(), start_step
        self.timer.restart()
        for step in range(start_step, s.total_steps):
            self.train_step(step)
            done = step + 1
            warm = step >= start_step + s.throughput_warmup_steps
            self.timer.lap(keep=warm)
            bar.update(1)
            last = done == s.total_steps
            end_of_warmup = done == start_step + s.throughput_warmup_steps
            due_eval = self.splits.val_x.shape[0] > 0 and not last and self._eval_due(done)
            due_ckpt = self.checkpointer is not None and s.checkpoint_every > 0 and (
                done % s.checkpoint_every == 0 or last)
            if not (done % s.log_every == 0 or last or end_of_warmup or due_eval or due_ckpt):
                continue
            # a synchronised point: reduce the meters (this waits for the device), then time the interval
            train = self.meter.reduce(self.dist)
            now = time.perf_counter()
            steps = done - interval_step
            samples_per_s = steps * self.batches.global_batch_size / (now - interval_start)
            if interval_step >= start_step + s.throughput_warmup_steps:
                self.steady_samples += steps * self.batches.global_batch_size
                self.steady_time_s += now - interval_start
                self.steady_rates.append(samples_per_s)
            if train["count"]:
                self.last_train = train
                record = {"epoch": round(self.batches.epoch_at(done), 4), "loss": train["loss"],
                          "accuracy": train["accuracy"], "lr": self.optimizer.param_groups[0]["lr"],
                          "samples_per_s": samples_per_s, "step_time_ms": 1000 * (now - interval_start) / steps,
                          **self.utilization(samples_per_s)}
                self.sink.log(done, record, "train")
                bar.set_postfix(loss=f"{train['loss']:.4f}", acc=f"{train['accuracy']:.3f}",
                                samples_s=f"{samples_per_s:,.0f}", refresh=False)
                if not bar.disable:
                    log.debug("step %d %s", done, record)
                else:
                    log.info("step %d/%d epoch %.2f loss %.4f acc %.3f lr %.4g %.0f samples/s", done,
                             s.total_steps, record["epoch"], train["loss"], train["accuracy"], record["lr"],
                             samples_per_s)
            if due_eval:
                t0 = time.perf_counter()
                self.last_val = self.evaluate(self.splits.val_x, self.splits.val_y)
                self.eval_time_s += time.perf_counter() - t0
                self.sink.log(done, {"epoch": round(self.batches.epoch_at(done), 4),
                                     "loss": self.last_val["loss"], "accuracy": self.last_val["accuracy"]}, "val")
            if due_ckpt:
                self.checkpointer.save(done, self.state_dict())
            # evaluation and checkpoints are not training time: restart the clocks
            interval_start, interval_step = time.perf_counter(), done
            self.timer.restart()
        bar.close()
        return self.finish(start_step)

    def finish(self, start_step: int) -> dict:
        """Final validation and test evaluation; the run's figures."""
        t0 = time.perf_counter()
        val = self.evaluate(self.splits.val_x, self.splits.val_y) if self.splits.val_x.shape[0] else {}
        test = self.evaluate(self.splits.test_x, self.splits.test_y)
        self.eval_time_s += time.perf_counter() - t0
        step = self.s.total_steps
        if val:
            self.sink.log(step, {"loss": val["loss"], "accuracy": val["accuracy"]}, "val")
        self.sink.log(step, {"loss": test["loss"], "accuracy": test["accuracy"]}, "test")
        samples_per_s = self.steady_samples / self.steady_time_s if self.steady_time_s else None
        return {
            "steps": step,
            "epochs": round(self.batches.epoch_at(step), 4),
            "samples_per_s": samples_per_s,
            "samples_per_s_std": statistics.pstdev(self.steady_rates) if len(self.steady_rates) > 1 else None,
            "steady_intervals": len(self.steady_rates),
            **self.utilization(samples_per_s),
            "step_time_ms_median": self.timer.median_ms(),
            "final_train_loss": self.last_train.get("loss"),
            "final_train_accuracy": self.last_train.get("accuracy"),
            "val_loss": val.get("loss"),
            "val_accuracy": val.get("accuracy"),
            "test_loss": test["loss"],
            "test_accuracy": test["accuracy"],
            "eval_s": self.eval_time_s,
            "trained_steps_this_run": step - start_step,
        }

    def state_dict(self) -> dict:
        """What a checkpoint holds besides the step and RNG states."""
        return {"model": self.engine.unwrap(self.model).state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "global_batch_size": self.batches.global_batch_size}

    def load_state_dict(self, state: dict) -> None:
        """Restore model, optimizer, scheduler and scaler from a checkpoint."""
        self.engine.unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
