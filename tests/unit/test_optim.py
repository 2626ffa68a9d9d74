"""ddtrain.optim: LR scaling, schedule factors, parameter groups, LARS and exact checkpoint resume."""

import io
import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from ddtrain.config import OptimizerConfig, ScheduleConfig
from ddtrain.errors import UserError
from ddtrain.runtime.optim import Lars, build_optimizer, build_scheduler, lr_factor, scaled_lr


def _factor(step, **overrides):
    kw = dict(name="constant", total_steps=100, warmup_steps=0, warmup_start_factor=1.0,
              min_lr_factor=0.0, milestones=[0.5, 0.75], gamma=0.1)
    kw.update(overrides)
    return lr_factor(step, **kw)


def _model(seed=0):
    torch.manual_seed(seed)
    # Conv weight (4-D), linear weight (2-D), biases and a norm layer (1-D).
    return nn.Sequential(nn.Conv1d(2, 3, 3), nn.BatchNorm1d(3), nn.Flatten(), nn.Linear(3 * 6, 4))


# --------------------------------------------------------------------------- scaled_lr


def test_scaled_lr_rules():
    assert scaled_lr(0.1, 1024, 256, "linear") == pytest.approx(0.4)
    assert scaled_lr(0.1, 64, 256, "linear") == pytest.approx(0.025)
    assert scaled_lr(0.1, 1024, 256, "sqrt") == pytest.approx(0.2)
    assert scaled_lr(0.1, 1024, 256, "none") == 0.1
    assert scaled_lr(0.1, 256, 256, "linear") == pytest.approx(0.1)


def test_scaled_lr_unknown_rule():
    with pytest.raises(UserError, match="train.lr_scaling"):
        scaled_lr(0.1, 1024, 256, "cubic")


# --------------------------------------------------------------------------- lr_factor


def test_warmup_ramps_from_start_factor():
    kw = dict(name="constant", warmup_steps=10, warmup_start_factor=0.25)
    assert _factor(0, **kw) == pytest.approx(0.25)
    assert _factor(5, **kw) == pytest.approx(0.625)  # halfway between 0.25 and 1
    assert _factor(10, **kw) == pytest.approx(1.0)
    assert _factor(50, **kw) == pytest.approx(1.0)


def test_warmup_without_scaling_starts_small():
    # start factor >= 1 (no LR scaling): ramp from 1/warmup_steps instead.
    assert _factor(0, warmup_steps=4, warmup_start_factor=1.0) == pytest.approx(0.25)
    assert _factor(2, warmup_steps=4, warmup_start_factor=1.0) == pytest.approx(0.625)
    assert _factor(4, warmup_steps=4, warmup_start_factor=1.0) == pytest.approx(1.0)


def test_cosine_factor():
    kw = dict(name="cosine", total_steps=110, warmup_steps=10, min_lr_factor=0.1)
    assert _factor(10, **kw) == pytest.approx(1.0)
    assert _factor(60, **kw) == pytest.approx((1 + 0.1) / 2)  # t = 0.5
    assert _factor(110, **kw) == pytest.approx(0.1)
    assert _factor(500, **kw) == pytest.approx(0.1)  # past the end: clamped
    assert _factor(35, **kw) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.25)))


def test_step_factor_milestones_are_fractions_after_warmup():
    kw = dict(name="step", total_steps=120, warmup_steps=20, milestones=[0.5, 0.75], gamma=0.1)
    assert _factor(20, **kw) == pytest.approx(1.0)
    assert _factor(69, **kw) == pytest.approx(1.0)
    assert _factor(70, **kw) == pytest.approx(0.1)  # t = 50/100
    assert _factor(94, **kw) == pytest.approx(0.1)
    assert _factor(95, **kw) == pytest.approx(0.01)  # t = 75/100
    assert _factor(119, **kw) == pytest.approx(0.01)


def test_lr_factor_unknown_name():
    with pytest.raises(UserError, match="constant, cosine, step"):
        _factor(0, name="linear")


# --------------------------------------------------------------------------- scheduler on an optimizer


