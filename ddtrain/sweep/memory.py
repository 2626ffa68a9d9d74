"""The sweep's memory probe: does this batch size fit on every rank? Asked before a point trains."""

from __future__ import annotations

import torch

from ddtrain import testing
from ddtrain.errors import OutOfMemory


def probe_memory(trainer, batches, start_step: int = 0) -> None:
    """One forward and backward without the gradient exchange, to learn whether this batch fits.

    Every rank then agrees (a collective on the flag, so nobody hangs) and all raise OutOfMemory
    together. The probe leaves parameters, buffers, gradients and RNG state as they were.
    """
    step, engine = trainer.step, trainer.engine
    device = engine.device
    model = engine.unwrap(step.model)
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    rng = torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)
    failed = 0.0
    try:
        testing.inject_oom(engine.rank, batches.per_rank_batch_size)
        x, y = step.to_device(*batches.get(start_step, 0))
        with engine.local_backward(step.model):  # forward and backward: hooks fire in both
            with step.autocast():
                loss = step.loss(step.model(x), y)
            step.scaler.scale(loss).backward()
        del x, y, loss
    except torch.OutOfMemoryError:
        failed = 1.0
    step.optimizer.zero_grad()
    with torch.no_grad():
        for k, v in model.named_buffers():
            v.copy_(buffers[k])
    torch.set_rng_state(rng[0])
    if rng[1] is not None:
        torch.cuda.set_rng_state(rng[1], device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    flags = engine.all_reduce_sum(torch.tensor([failed], device=device))
    if flags.item() > 0:
        raise OutOfMemory(f"global batch {batches.global_batch_size} (per-rank micro-batch "
                          f"{batches.per_rank_batch_size}) does not fit on {int(flags.item())} rank(s)")
