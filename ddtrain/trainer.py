"""The training loop: the cadence of step, log, evaluate and checkpoint. Components arrive built."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ddtrain import failure
from ddtrain.data.feed import micro_batches
from ddtrain.data.sharding import ShardedBatches, eval_shard
from ddtrain import preempt
from ddtrain.errors import OutOfMemory, Preempted
from ddtrain.metrics import MetricsSink, StepTimer, SumMeter
from ddtrain.noise import GradientNoiseMeter

log = logging.getLogger("ddtrain")

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class LoopSettings:
    """The loop's cadence, taken from the train and checkpoint config."""

    total_steps: int
    grad_accum_steps: int
    log_every: int
    eval_every: int  # 0: evals_per_epoch times per epoch
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
    throughput_measure_steps: int = 0  # 0: every step after the warm-up counts towards throughput
    target_accuracy: float = 0.0  # record when validation accuracy first reaches it (0: no target)
    time_budget_s: float = 0.0  # stop after this much training time (0: no limit)
    noise_scale: bool = False  # measure the gradient noise scale B_simple
    stop_on_nan: bool = False  # a rank whose own loss is not finite raises at once (ddtrain.failure)
    evals_per_epoch: int = 1


def _inject_oom(rank: int, micro_batch: int) -> None:
    """Testing aid: DDTRAIN_INJECT_OOM=<rank>:<size> makes that rank run out of memory at micro-batches >= size."""
    spec = os.environ.get("DDTRAIN_INJECT_OOM")
    if spec:
        at_rank, size = (int(v) for v in spec.split(":"))
        if rank == at_rank and micro_batch >= size:
            raise torch.OutOfMemoryError(f"injected: micro-batch {micro_batch} on rank {rank}")


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
        self.train_time_s = 0.0  # all training intervals, warm-up included, evaluation excluded
        self.last_train: dict = {}
        self.last_val: dict = {}
        self._last_val_step: int | None = None
        self.best_val_accuracy: float | None = None
        self.reached: dict = {}  # steps, epochs and time at which the target accuracy was first reached
        self.status = "ok"
        self.check_loss = failure.loss_check(dist.rank, settings.stop_on_nan)  # None unless asked for
        self.noise = None
        self.b_simple: float | None = None
        if settings.noise_scale:
            self.noise = GradientNoiseMeter(self.device, dist.world_size, batches.global_batch_size,
                                            settings.grad_accum_steps)
            # distributed: each rank's gradient is seen by the engine's hook before the allreduce
            if dist.world_size > 1 and not engine.watch_local_gradients(model, self.noise.step_small):
                log.warning("engine %s cannot show local gradients: no gradient noise scale", engine.name)
                self.noise = None

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
                if self.check_loss is not None:
                    loss = self.check_loss(step, loss)
                self.scaler.scale(loss if accum == 1 else loss / accum).backward()
            self.meter.add(loss.detach(), logits.detach(), y)
            if self.noise is not None and self.dist.world_size == 1 and micro == 0 and accum > 1:
                # one rank: the first micro-batch is the small batch (its gradient is divided by accum)
                self.noise.add_small(self.noise.grad_sq(self.model.parameters()) * accum**2)
        self.engine.finish_gradients()
        if self.noise is not None:
            inv = 1.0 / self.scaler._scale.double() ** 2 if self.scaler.is_enabled() else 1.0
            self.noise.end_step(self.model.parameters(), inv)
        if self.s.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)  # clip the true averaged gradient, not the scaled one
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.s.grad_clip)
        with self.engine.step_context():
            self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad()  # set_to_none (torch's default; Horovod's wrapper takes no argument)
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
        """Validation cadence: every eval_every steps, or (0) whenever an epoch of samples completes."""
        if self.s.eval_every > 0:
            return step % self.s.eval_every == 0
        k = self.s.evals_per_epoch
        return math.floor(k * self.batches.epoch_at(step)) > math.floor(k * self.batches.epoch_at(step - 1))

    # ---- the loop -----------------------------------------------------------------------------
    def probe_memory(self, start_step: int = 0) -> None:
        """One forward and backward without the gradient exchange, to learn whether this batch fits.

        Every rank then agrees (a collective on the flag, so nobody hangs) and all raise OutOfMemory
        together. The probe leaves parameters, buffers, gradients and RNG state as they were.
        """
        model = self.engine.unwrap(self.model)
        buffers = {k: v.clone() for k, v in model.named_buffers()}
        rng = torch.get_rng_state(), (torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None)
        failed = 0.0
        try:
            _inject_oom(self.dist.rank, self.batches.per_rank_batch_size)
            x, y = self._to_model(*self.batches.get(start_step, 0))
            with self.engine.local_backward(self.model):  # forward and backward: hooks fire in both
                with self.autocast():
                    loss = F.cross_entropy(self.model(x).float(), y)
                self.scaler.scale(loss).backward()
            del x, y, loss
        except torch.OutOfMemoryError:
            failed = 1.0
        self.optimizer.zero_grad()
        with torch.no_grad():
            for k, v in model.named_buffers():
                v.copy_(buffers[k])
        torch.set_rng_state(rng[0])
        if rng[1] is not None:
            torch.cuda.set_rng_state(rng[1], self.device)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        flags = self.dist.all_reduce_sum(torch.tensor([failed], device=self.device))
        if flags.item() > 0:
            raise OutOfMemory(f"global batch {self.batches.global_batch_size} (per-rank micro-batch "
                              f"{self.batches.per_rank_batch_size}) does not fit on {int(flags.item())} rank(s)")

    def fit(self, start_step: int = 0) -> dict:
        """Train from start_step to total_steps (or the time budget); returns the figures for summary.json.

        SIGTERM/SIGUSR1 during the loop: every rank stops at the same step boundary, the checkpoint is
        saved and ddtrain.errors.Preempted raised (see ddtrain.preempt).
        """
        installed = preempt.install()
        try:
            return self._fit(start_step)
        finally:
            if installed:
                preempt.uninstall()

    def _fit(self, start_step: int) -> dict:
        from tqdm import tqdm

        s = self.s
        bar = tqdm(total=s.total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                   disable=not (self.dist.is_main and s.progress))
        self.model.train()
        self._feed = micro_batches(self.batches, start_step, s.total_steps, self.device,
                                   use_loader=not s.data_on_device, num_workers=s.num_workers,
                                   prefetch_factor=s.prefetch_factor)
        warmup_end = start_step + s.throughput_warmup_steps
        measure_end = warmup_end + s.throughput_measure_steps if s.throughput_measure_steps else None
        interval_start, interval_step = time.perf_counter(), start_step
        self.timer.restart()
        done = start_step
        vote = preempt.StopVote(self.dist)
        for step in range(start_step, s.total_steps):
            self.train_step(step)
            done = step + 1
            steady = warmup_end <= step and (measure_end is None or step < measure_end)
            self.timer.lap(keep=steady)
            bar.update(1)
            if vote.poll():  # some rank got SIGTERM/SIGUSR1: all stop here
                self._preempted(done, bar)
            last = done == s.total_steps
            due_eval = self.splits.val_x.shape[0] > 0 and not last and self._eval_due(done)
            due_ckpt = self.checkpointer is not None and s.checkpoint_every > 0 and (
                done % s.checkpoint_every == 0 or last)
            if not (done % s.log_every == 0 or last or done in (warmup_end, measure_end) or due_eval or due_ckpt):
                continue
            # a synchronised point: reduce the meters (this waits for the device), then time the interval
            train = self.meter.reduce(self.dist)
            now = time.perf_counter()
            steps = done - interval_step
            samples_per_s = steps * self.batches.global_batch_size / (now - interval_start)
            self.train_time_s += now - interval_start
            if interval_step >= warmup_end and (measure_end is None or interval_step < measure_end):
                self.steady_samples += steps * self.batches.global_batch_size
                self.steady_time_s += now - interval_start
                self.steady_rates.append(samples_per_s)
            if train["count"]:
                self._log_train(done, train, samples_per_s, (now - interval_start) / steps, bar)
                if not math.isfinite(train["loss"]):  # every rank sees the same reduced loss: all stop
                    self.status = "diverged"
                    log.error("training loss is %s at step %d: stopping", train["loss"], done)
                    break
            if due_eval:
                self._validate(done)
            if due_ckpt:
                self.checkpointer.save(done, self.state_dict(done))
            if s.time_budget_s and self._out_of_time():
                log.info("time budget of %.0f s spent at step %d", s.time_budget_s, done)
                break
            # evaluation and checkpoints are not training time: restart the clocks
            interval_start, interval_step = time.perf_counter(), done
            self.timer.restart()
        if vote.drain():  # a GPU vote still in flight when the loop ended
            self._preempted(done, bar)
        bar.close()
        return self.finish(start_step, done)

    def _preempted(self, done: int, bar) -> None:
        """Every rank agreed to stop: save the checkpoint, log one line, raise Preempted (exit status 75)."""
        bar.close()
        path = self.checkpointer.save(done, self.state_dict(done)) if self.checkpointer is not None else None
        self.dist.barrier()  # rank 0's checkpoint is on disk before any rank exits (srun --kill-on-bad-exit)
        if self.sink is not None:
            self.sink.close()
        got = preempt.received()
        message = (f"preempted ({preempt.signal_name(got) if got else 'signal on another rank'}) at step {done}/"
                   f"{self.s.total_steps}: checkpoint {path or 'not saved (no run directory)'}; exit status "
                   f"{Preempted.exit_code}, rerun with the same run directory and checkpoint.resume=auto to resume")
        (log.warning if self.dist.is_main else log.info)(message)
        raise Preempted(message)

    def _log_train(self, done: int, train: dict, samples_per_s: float, step_s: float, bar) -> None:
        self.last_train = train
        record = {"epoch": round(self.batches.epoch_at(done), 4), "loss": train["loss"],
                  "accuracy": train["accuracy"], "lr": self.optimizer.param_groups[0]["lr"],
                  "samples_per_s": samples_per_s, "step_time_ms": 1000 * step_s,
                  **self.utilization(samples_per_s)}
        if self.noise is not None:
            self.b_simple = self.noise.read(self.dist)
            if self.b_simple is not None:
                record["noise_scale"] = self.b_simple
        self.sink.log(done, record, "train")
        bar.set_postfix(loss=f"{train['loss']:.4f}", acc=f"{train['accuracy']:.3f}",
                        samples_s=f"{samples_per_s:,.0f}", refresh=False)
        if bar.disable:
            log.info("step %d/%d epoch %.2f loss %.4f acc %.3f lr %.4g %.0f samples/s", done, self.s.total_steps,
                     record["epoch"], train["loss"], train["accuracy"], record["lr"], samples_per_s)

    def _validate(self, done: int) -> dict:
        """Evaluate on the validation set; track the best accuracy and when the target was first reached."""
        t0 = time.perf_counter()
        val = self.evaluate(self.splits.val_x, self.splits.val_y)
        self.eval_time_s += time.perf_counter() - t0
        self.last_val, self._last_val_step = val, done
        self.sink.log(done, {"epoch": round(self.batches.epoch_at(done), 4), "loss": val["loss"],
                             "accuracy": val["accuracy"]}, "val")
        if self.best_val_accuracy is None or val["accuracy"] > self.best_val_accuracy:
            self.best_val_accuracy = val["accuracy"]
        if self.s.target_accuracy and not self.reached and val["accuracy"] >= self.s.target_accuracy:
            self.reached = {"steps_to_target": done, "epochs_to_target": round(self.batches.epoch_at(done), 4),
                            "time_to_target_s": self.train_time_s}
            log.info("target accuracy %.3f reached at step %d (%.1f s of training)", self.s.target_accuracy,
                     done, self.train_time_s)
        return val

    def _out_of_time(self) -> bool:
        # ranks' clocks differ slightly: decide on their mean, which every rank computes identically
        spent = self.dist.all_reduce_sum(torch.tensor([self.train_time_s], dtype=torch.float64, device=self.device))
        return spent.item() / self.dist.world_size >= self.s.time_budget_s

    def finish(self, start_step: int, step: int) -> dict:
        """Final validation and test evaluation; the run's figures."""
        if not self.splits.val_x.shape[0]:
            val = {}
        else:  # a run stopped by its time budget may just have validated this very step
            val = self.last_val if self._last_val_step == step else self._validate(step)
        t0 = time.perf_counter()
        test = self.evaluate(self.splits.test_x, self.splits.test_y)
        self.eval_time_s += time.perf_counter() - t0
        self.sink.log(step, {"loss": test["loss"], "accuracy": test["accuracy"]}, "test")
        samples_per_s = self.steady_samples / self.steady_time_s if self.steady_time_s else None
        status = self.status
        if status == "ok" and self.s.target_accuracy and not self.reached:
            status = "target_not_reached"
        return {
            "status": status,
            "steps": step,
            "epochs": round(self.batches.epoch_at(step), 4),
            "samples_per_s": samples_per_s,
            "samples_per_s_std": statistics.pstdev(self.steady_rates) if len(self.steady_rates) > 1 else None,
            "steady_intervals": len(self.steady_rates),
            "step_time_ms_median": self.timer.median_ms(),
            **self.utilization(samples_per_s),
            "final_train_loss": self.last_train.get("loss"),
            "final_train_accuracy": self.last_train.get("accuracy"),
            "val_loss": val.get("loss"),
            "val_accuracy": val.get("accuracy"),
            "best_val_accuracy": self.best_val_accuracy,
            "test_loss": test["loss"],
            "test_accuracy": test["accuracy"],
            "target_accuracy": self.s.target_accuracy or None,
            "steps_to_target": self.reached.get("steps_to_target"),
            "epochs_to_target": self.reached.get("epochs_to_target"),
            "time_to_target_s": self.reached.get("time_to_target_s"),
            "noise_scale": self.b_simple,
            "train_time_s": self.train_time_s,
            "eval_s": self.eval_time_s,
            "trained_steps_this_run": step - start_step,
        }

    def state_dict(self, step: int = 0) -> dict:
        """What a checkpoint holds besides the step and RNG states (the step is also the data position)."""
        return {"epoch": self.batches.epoch_at(step), "samples_seen": step * self.batches.global_batch_size,
                "model": self.engine.unwrap(self.model).state_dict(),
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