def test_scheduler_drives_expected_lr_sequence():
    model = nn.Linear(2, 1)
    opt = build_optimizer(model, OptimizerConfig(name="sgd"), lr=0.8)
    # warmup_epochs 1 x 4 steps/epoch = 4 warmup steps from 0.8 * 0.25; then cosine over 4 steps.
    sched = build_scheduler(opt, ScheduleConfig(name="cosine", warmup_epochs=1.0, min_lr_factor=0.0),
                            total_steps=8, steps_per_epoch=4, warmup_start_factor=0.25)
    seen = []
    for _ in range(8):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    cos = [0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    expected = [0.2, 0.35, 0.5, 0.65] + [0.8 * c for c in cos]
    for lrs, want in zip(seen, expected):
        assert lrs == pytest.approx([want, want])  # both parameter groups follow the schedule


def test_scheduler_accepts_dictconfig_and_rounds_warmup():
    model = nn.Linear(2, 1)
    opt = build_optimizer(model, OmegaConf.structured(OptimizerConfig(name="adamw")), lr=1.0)
    cfg = OmegaConf.structured(ScheduleConfig(name="step", warmup_epochs=0.5, milestones=[0.5]))
    sched = build_scheduler(opt, cfg, total_steps=13, steps_per_epoch=6.2, warmup_start_factor=0.5)
    # round(0.5 * 6.2) = 3 warmup steps; milestone at step 3 + 0.5 * 10 = 8.
    lrs = []
    for _ in range(13):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.5, 0.5 + 0.5 / 3, 0.5 + 1.0 / 3, 1.0])
    assert lrs[7] == pytest.approx(1.0) and lrs[8] == pytest.approx(0.1)


@pytest.mark.parametrize("milestones", [[0.5, 0.5], [0.75, 0.5], [0.0, 0.5], [0.5, 1.0]])
def test_bad_milestones(milestones):
    opt = build_optimizer(nn.Linear(2, 1), OptimizerConfig(), lr=0.1)
    with pytest.raises(UserError, match="schedule.milestones"):
        build_scheduler(opt, ScheduleConfig(name="step", milestones=milestones), 10, 5, 1.0)


def test_bad_schedule_name_and_values():
    opt = build_optimizer(nn.Linear(2, 1), OptimizerConfig(), lr=0.1)
    with pytest.raises(UserError, match="constant, cosine, step"):
        build_scheduler(opt, ScheduleConfig(name="poly"), 10, 5, 1.0)
    with pytest.raises(UserError, match="schedule.min_lr_factor"):
        build_scheduler(opt, ScheduleConfig(name="cosine", min_lr_factor=1.5), 10, 5, 1.0)
    with pytest.raises(UserError, match="schedule.gamma"):
        build_scheduler(opt, ScheduleConfig(name="step", gamma=0.0), 10, 5, 1.0)


# --------------------------------------------------------------------------- optimizers and groups


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "lars"])
def test_weight_decay_groups_exclude_1d_params(name):
    model = _model()
    model[0].bias.requires_grad_(False)  # frozen parameters are left out
    opt = build_optimizer(model, OptimizerConfig(name=name, weight_decay=5e-4), lr=0.1)
    decay, no_decay = opt.param_groups
    assert (decay["name"], no_decay["name"]) == ("decay", "no_decay")
    ids = lambda ps: [id(p) for p in ps]  # noqa: E731
    assert ids(decay["params"]) == ids([model[0].weight, model[3].weight])
    assert ids(no_decay["params"]) == ids([model[1].weight, model[1].bias, model[3].bias])
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    if name == "lars":
        assert decay["lars"] is True and no_decay["lars"] is False



@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_without_weight_decay_one_group_makes_the_same_update(name):
    """No weight decay: one group "all" (half the optimizer's per-step Python), the same parameters as
    the two groups give after a few steps."""
    one, two = _model(), _model()  # the same weights
    opt = build_optimizer(one, OptimizerConfig(name=name, weight_decay=0.0), lr=0.1)
    assert [g["name"] for g in opt.param_groups] == ["all"]
    assert {id(p) for p in opt.param_groups[0]["params"]} == {id(p) for p in one.parameters()}
    ref = type(opt)([{"params": [p for p in two.parameters() if p.ndim > 1], "weight_decay": 0.0},
                     {"params": [p for p in two.parameters() if p.ndim <= 1], "weight_decay": 0.0}],
                    **{k: v for k, v in opt.defaults.items() if k != "decoupled_weight_decay"})
    x = torch.randn(16, 2, 8)
    for _ in range(3):
        for model, o in ((one, opt), (two, ref)):
            o.zero_grad()
            model(x).square().mean().backward()
            o.step()
    for a, b in zip(one.parameters(), two.parameters()):
        assert torch.equal(a, b)

