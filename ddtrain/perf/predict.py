"""Scaling predictor: step time and efficiency of data-parallel training on 1..N devices.

Cost model (ring allreduce, Patarasuk & Yuan 2009; Thakur et al. 2005): averaging S gradient bytes
over n ranks whose links carry B bytes/s per direction with a per-step latency alpha takes

    t_comm(n) = 2(n-1)/n * S/B + 2(n-1) * alpha        (0 for n = 1)

(n-1 reduce-scatter steps then n-1 all-gather steps, each moving S/n bytes). A step is

    t_step = t_compute + (1 - overlap) * t_comm

where overlap in [0, 1] is the fraction of the allreduce hidden behind the backward pass (DDP's
bucketed allreduce). The default 0 assumes nothing is hidden: a conservative upper bound on the step
time; pass the figure measured by the overlap benchmark when there is one.

    ddtrain-bench predict --step-time-ms 120 --batch 64 --grad-bytes 102e6 --interconnect nvlink3
    ddtrain-bench predict --model resnet50 --input-shape 3,224,224 --device "A100 SXM4 80GB" --interconnect ib-hdr
"""

from __future__ import annotations

from typing import Callable, Sequence, Tuple, Union

from ddtrain.errors import UserError

ComputeModel = Union[Callable[[int], float], Tuple[int, float]]


def ring_allreduce_time(n: int, size_bytes: float, bandwidth: float, latency: float) -> float:
    """Seconds for a ring allreduce of size_bytes over n ranks: 2(n-1)/n * S/B + 2(n-1) * alpha."""
    if n < 1:
        raise UserError(f"number of devices {n} must be positive")
    if n == 1:
        return 0.0  # one device: nothing to average
    if bandwidth <= 0 or latency < 0 or size_bytes < 0:
        raise UserError(f"need bandwidth > 0, latency >= 0 and size >= 0 (got {bandwidth}, {latency}, {size_bytes})")
    return 2 * (n - 1) / n * size_bytes / bandwidth + 2 * (n - 1) * latency


def predict_step_time(compute_s: float, n: int, grad_bytes: float, bandwidth: float, latency: float,
                      overlap: float = 0.0) -> float:
    """Seconds per step: compute + (1 - overlap) x allreduce; overlap = fraction of communication hidden (0 = none)."""
    if not 0.0 <= overlap <= 1.0:
        raise UserError(f"overlap={overlap} must be in [0, 1] (the fraction of the allreduce hidden behind backward)")
    return compute_s + (1.0 - overlap) * ring_allreduce_time(n, grad_bytes, bandwidth, latency)


def _compute_fn(compute: ComputeModel) -> Callable[[int], float]:
    if callable(compute):
        return compute
    base_batch, base_s = compute
    # linear in the batch: right for large batches, optimistic for small ones (fixed per-step costs)
    return lambda batch: base_s * batch / base_batch


def scaling_table(compute: ComputeModel, gpus: Sequence[int], per_device_batches: Sequence[int], grad_bytes: float,
                  bandwidth: float, latency: float, overlap: float = 0.0) -> list[dict]:
    """Rows {gpus, per_device_batch, global_batch, compute_s, comm_s, step_s, samples_per_s, efficiency}.

    compute is a function per-device batch -> seconds, or (batch, seconds) scaled linearly in the batch.
    efficiency = samples/s on n devices / (n x samples/s on one) at the same per-device batch (weak scaling).
    """
    fn = _compute_fn(compute)
    rows = []
    for batch in per_device_batches:
        compute_s = float(fn(batch))
        single = batch / predict_step_time(compute_s, 1, grad_bytes, bandwidth, latency, overlap)
        for n in gpus:
            comm_s = ring_allreduce_time(n, grad_bytes, bandwidth, latency)
            step_s = predict_step_time(compute_s, n, grad_bytes, bandwidth, latency, overlap)
            samples_per_s = n * batch / step_s
            rows.append({"gpus": n, "per_device_batch": batch, "global_batch": n * batch, "compute_s": compute_s,
                         "comm_s": comm_s, "step_s": step_s, "samples_per_s": samples_per_s,
                         "efficiency": samples_per_s / (n * single)})
    return rows


def gradient_bytes(model) -> int:
    """Bytes of one full gradient: numel x element size of every parameter that requires grad."""
    # gradients take their parameter's dtype: fp32 under bf16/fp16 autocast, which keeps fp32 weights
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def format_table(rows: Sequence[dict]) -> str:
    """The rows as a plain-text table (milliseconds, samples/s, efficiency in %)."""
    head = f"{'gpus':>5} {'batch/dev':>9} {'global':>8} {'compute ms':>11} {'comm ms':>9} {'step ms':>9} " \
           f"{'samples/s':>12} {'efficiency':>10}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['gpus']:5d} {r['per_device_batch']:9d} {r['global_batch']:8d} {1e3 * r['compute_s']:11.3f} "
                     f"{1e3 * r['comm_s']:9.3f} {1e3 * r['step_s']:9.3f} {r['samples_per_s']:12,.0f} "
                     f"{100 * r['efficiency']:9.1f}%")
    return "\n".join(lines)
