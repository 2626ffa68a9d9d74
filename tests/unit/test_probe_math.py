"""The probe's arithmetic (ddtrain.sweep.predict) and time to target with intervals (ddtrain.sweep.timing)."""

from __future__ import annotations

import math

import pytest

from ddtrain.sweep import predict, timing
from ddtrain.sweep.probe import Budget, anchor_sizes


def test_noise_windows_pool_sums_before_dividing():
    # two intervals of 10 steps: (|G|^2, tr) = (1, 30) and (-0.5, 40); pooled: (0.5*10, 70*10) -> B = 140
    recs = [{"step": 10, "noise_steps": 10, "noise_grad_sq": 1.0, "noise_trace_sigma": 30.0, "loss": 2.0},
            {"step": 20, "noise_steps": 10, "noise_grad_sq": -0.5, "noise_trace_sigma": 40.0, "loss": 1.0},
            {"step": 20, "loss": 0.9},  # a validation line: no noise fields, ignored
            {"step": 25, "noise_steps": 5, "noise_grad_sq": -1.0, "noise_trace_sigma": 3.0, "loss": 0.5}]
    w = predict.noise_windows(recs, window_steps=20)
    assert w[0] == {"start": 0, "end": 20, "loss": pytest.approx(1.5), "b_simple": pytest.approx(140.0)}
    assert w[1]["start"] == 20 and w[1]["end"] == 25 and w[1]["b_simple"] is None  # |G|^2 <= 0: no estimate


def test_growth_fit_recovers_a_power_law():
    # B_simple = 50 * loss^-1.5 exactly
    windows = [{"start": i * 10, "end": (i + 1) * 10, "loss": loss, "b_simple": 50 * loss ** -1.5}
               for i, loss in enumerate((2.0, 1.5, 1.0, 0.7, 0.5, 0.3))]
    a, p = predict.growth_fit(windows, skip_fraction=0.0)
    assert p == pytest.approx(1.5) and math.exp(a) == pytest.approx(50.0)
    assert predict.b_simple_at((a, p), 0.25) == pytest.approx(50 * 0.25 ** -1.5)
    assert predict.growth_fit(windows[:1]) is None


def test_loss_at_the_target_is_read_off_a_power_law_in_steps():
    # loss = 3 * step^-0.5 exactly over windows of 10 steps (each window's loss taken at its middle)
    windows = [{"start": s, "end": s + 10, "loss": 3 * (s + 5) ** -0.5} for s in range(0, 100, 10)]
    assert predict.loss_at(windows, 100) == pytest.approx(0.3)
    assert predict.loss_at(windows[-1:], 100) == windows[-1]["loss"]  # too few windows: the last one's
    assert predict.loss_at([], 100) is None


def test_intervals_cut_at_start_and_target():
    fit = (math.log(10.0), 0.0)  # B_simple = 10 whatever the loss
    recs = [{"step": s, "noise_steps": 10, "loss": 1.0} for s in (10, 20, 30, 40)]
    whole = predict.intervals(recs, fit, upto=35)
    assert [n for n, _ in whole] == [10, 10, 10, 5] and all(b == pytest.approx(10.0) for _, b in whole)
    assert [n for n, _ in predict.intervals(recs, fit, upto=35, start=15)] == [5, 10, 5]


def test_steps_sum_on_hand_numbers():
    # 100 steps at b0 = 10 with B_noise = kappa * B_simple = 2 * 50 = 100 throughout: each step is worth
    # (1 + 100/B) / (1 + 100/10) = (1 + 100/B) / 11 steps at batch B
    parts = [(60, 50.0), (40, 50.0)]
    assert predict.predict_steps(parts, 2.0, 10, 10) == pytest.approx(100.0)  # the run itself
    assert predict.predict_steps(parts, 2.0, 10, 100) == pytest.approx(100 * 2 / 11)
    s_min, b_crit = predict.knee_from(parts, 2.0, 10)
    assert (s_min, b_crit) == (pytest.approx(100 / 11), pytest.approx(100.0))
    for b in (10, 37, 1000):  # the sum is exactly the knee model
        assert predict.predict_steps(parts, 2.0, 10, b) == pytest.approx(s_min * (1 + b_crit / b))
    # a noise scale that grows: B_crit is the S_min-weighted mean of B_noise, between the two values
    grown = predict.knee_from([(50, 10.0), (50, 100.0)], 1.0, 10)[1]
    assert 10 < grown < 100 and grown == pytest.approx((50 / 2 * 10 + 50 / 11 * 100) / (50 / 2 + 50 / 11))


def test_kappa_is_recovered_from_branches():
    segment = [(20, 30.0), (20, 40.0), (20, 60.0)]
    measured = {b: predict.predict_steps(segment, 3.0, 16, b) for b in (64, 256)}
    kappa, rms = predict.fit_kappa(segment, 16, measured)
    assert kappa == pytest.approx(3.0, rel=1e-4) and rms < 1e-6
    # branches at or below b0 carry no information; none at all: no fit
    assert predict.fit_kappa(segment, 16, {16: 60, 8: 120}) is None


