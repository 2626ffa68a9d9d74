"""One synchronized SGD step: forward and backward over the accumulation micro-steps, then the update.

Everything that happens once per step lives here and nothing else: no cadence, no logging, no host
synchronisation (except train.stop_on_nan, which checks each micro-batch's loss on the host).
"""

from __future__ import annotations

import contextlib
import logging

import torch

from ddtrain import testing
from ddtrain.runtime.loss import Loss, build_loss
from ddtrain.runtime.metrics import SumMeter
from ddtrain.runtime.noise import GradientNoiseMeter

log = logging.getLogger("ddtrain")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLoss(RuntimeError):
    """This rank's loss is NaN or infinite and train.stop_on_nan is set."""


def loss_check(rank: int, stop_on_nan: bool):
    """A per-micro-batch hook (step, loss) -> loss, or None when there is nothing to check.

    With stop_on_nan the rank whose own loss is not finite raises NonFiniteLoss at once (one host sync
    per micro-batch); the other ranks then stop with its message. Also applies an injected fault.
    """
    fault = testing.injected_fault(rank)
    if not stop_on_nan and fault is None:
        return None

    def check(step: int, loss):
        if fault is not None and step + 1 == fault[0]:
            loss = testing.apply_fault(fault[1], step + 1, loss)
        if stop_on_nan and not torch.isfinite(loss.detach()).all():
            raise NonFiniteLoss(f"loss is {loss.item()} at step {step + 1} on rank {rank}'s batch "
                                "(train.stop_on_nan=true)")
        return loss

    return check


class TrainStep:
    """Forward, loss, backward (exchange on the last micro-step only), clip, optimizer and LR step."""

    def __init__(self, engine, model, optimizer, scheduler, scaler, plan, train_cfg, loss: Loss | None = None):
        self.engine = engine
        self.loss = loss if loss is not None else build_loss()  # cross-entropy unless the config names another
        self.model = model  # as wrapped by the engine (and torch.compile)
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler
        self.device = engine.device
        self.accum = plan.grad_accum_steps
        self.grad_clip = train_cfg.grad_clip
        self.channels_last = train_cfg.channels_last
        dtype = AMP_DTYPES.get(train_cfg.precision)
        self.autocast = (lambda: torch.autocast(self.device.type, dtype=dtype)) if dtype else contextlib.nullcontext
        self.meter = SumMeter(self.device, self.loss.accuracy)  # the training loss (and accuracy) since the last log
        self.check_loss = loss_check(engine.rank, train_cfg.stop_on_nan)
        self.noise = None
        if train_cfg.noise_scale:
            self.noise = GradientNoiseMeter(self.device, plan)
            # distributed: each rank's gradient is seen by the engine's hook before the allreduce
            if engine.world_size > 1 and not engine.watch_local_gradients(model, self.noise.step_small):
                log.warning("engine %s cannot show local gradients: no gradient noise scale", engine.name)
                self.noise = None

    def to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch on the device, in the memory layout the model runs in."""
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def __call__(self, step: int, feed) -> None:
        """One optimizer step on the next grad_accum_steps micro-batches of `feed`."""
        accum = self.accum
        for micro in range(accum):
            x, y = self.to_device(*next(feed))
            # distributed: skip the gradient exchange until the last micro-step
            with self.engine.no_sync(self.model) if micro < accum - 1 else contextlib.nullcontext():
                with self.autocast():
                    logits = self.model(x)
                    loss = self.loss(logits, y)
                if self.check_loss is not None:
                    loss = self.check_loss(step, loss)
                self.scaler.scale(loss if accum == 1 else loss / accum).backward()
            self.meter.add(loss.detach(), logits.detach(), y)
            if self.noise is not None and self.engine.world_size == 1 and micro == 0 and accum > 1:
                # one rank: the first micro-batch is the small batch (its gradient is divided by accum)
                self.noise.add_small(self.noise.grad_sq(self.model.parameters()) * accum**2)
        self.engine.finish_gradients()
        if self.noise is not None:
            self.noise.end_step(self.model.parameters())
        if self.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)  # clip the true averaged gradient, not the scaled one
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        with self.engine.step_context():
            self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad()  # set_to_none (torch's default; Horovod's wrapper takes no argument)
        self.scheduler.step()

    def noise_scale(self) -> float | None:
        """B_simple from the steps since the last read (a collective: every rank calls it at the same step)."""
        if self.noise is None:
            return None
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
        return self.noise.read(self.engine, scale)
