"""The tuned sweep's bookkeeping and the knee with its interval, on hand-built rows and hand-checked numbers."""

from __future__ import annotations

import math

import pytest

from ddtrain.sweep import knee, trials


def trial(bs, seed, lr, factor, status="ok", steps=None, role="search", warmup=None):
    return {"batch_size": bs, "seed": seed, "lr": lr, "lr_factor": factor, "status": status,
            "steps_to_target": steps, "role": role, "warmup_epochs": warmup,
            "trial": trials.trial_name(bs, seed, lr, warmup)}


@pytest.fixture
def rows():
    """Batch 64: the rule reaches in 300 steps, x2.15 in 200 (best), x4.64 diverges, x0.46 pruned, x0.22 misses;
    repeats of x2.15 on seeds 1 and 2. Batch 128: nothing reaches. Batch 32: the rule is best, one repeat."""
    return [
        trial(64, 0, 0.1, 1.0, steps=300, role="rule"),
        trial(64, 0, 0.215, 2.15, steps=200),
        trial(64, 0, 0.464, 4.64, status="diverged"),
        trial(64, 0, 0.0464, 0.464, status="pruned"),
        trial(64, 0, 0.0215, 0.215, status="target_not_reached"),
        trial(64, 1, 0.215, 2.15, steps=220, role="repeat"),
        trial(64, 2, 0.215, 2.15, steps=240, role="repeat"),
        trial(128, 0, 0.2, 1.0, status="diverged", role="rule"),
        trial(128, 0, 0.0928, 0.464, status="target_not_reached"),
        trial(32, 0, 0.05, 1.0, steps=500, role="rule"),
        trial(32, 0, 0.107, 2.15, steps=500),  # a tie: the factor nearer the rule wins
        trial(32, 1, 0.05, 1.0, steps=520, role="repeat"),
    ]


def test_learning_rate_grid_is_log_spaced_around_the_rule():
    factors = trials.lr_factors(7, 100.0)
    assert factors == pytest.approx([10 ** (k / 3) for k in range(-3, 4)])
    assert trials.lr_factors(1, 100.0) == [1.0]
    order = trials.search_order(factors)
    assert order[0] == pytest.approx(1.0)  # the rule first, then outwards
    assert [round(math.log10(f) * 3) for f in order] == [0, -1, 1, -2, 2, -3, 3]
    assert trials.trial_name(128, 0, 0.2) == "bs128_s0_lr0.2"
    assert trials.trial_name(128, 1, 0.0215443469, 2.0) == "bs128_s1_lr0.021544_w2"


def test_min_over_trials(rows):
    by = trials.by_batch(rows)
    best64 = trials.best_trial(by[64])
    assert best64["lr_factor"] == 2.15 and best64["steps_to_target"] == 200
    assert trials.best_trial(by[128]) is None  # diverged and missed trials are never the minimum
    assert trials.best_trial(by[32])["lr_factor"] == 1.0  # tie at 500 steps: nearer the rule
    assert trials.prune_at(by[64]) == 200 and trials.prune_at(by[128]) is None
    # repeats do not take part in the search, even when faster
    assert trials.best_trial(by[64] + [trial(64, 3, 0.1, 1.0, steps=10, role="repeat")])["steps_to_target"] == 200
    assert trials.trial_counts(by[64]) == {"trials": 5, "reached": 2, "diverged": 1, "not_reached": 1,
                                           "pruned": 1, "oom": 0}


def test_tuned_rows_and_steps_by_batch(rows):
    tuned = trials.tuned_rows(rows)
    got = sorted((r["batch_size"], r["seed"], r["steps_to_target"]) for r in tuned)
    # 128 is represented by its rule trial (a miss); 64 by its best trial and the repeats of that setting
    assert got == [(32, 0, 500), (32, 1, 520), (64, 0, 200), (64, 1, 220), (64, 2, 240), (128, 0, None)]
    assert trials.steps_by_batch(rows) == {32: [500.0, 520.0], 64: [200.0, 220.0, 240.0]}
    assert [r["batch_size"] for r in trials.rule_rows(rows)] == [64, 128, 32]


def test_knee_fit_recovers_the_model():
    s_min, b_crit = 100.0, 128.0
    points = [(b, knee.model_steps(s_min, b_crit, b)) for b in (16, 32, 64, 128, 256, 512)]
    assert knee.fit_knee(points) == pytest.approx((s_min, b_crit))
    assert knee.fit_knee(points[:2]) is None
    assert knee.fit_knee([(32, 10.0), (64, 20.0), (128, 40.0)]) is None  # rising steps: no knee


def test_knee_interval_from_seeds():
    # three seeds at +-10% around the model: the interval brackets the fit to the means, which is exact
    s_min, b_crit = 100.0, 128.0
    by = {b: [knee.model_steps(s_min, b_crit, b) * f for f in (0.9, 1.0, 1.1)] for b in (16, 32, 64, 128, 256, 512)}
    fit = knee.bootstrap_knee(by, replicates=500)
    assert fit["b_crit"] == pytest.approx(b_crit) and fit["s_min"] == pytest.approx(s_min)
    assert fit["b_crit_lo"] < b_crit < fit["b_crit_hi"] and fit["s_min_lo"] < s_min < fit["s_min_hi"]
    assert fit["b_crit_hi"] / fit["b_crit_lo"] < 3 and fit["seeds"] == 3 and fit["fitted_share"] > 0.9
    # seeds that agree exactly: nothing to resample, the interval is the point
    exact = knee.bootstrap_knee({b: [v[1]] * 3 for b, v in by.items()}, replicates=50)
    assert exact["b_crit_lo"] == pytest.approx(b_crit) and exact["b_crit_hi"] == pytest.approx(b_crit)
    # one seed: no interval, still the fit; too few batch sizes: no knee
    single = knee.bootstrap_knee({b: v[:1] for b, v in by.items()})
    assert single["b_crit_lo"] is None and single["b_crit"] > 0
    assert knee.bootstrap_knee({16: [1.0], 32: [0.5]}) is None
    # the same draws for the same seed: the report does not change between reruns
    assert knee.bootstrap_knee(by, replicates=200) == knee.bootstrap_knee(by, replicates=200)