def test_optimizer_types_and_hyperparameters():
    model = nn.Linear(3, 2)
    sgd = build_optimizer(model, OptimizerConfig(name="sgd", momentum=0.8, nesterov=True), lr=0.1)
    assert type(sgd) is torch.optim.SGD
    assert sgd.param_groups[0]["nesterov"] and sgd.param_groups[0]["momentum"] == 0.8
    assert sgd.param_groups[0]["foreach"] is True
    adam = build_optimizer(model, OmegaConf.structured(OptimizerConfig(name="adam", betas=[0.8, 0.9], eps=1e-6)),
                           lr=0.01)
    assert type(adam) is torch.optim.Adam
    assert adam.param_groups[0]["betas"] == (0.8, 0.9) and adam.param_groups[0]["eps"] == 1e-6
    assert type(build_optimizer(model, OptimizerConfig(name="adamw"), lr=0.01)) is torch.optim.AdamW
    lars = build_optimizer(model, OptimizerConfig(name="lars", trust_coefficient=0.02), lr=0.01)
    assert type(lars) is Lars and lars.param_groups[0]["trust_coefficient"] == 0.02


def test_bad_optimizer_config():
    model = nn.Linear(3, 2)
    with pytest.raises(UserError, match="sgd, adam, adamw, lars"):
        build_optimizer(model, OptimizerConfig(name="rmsprop"), lr=0.1)
    with pytest.raises(UserError, match="optimizer.nesterov"):
        build_optimizer(model, OptimizerConfig(name="sgd", momentum=0.0, nesterov=True), lr=0.1)
    with pytest.raises(UserError, match="optimizer.weight_decay"):
        build_optimizer(model, OptimizerConfig(weight_decay=-1.0), lr=0.1)
    with pytest.raises(UserError, match="optimizer.betas"):
        build_optimizer(model, OptimizerConfig(name="adam", betas=[0.9]), lr=0.1)
    with pytest.raises(UserError, match="optimizer.trust_coefficient"):
        build_optimizer(model, OptimizerConfig(name="lars", trust_coefficient=0.0), lr=0.1)


# --------------------------------------------------------------------------- LARS


def test_lars_step_matches_hand_computation():
    w = nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ||w|| = 5
    b = nn.Parameter(torch.tensor([1.0]))
    lr, m, wd, eta = 0.5, 0.9, 0.1, 0.01
    opt = Lars([{"params": [w], "lars": True, "weight_decay": wd},
                {"params": [b], "lars": False, "weight_decay": 0.0}],
               lr=lr, momentum=m, trust_coefficient=eta)
    gw, gb = torch.tensor([[1.0, -2.0]]), torch.tensor([0.5])
    w0, b0 = w.detach().clone(), b.detach().clone()

    def expected_w_update(w_now, v):
        g = gw + wd * w_now
        local = eta * torch.linalg.vector_norm(w_now) / torch.linalg.vector_norm(g)
        return m * v + lr * local * g

    # Step 1 (v starts at 0).
    w.grad, b.grad = gw.clone(), gb.clone()
    opt.step()
    v_w = expected_w_update(w0, torch.zeros_like(w0))
    v_b = lr * gb
    torch.testing.assert_close(w.detach(), w0 - v_w)
    torch.testing.assert_close(b.detach(), b0 - v_b)
    # Step 2 exercises the momentum buffer.
    w1, b1 = w.detach().clone(), b.detach().clone()
    opt.step()
    v_w = expected_w_update(w1, v_w)
    v_b = m * v_b + lr * gb
    torch.testing.assert_close(w.detach(), w1 - v_w)
    torch.testing.assert_close(b.detach(), b1 - v_b)


