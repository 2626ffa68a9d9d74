"""Gradient noise scale: the A.1 estimators on hand numbers, and B_simple recovered on a problem with known answer."""

from __future__ import annotations

import math

import pytest
import torch

from ddtrain.runtime.noise import NoiseScale, gradient_stats

# Linear least squares in D dims, per-example loss 0.5 * (x.w - y)^2, x ~ N(0, I), y = x.w* + eps,
# eps ~ N(0, SIGMA^2), evaluated at a fixed w = w* + delta with |delta| = 1. The per-example gradient is
#   g = x (x.delta - eps)
# and, ANALYTICALLY (Isserlis: E[x x^T delta delta^T x x^T] = |delta|^2 I + 2 delta delta^T):
#   G     = E[g]            = delta
#   Sigma = E[g g^T] - G G^T = (|delta|^2 + SIGMA^2) I + delta delta^T
# so tr(Sigma) = D (|delta|^2 + SIGMA^2) + |delta|^2, |G|^2 = |delta|^2 and
#   B_simple = tr(Sigma) / |G|^2 = D (1 + SIGMA^2) + 1 = 17 for D = 8, SIGMA = 1.
# test_analytic_moments_match_monte_carlo checks these formulas against a large sample.
D = 8
SIGMA = 1.0
TRUE_B_SIMPLE = D * (1.0 + SIGMA**2) + 1.0


def problem(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(w*, w) with |w - w*| = 1."""
    w_star = torch.randn(D, generator=gen, dtype=torch.float64)
    delta = torch.randn(D, generator=gen, dtype=torch.float64)
    return w_star, w_star + delta / delta.norm()


def per_example_grads(x: torch.Tensor, w_star: torch.Tensor, w: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    y = x @ w_star + SIGMA * torch.randn(x.shape[:-1], generator=gen, dtype=torch.float64)
    return x * (x @ w - y).unsqueeze(-1)


def test_gradient_stats_on_hand_numbers():
    # b = 1, B = 4, |G_b|^2 = 10, |G_B|^2 = 4:
    #   |G|^2 = (4*4 - 1*10) / (4 - 1) = 2,  tr(Sigma) = (10 - 4) / (1 - 1/4) = 8
    grad_sq, trace_sigma = gradient_stats(10.0, 4.0, 1, 4)
    assert grad_sq == pytest.approx(2.0)
    assert trace_sigma == pytest.approx(8.0)
    # exact expectations E|G_b|^2 = |G|^2 + tr(Sigma)/b invert exactly
    g2, tr = 3.0, 50.0
    b, B = 16, 64
    assert gradient_stats(g2 + tr / b, g2 + tr / B, b, B) == pytest.approx((g2, tr))
    with pytest.raises(ValueError):
        gradient_stats(1.0, 1.0, 8, 8)


def test_ema_is_bias_corrected_and_b_simple_guards():
    ns = NoiseScale(beta=0.9)
    assert ns.b_simple is None and ns.grad_sq is None and ns.trace_sigma is None
    ns.update(10.0, 4.0, 1, 4)  # |G|^2 = 2, tr = 8
    # one update: the corrected EMA is the value itself, not (1 - beta) times it
    assert ns.grad_sq == pytest.approx(2.0) and ns.trace_sigma == pytest.approx(8.0)
    assert ns.b_simple == pytest.approx(4.0)
    ns.update(10.0, 4.0, 1, 4)
    assert ns.grad_sq == pytest.approx(2.0) and ns.b_simple == pytest.approx(4.0)
    # the two EMAs are kept separately: the ratio of averages, not the average of ratios
    ns2 = NoiseScale(beta=0.5)
    ns2.update(*_inputs(grad_sq=1.0, trace_sigma=10.0))   # ratio 10
    ns2.update(*_inputs(grad_sq=3.0, trace_sigma=10.0))   # ratio 3.33
    w1, w2 = 0.5 * 0.5, 0.5                               # EMA weights of the two updates before correction
    expected = (w1 * 10 + w2 * 10) / (w1 * 1 + w2 * 3)
    assert ns2.b_simple == pytest.approx(expected)
    # non-finite inputs (overflowed step) are skipped
    ns2.update(math.inf, 1.0, 1, 4)
    assert ns2.step == 2 and ns2.b_simple == pytest.approx(expected)
    # a non-positive |G|^2 average has no meaningful ratio
    ns3 = NoiseScale()
    ns3.update(*_inputs(grad_sq=-1.0, trace_sigma=5.0))
    assert ns3.grad_sq == pytest.approx(-1.0) and ns3.b_simple is None


def _inputs(grad_sq: float, trace_sigma: float, b: int = 4, B: int = 16):
    """(g_small_sq, g_big_sq, b, B) whose estimates are exactly (grad_sq, trace_sigma)."""
    return grad_sq + trace_sigma / b, grad_sq + trace_sigma / B, b, B


def test_state_dict_round_trips_through_torch_save(tmp_path):
    ns = NoiseScale(beta=0.95)
    for k in range(5):
        ns.update(*_inputs(grad_sq=1.0 + k, trace_sigma=20.0))
    torch.save({"noise": ns.state_dict()}, tmp_path / "ck.pt")
    state = torch.load(tmp_path / "ck.pt", weights_only=True)["noise"]
    restored = NoiseScale()
    restored.load_state_dict(state)
    assert restored.beta == 0.95 and restored.step == 5
    assert restored.b_simple == ns.b_simple
    ns.update(*_inputs(3.0, 7.0))
    restored.update(*_inputs(3.0, 7.0))
    assert restored.b_simple == ns.b_simple
    with pytest.raises(ValueError):
        restored.load_state_dict({"beta": 0.9})


def test_analytic_moments_match_monte_carlo():
    gen = torch.Generator().manual_seed(1)
    w_star, w = problem(gen)
    g = per_example_grads(torch.randn(400_000, D, generator=gen, dtype=torch.float64), w_star, w, gen)
    mean = g.mean(0)
    trace = (g - mean).pow(2).sum(1).mean().item()
    delta = w - w_star
    assert torch.allclose(mean, delta, atol=0.02)
    assert trace == pytest.approx(D * (1 + SIGMA**2) + 1, rel=0.02)


@pytest.mark.parametrize("ranks,b", [
    (2, 8),    # two ranks: b = per-rank batch, B = 16
    (4, 8),    # four ranks: B = 32
    (2, 16),   # one rank, two accumulation micro-batches of 16: b = B / 2 with B = 32
])
def test_recovers_known_b_simple(ranks, b):
    steps = 10_000
    gen = torch.Generator().manual_seed(1000 * ranks + b)
    w_star, w = problem(gen)
    # every step, each rank draws b fresh examples at the same w (w fixed keeps G and Sigma known)
    x = torch.randn(steps, ranks, b, D, generator=gen, dtype=torch.float64)
    local = per_example_grads(x, w_star, w, gen).mean(2)          # (steps, ranks, D): before the allreduce
    averaged = local.mean(1)                                       # (steps, D): after the allreduce
    g_small_sq = local.pow(2).sum(-1).mean(-1).tolist()            # mean over ranks of |g_rank|^2
    g_big_sq = averaged.pow(2).sum(-1).tolist()
    # beta close to 1 averages over thousands of steps: one step's estimates are far noisier than 10%
    ns = NoiseScale(beta=0.9995)
    for small, big in zip(g_small_sq, g_big_sq):
        ns.update(small, big, b, ranks * b)
    assert abs(ns.b_simple / TRUE_B_SIMPLE - 1) < 0.10
    assert abs(ns.grad_sq / 1.0 - 1) < 0.10