def test_learning_rate_from_anchors():
    # linear from (32, 0.05) until it meets the anchor's 0.2: 0.1 at 64, 0.2 at 128, 0.2 beyond
    got = [predict.lr_from_anchors(32, 0.05, (2048, 0.2), 100, b) for b in (16, 64, 128, 512, 4096)]
    assert got == pytest.approx([0.025, 0.1, 0.2, 0.2, 0.2])
    # no anchor: McCandlish's form through b0's best
    assert predict.lr_from_anchors(10, 0.1, None, 100, 100) == pytest.approx(0.55)


def test_learning_rate_and_failure_under_the_rule():
    assert predict.best_lr(0.1, 32, 256, 32) == pytest.approx(0.1)
    assert predict.best_lr(0.1, 32, 256, 256) == pytest.approx(0.1 * 9 / 2)
    assert predict.best_lr(0.1, 32, 256, 1e9) == pytest.approx(0.1 * 9, rel=1e-6)  # saturates at eta_max
    # the rule at the best LR: same steps; at half: 1/(2*0.5 - 0.25) = 4/3 the steps; at 2x or more: fails
    assert predict.rule_outcome(0.2, 0.2, 100, 1000) == {"ratio": 1.0, "steps": 100.0, "fails": False, "why": ""}
    assert predict.rule_outcome(0.1, 0.2, 90, 1000)["steps"] == pytest.approx(120.0)
    assert predict.rule_outcome(0.5, 0.2, 100, 1000)["fails"]
    assert "diverges" in predict.rule_outcome(0.4, 0.2, 100, None)["why"]
    over = predict.rule_outcome(0.02, 0.2, 100, 300)  # 10x too small: 1/(0.2 - 0.01) = 5.3x the steps
    assert over["fails"] and over["steps"] == pytest.approx(100 / 0.19) and "budget" in over["why"]


def test_next_learning_rate_walks_to_a_bracket():
    assert predict.lr_plan(0.1) == [0.1, 0.05, 0.2]
    assert predict.next_lr({0.1: 300, 0.05: 400, 0.2: 250}) == 0.4          # best at the top: go up
    assert predict.next_lr({0.1: 300, 0.05: 200, 0.2: None}) == 0.025       # best at the bottom: go down
    assert predict.next_lr({0.1: 300, 0.05: 400, 0.2: "diverged"}) is None  # bracketed
    assert predict.next_lr({0.1: "diverged", 0.2: "diverged"}) == 0.05      # all blew up
    assert predict.next_lr({0.1: None, 0.2: "diverged"}) == 0.05            # unstable or slow: lower first
    assert predict.next_lr({0.1: None, 0.05: None}) == 0.2                  # all too slow
    assert predict.next_lr({0.1: 1, 0.05: 2, 0.2: 3, 0.4: 4, 0.8: 5}) is None  # the limit


def test_anchor_sizes_and_budget():
    # the first anchor near 8 x B_simple, the next near 2 x (ties: the larger)
    assert anchor_sizes([64, 128, 256, 512, 1024], b_simple=30.0, count=2) == [256, 64]
    assert anchor_sizes([64, 128, 256], b_simple=100.0, count=1) == [256]  # as far out as the candidates go
    assert anchor_sizes([], 30.0, 2) == []
    budget = Budget(1000)
    assert budget.cap(100, 0) == 10 and budget.cap(100, 4) == 4
    budget.spent = 950
    assert budget.cap(100, 0) is None and budget.cap(10, 0) == 5
    assert Budget(0).cap(100, 7) == 7


def test_step_time_and_time_to_target_intervals():
    assert timing.round_order([64, 32, 128], 2) == [(0, 32), (0, 64), (0, 128), (1, 128), (1, 64), (1, 32)]
    assert timing.step_time({"step_time_s": [0.03, 0.01, 0.02]}) == (0.02, 0.01, 0.03)
    assert timing.step_time({"status": "oom", "step_time_s": []}) is None
    assert timing.time_to_target((100, 90, 110), (0.02, 0.01, 0.03)) == pytest.approx((2.0, 0.9, 3.3))
    times = {32: (4.0, 3.5, 4.5), 64: (2.6, 2.0, 3.6), 128: (2.5, 2.4, 2.7), 256: (3.0, 2.8, 3.3)}
    found = timing.fastest(times)
    # 64's 2.0-3.6 overlaps 128's 2.4-2.7; 256's 2.8-3.3 does not: 128 is faster than 256 beyond the noise
    assert found["batch_size"] == 128 and found["tied"] == [64]
    assert found["indistinct"] == [(32, 64), (64, 128)]  # 32's 3.5-4.5 overlaps 64's 2.0-3.6
    # ties in T go to the smaller batch
    assert timing.fastest({64: (2.0, 1.9, 2.1), 128: (2.0, 1.9, 2.1)})["batch_size"] == 64
    assert timing.fastest({}) is None