def test_lars_zero_grad_and_zero_weight_are_finite():
    zero_w = nn.Parameter(torch.zeros(2, 2))
    zero_g = nn.Parameter(torch.ones(2, 2))
    both_zero = nn.Parameter(torch.zeros(3, 1))
    opt = Lars([zero_w, zero_g, both_zero], lr=0.1, momentum=0.9, weight_decay=0.0)
    zero_w.grad = torch.ones(2, 2)
    zero_g.grad = torch.zeros(2, 2)
    both_zero.grad = torch.zeros(3, 1)
    opt.step()
    for p in (zero_w, zero_g, both_zero):
        assert torch.isfinite(p).all()
    # ||p|| = 0: local_lr falls back to 1, so the step is plain SGD.
    torch.testing.assert_close(zero_w.detach(), torch.full((2, 2), -0.1))
    torch.testing.assert_close(zero_g.detach(), torch.ones(2, 2))
    torch.testing.assert_close(both_zero.detach(), torch.zeros(3, 1))


def test_lars_skips_params_without_grad():
    p = nn.Parameter(torch.ones(2, 2))
    opt = Lars([p], lr=0.1)
    opt.step()
    assert torch.equal(p.detach(), torch.ones(2, 2)) and not opt.state


# --------------------------------------------------------------------------- exact resume


def _train(model, opt, sched, steps, start):
    for k in range(start, start + steps):
        g = torch.Generator().manual_seed(1000 + k)
        x, y = torch.randn(8, 2, 8, generator=g), torch.randint(0, 4, (8,), generator=g)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()


def _build(name, seed=0):
    model = _model(seed)
    opt = build_optimizer(model, OptimizerConfig(name=name, weight_decay=1e-2), lr=0.05)
    sched = build_scheduler(opt, ScheduleConfig(name="cosine", warmup_epochs=1.0, min_lr_factor=0.1),
                            total_steps=10, steps_per_epoch=3, warmup_start_factor=0.5)
    return model, opt, sched


@pytest.mark.parametrize("order", ["opt_then_sched", "sched_then_opt", "opt_before_scheduler_exists"])
@pytest.mark.parametrize("name", ["sgd", "adamw", "lars"])
def test_resume_is_exact(name, order):
    straight = _build(name)
    _train(*straight, steps=10, start=0)

    model, opt, sched = _build(name)
    _train(model, opt, sched, steps=5, start=0)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)

    # A fresh process: different initial weights, everything restored from the checkpoint,
    # in any loading order.
    if order == "opt_before_scheduler_exists":
        model2 = _model(seed=1)
        opt2 = build_optimizer(model2, OptimizerConfig(name=name, weight_decay=1e-2), lr=0.05)
        opt2.load_state_dict(ckpt["opt"])
        sched2 = build_scheduler(opt2, ScheduleConfig(name="cosine", warmup_epochs=1.0, min_lr_factor=0.1),
                                 total_steps=10, steps_per_epoch=3, warmup_start_factor=0.5)
        sched2.load_state_dict(ckpt["sched"])
    else:
        model2, opt2, sched2 = _build(name, seed=1)
        if order == "opt_then_sched":
            opt2.load_state_dict(ckpt["opt"])
            sched2.load_state_dict(ckpt["sched"])
        else:
            sched2.load_state_dict(ckpt["sched"])
            opt2.load_state_dict(ckpt["opt"])
    model2.load_state_dict(ckpt["model"])
    assert sched2.last_epoch == 5
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]
    _train(model2, opt2, sched2, steps=5, start=5)

    for a, b in zip(straight[0].state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    assert [g["lr"] for g in straight[1].param_groups] == [g["lr"] for g in opt2.param_groups]


@pytest.mark.parametrize("name", ["constant", "cosine", "step"])
def test_scheduler_steps_as_torchs_lambda_lr(name):
    """The scheduler's own step() gives the learning rates torch's LambdaLR gives for the same lambda."""
    from torch.optim.lr_scheduler import LambdaLR

    cfg = ScheduleConfig(name=name, warmup_epochs=2.0, milestones=[0.5, 0.75])
    ours_opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.4)
    theirs_opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.4)
    ours = build_scheduler(ours_opt, cfg, total_steps=40, steps_per_epoch=5, warmup_start_factor=0.1)
    theirs = LambdaLR(theirs_opt, lr_lambda=ours.lr_lambdas[0])
    for _ in range(45):
        ours_opt.step(), theirs_opt.step()
        ours.step(), theirs.step()
        assert ours.get_last_lr() == theirs.get_last_lr()
        assert ours_opt.param_groups[0]["lr"] == theirs_opt.param_groups[0]["lr"]
    assert ours.last_epoch == theirs.last_epoch == 45
