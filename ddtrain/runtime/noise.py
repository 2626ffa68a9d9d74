"""The gradient noise scale B_simple of McCandlish et al. 2018 ("An Empirical Model of Large-Batch Training").

Appendix A.1 of the paper: with gradients measured at two batch sizes b < B at the same weights,

    E|G_b|^2 = |G|^2 + tr(Sigma) / b

so two measurements give unbiased estimates of the true squared gradient norm and of the trace of the
per-example gradient covariance:

    |G|^2     ~= (B |G_B|^2 - b |G_b|^2) / (B - b)
    tr(Sigma) ~= (|G_b|^2 - |G_B|^2) / (1/b - 1/B)

In data-parallel training both come for free: each rank's local gradient (before the allreduce) is a
small-batch gradient (b = per-rank batch), the allreduced gradient is the big-batch one (B = n * b). On one
rank, two gradient-accumulation micro-batches play the two ranks (b = B / 2).

Each step's estimates are very noisy (and |G|^2 can come out negative), so the two are averaged with
exponential moving averages SEPARATELY and only then divided: the ratio of averages is a consistent
estimator, the average of per-step ratios is not (a ratio of noisy numbers is biased and heavy-tailed).
B_simple = tr(Sigma) / |G|^2 is the paper's prediction of the critical batch size.

Pure float math: callers turn their tensors into Python floats first.
"""

from __future__ import annotations

import math


def gradient_stats(g_small_sq: float, g_big_sq: float, b: float, B: float) -> tuple[float, float]:
    """Unbiased (|G|^2, tr(Sigma)) estimates from squared gradient norms at batch sizes b < B."""
    if not (b > 0 and B > b):
        raise ValueError(f"gradient_stats needs 0 < b < B, got b={b}, B={B}")
    grad_sq = (B * g_big_sq - b * g_small_sq) / (B - b)
    trace_sigma = (g_small_sq - g_big_sq) / (1.0 / b - 1.0 / B)
    return grad_sq, trace_sigma


class NoiseScale:
    """Running estimate of B_simple = tr(Sigma) / |G|^2 from bias-corrected EMAs of the two estimates."""

    def __init__(self, beta: float = 0.99):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"NoiseScale beta must be in [0, 1), got {beta}")
        self.beta = float(beta)
        self.step = 0
        self._grad_sq = 0.0  # raw (biased towards 0) EMAs, as in Adam; corrected on read
        self._trace_sigma = 0.0

    def update(self, g_small_sq: float, g_big_sq: float, b: float, B: float) -> None:
        """Fold one step's small- and big-batch squared gradient norms into the EMAs."""
        grad_sq, trace_sigma = gradient_stats(g_small_sq, g_big_sq, b, B)
        # a step with inf/nan gradients (fp16 overflow, a diverging run) is skipped by the optimizer too;
        # letting it in would poison the averages for good
        if not (math.isfinite(grad_sq) and math.isfinite(trace_sigma)):
            return
        self.step += 1
        self._grad_sq = self.beta * self._grad_sq + (1.0 - self.beta) * grad_sq
        self._trace_sigma = self.beta * self._trace_sigma + (1.0 - self.beta) * trace_sigma

    def _corrected(self, raw: float) -> float | None:
        if self.step == 0:
            return None
        return raw / (1.0 - self.beta ** self.step)

    @property
    def grad_sq(self) -> float | None:
        """Bias-corrected EMA of the |G|^2 estimate (None before the first update)."""
        return self._corrected(self._grad_sq)

    @property
    def trace_sigma(self) -> float | None:
        """Bias-corrected EMA of the tr(Sigma) estimate (None before the first update)."""
        return self._corrected(self._trace_sigma)

    @property
    def b_simple(self) -> float | None:
        """tr(Sigma) / |G|^2 from the EMAs; None before the first update or while either EMA is <= 0 (too noisy yet)."""
        grad_sq, trace_sigma = self.grad_sq, self.trace_sigma
        if grad_sq is None or trace_sigma is None or grad_sq <= 0.0 or trace_sigma <= 0.0:
            return None
        return trace_sigma / grad_sq

    def state_dict(self) -> dict:
        """Plain floats and ints, loadable with torch.load(weights_only=True)."""
        return {"beta": self.beta, "step": self.step, "grad_sq_ema": self._grad_sq,
                "trace_sigma_ema": self._trace_sigma}

    def load_state_dict(self, state: dict) -> None:
        """Restore from state_dict(); beta comes from the state because the stored EMAs were built with it."""
        try:
            beta, step = float(state["beta"]), int(state["step"])
            grad_sq, trace_sigma = float(state["grad_sq_ema"]), float(state["trace_sigma_ema"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a NoiseScale state: {e!r}") from e
        if not 0.0 <= beta < 1.0 or step < 0:
            raise ValueError(f"not a NoiseScale state: beta={beta}, step={step}")
        self.beta, self.step, self._grad_sq, self._trace_sigma = beta, step, grad_sq, trace_sigma


class GradientNoiseMeter:
    """Measures |G_b|^2 and |G_B|^2 on the device every step (no host sync); feeds NoiseScale when read.

    Small batch b: one rank's share B/n of the global batch (its gradient before the allreduce,
    seen by the engine's hook), or with one rank the first of its accumulation micro-batches.
    Norms are taken in fp32 before any clipping; a loss scale (fp16) is undone when read.
    """

    def __init__(self, device, plan, beta: float = 0.99):
        import torch

        self.sums = torch.zeros(3, dtype=torch.float64, device=device)  # small sq, big sq, steps
        self.step_small = torch.zeros((), dtype=torch.float64, device=device)  # this step's, from the hook
        self.big_batch = plan.global_batch_size
        self.small_batch = (plan.global_batch_size / plan.world_size if plan.world_size > 1
                            else plan.global_batch_size / plan.grad_accum_steps)
        self.available = plan.world_size > 1 or plan.grad_accum_steps >= 2
        self.estimator = NoiseScale(beta)
        self.last_interval: dict = {}  # the last read's own estimates, before the moving averages

    @staticmethod
    def grad_sq(params):
        """Squared L2 norm of the parameters' gradients, as a device tensor."""
        import torch

        grads = [p.grad for p in params if p.grad is not None]
        return torch.stack(torch._foreach_norm(grads)).double().pow(2).sum()

    def add_small(self, squared_norm) -> None:
        """Record a small-batch squared gradient norm of this step (device tensor)."""
        self.step_small += squared_norm

    def end_step(self, params) -> None:
        """After the averaged gradient is complete: record both norms (still loss-scaled)."""
        self.sums[0] += self.step_small
        self.sums[1] += self.grad_sq(params)
        self.sums[2] += 1
        self.step_small.zero_()

    def read(self, engine, loss_scale: float = 1.0) -> float | None:
        """Reduce the norms since the last read over ranks, update the estimate, return B_simple.

        loss_scale: the GradScaler's scale of these steps (fp16), read by the caller at this
        synchronised point; both norms carry its square.
        """
        if not self.available:
            return None
        small, big, steps = engine.all_reduce_sum(self.sums.clone()).tolist()
        self.sums.zero_()
        if steps > 0:
            inv = 1.0 / (loss_scale * loss_scale)
            small, big = small * inv / steps, big * inv / steps
            self.estimator.update(small, big, self.small_batch, self.big_batch)
            grad_sq, trace_sigma = gradient_stats(small, big, self.small_batch, self.big_batch)
            self.last_interval = {"noise_grad_sq": grad_sq, "noise_trace_sigma": trace_sigma,
                                  "noise_steps": round(steps / engine.world_size)}  # every rank counted the steps
        return self.estimator.b_simple

    def state_dict(self) -> dict:
        """The estimate so far (read at the checkpoint's step, so nothing is pending)."""
        return self.estimator.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Continue the estimate of a resumed run."""
        self.estimator.load_state_dict(state)
