"""The user's own model, optimizer and loss through `_target_`, and ddtrain.fit as a notebook uses it.

In-process, one rank (no launcher): the multi-process equivalence of the same targets is in
tests/e2e/test_targets_launched.py. The user's module is tests/helpers/usernets.py (tests/ is on sys.path).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

import ddtrain
from ddtrain.compose import compose
from ddtrain.validation import validate
from ddtrain.errors import UserError
from ddtrain.models import build_model
from ddtrain.runtime.loss import build_loss
from ddtrain.runtime.optim import build_optimizer
from helpers import usernets

TINY = ["dataset=synthetic", "dataset.shape=[12]", "dataset.num_classes=3", "dataset.num_samples=96",
        "dataset.num_test_samples=32", "train.global_batch_size=16", "train.max_steps=4", "train.log_every=2",
        "train.throughput_warmup_steps=0", "logging.progress=false", "logging.tensorboard=false"]
WIDENET = ["model._target_=helpers.usernets.WideNet", "model.width=8"]


@pytest.fixture(autouse=True)
def single_process(in_process):
    """One rank in this process (conftest.in_process)."""


def cfg_of(*overrides: str):
    cfg = compose("train", [*TINY, *overrides])
    validate(cfg, 1)
    return cfg


# --------------------------------------------------------------------------- the model


def test_target_model_gets_shape_classes_and_added_keys():
    model = build_model(cfg_of(*WIDENET).model, (12,), 3)
    assert isinstance(model, usernets.WideNet)
    assert model.input_shape == (12,)  # a tuple, passed as it is
    assert model.net[1].weight.shape == (8, 12) and model.net[4].weight.shape == (3, 8)


def test_function_target_and_a_value_the_user_set_wins():
    model = build_model(cfg_of("model._target_=helpers.usernets.make_widenet", "+model.num_classes=5").model,
                        (12,), 3)
    assert model.net[4].out_features == 5


def test_ddtrain_keys_reach_a_target_only_when_set_and_named():
    # ddtrain's default dropout (0.0) must not replace the constructor's own default (0.25)
    kept = build_model(cfg_of("model._target_=helpers.usernets.NeedsDropout").model, (12,), 3)
    assert kept.kwargs == {"num_classes": 3, "dropout": 0.25}
    changed = build_model(cfg_of("model._target_=helpers.usernets.NeedsDropout", "model.dropout=0.5",
                                 "model.channels=7", "+model.extra=[1,2]").model, (12,), 3)
    # channels is not in its signature (only **kwargs): not passed; the added key arrives as a plain list
    assert changed.kwargs == {"num_classes": 3, "dropout": 0.5, "extra": [1, 2]}


def test_user_config_group_file_through_hydra_searchpath(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "widenet.yaml").write_text("_target_: helpers.usernets.WideNet\nwidth: 24\n")
    cfg = cfg_of(f"hydra.searchpath=[file://{tmp_path}]", "model=widenet", "model.dropout=0.1")
    assert cfg.model.width == 24
    model = build_model(cfg.model, (12,), 3)
    assert model.net[1].out_features == 24 and model.dropout_p == 0.1


@pytest.mark.parametrize("overrides,needles", [
    (["model._target_=helpers.usernets.Nope"], ["model._target_=helpers.usernets.Nope", "has no Nope"]),
    (["model._target_=no_such_pkg.Net"], ["model._target_=no_such_pkg.Net", "No module named 'no_such_pkg'",
                                           "PYTHONPATH or in the working directory"]),
    (["optimizer._target_=torch.optim.NoSuchOpt"], ["optimizer._target_=torch.optim.NoSuchOpt"]),
    (["loss._target_=nowhere.loss"], ["loss._target_=nowhere.loss"]),
    (["model.widht=3"], ["model.widht is not a key of the built-in model", "model._target_"]),
    (["+optimizer.lookahead=5"], ["optimizer.lookahead is not a key of the built-in optimizer"]),
    (["loss._target_=torch.nn.MSELoss", "train.target_accuracy=0.5"], ["train.target_accuracy=0.5", "loss.accuracy"]),
], ids=["no-attribute", "no-module", "optimizer", "loss", "typo-on-builtin", "added-to-builtin-optimizer",
        "target-accuracy-without-accuracy"])
def test_bad_targets_fail_at_validation_naming_the_key(overrides, needles):
    cfg = compose("train", [*TINY, *overrides])
    with pytest.raises(UserError) as err:
        validate(cfg, 1)
    for needle in needles:
        assert needle in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("overrides,needles", [
    (["model._target_=helpers.usernets.WideNet", "model.widht=3"], ["model._target_=helpers.usernets.WideNet failed",
                                                                     "unexpected keyword argument 'widht'"]),
    (["model._target_=helpers.usernets.Broken"], ["model._target_=helpers.usernets.Broken failed", "ValueError",
                                                   "cannot handle input_shape (12,)"]),
    (["model._target_=torch.nn.Identity"], ["no trainable parameters"]),
    (["model._target_=math.sqrt", "+model._args_=[4]"], ["returned a float, not a torch.nn.Module"]),
], ids=["typo-key", "constructor-raises", "no-parameters", "not-a-module"])
def test_a_failing_model_call_is_one_line(overrides, needles):
    with pytest.raises(UserError) as err:
        build_model(cfg_of(*overrides).model, (12,), 3)
    for needle in needles:
        assert needle in str(err.value)


# --------------------------------------------------------------------------- optimizer and loss


def test_optimizer_target_gets_groups_scaled_lr_and_only_the_keys_set():
    model = usernets.WideNet((12,), 3, 8)
    opt = build_optimizer(model, cfg_of("optimizer._target_=torch.optim.RAdam", "optimizer.eps=1e-6",
                                        "+optimizer.decoupled_weight_decay=true").optimizer, lr=0.03)
    assert type(opt) is torch.optim.RAdam
    assert [g["lr"] for g in opt.param_groups] == [0.03, 0.03]
    # ddtrain's default weight decay (5e-4, for its SGD) is not RAdam's: RAdam keeps its own (0)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 0.0]
    assert opt.param_groups[0]["eps"] == 1e-6 and opt.param_groups[0]["decoupled_weight_decay"] is True
    decayed = build_optimizer(model, cfg_of("optimizer._target_=torch.optim.RAdam",
                                            "optimizer.weight_decay=0.01").optimizer, lr=0.03)
    # as for the built-ins: matrices decay, biases (1-D) do not
    assert [(g["name"], g["weight_decay"]) for g in decayed.param_groups] == [("decay", 0.01), ("no_decay", 0.0)]
    assert all(p.ndim > 1 for p in decayed.param_groups[0]["params"])
    with pytest.raises(UserError, match="optimizer._target_=torch.optim.SGD failed: TypeError"):
        build_optimizer(model, cfg_of("optimizer._target_=torch.optim.SGD", "+optimizer.foo=1").optimizer, lr=0.1)
    with pytest.raises(UserError, match="not a torch.optim.Optimizer"):
        build_optimizer(model, cfg_of("optimizer._target_=helpers.usernets.not_an_optimizer").optimizer, lr=0.1)


def test_loss_targets_class_function_and_accuracy():
    out, y = torch.randn(6, 3), torch.randint(0, 3, (6,))
    default = build_loss(cfg_of().loss)
    assert default.accuracy and torch.equal(default(out, y), F.cross_entropy(out, y))
    smooth = build_loss(cfg_of("loss._target_=torch.nn.CrossEntropyLoss", "+loss.label_smoothing=0.1").loss)
    assert smooth.accuracy and torch.allclose(smooth(out, y), F.cross_entropy(out, y, label_smoothing=0.1))
    huber = build_loss(cfg_of("loss._target_=torch.nn.functional.huber_loss", "+loss.delta=0.5").loss)
    a, b = torch.randn(6), torch.randn(6)
    assert not huber.accuracy and torch.equal(huber(a, b), F.huber_loss(a, b, delta=0.5))
    mse = build_loss(cfg_of("loss._target_=torch.nn.MSELoss").loss)
    assert not mse.accuracy and torch.equal(mse(a, b), F.mse_loss(a, b))
    assert build_loss(cfg_of("loss._target_=helpers.usernets.label_mse", "loss.accuracy=true").loss).accuracy


# --------------------------------------------------------------------------- training through ddtrain.fit


def test_fit_trains_a_target_model_and_optimizer(tmp_path):
    s = ddtrain.fit([*TINY, *WIDENET, "optimizer._target_=torch.optim.RAdam"], run_dir=tmp_path / "run")
    assert s["model"] == "helpers.usernets.WideNet" and s["steps"] == 4 and s["status"] == "ok"
    assert 0.0 <= s["test_accuracy"] <= 1.0
    saved = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert saved["model"]["_target_"] == "helpers.usernets.WideNet" and saved["model"]["width"] == 8
    assert saved["state_dict"]["net.1.weight"].shape == (8, 12)


def test_a_regression_model_logs_its_loss_and_no_accuracy(tmp_path):
    run = tmp_path / "run"
    s = ddtrain.fit([*TINY, "model._target_=helpers.usernets.Regressor", "loss._target_=helpers.usernets.label_mse",
                     "train.max_steps=40", "train.log_every=5", "optimizer=adam", "train.lr=0.02",
                     "train.lr_scaling=none", "schedule=constant", "schedule.warmup_epochs=0"], run_dir=run)
    assert s["status"] == "ok" and s["steps"] == 40
    assert not [k for k in s if "accuracy" in k]
    assert math.isfinite(s["test_loss"]) and math.isfinite(s["val_loss"])
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records and not [r for r in records if "accuracy" in r]
    train = [r["loss"] for r in records if "lr" in r]
    assert train[-1] < 0.5 * train[0]  # it learns: labels 0..2 as numbers, from a much larger first loss
    val = [r["loss"] for r in records if "lr" not in r and "epoch" in r]
    # a validation-loss target (what ddtrain-sweep's sweep.target_metric=val_loss sets): its first crossing
    target = ddtrain.fit([*TINY, "model._target_=helpers.usernets.Regressor", "loss._target_=helpers.usernets.label_mse",
                          "train.max_steps=40", "train.eval_every=5", "optimizer=adam", "train.lr=0.02",
                          "train.lr_scaling=none", "schedule=constant", "schedule.warmup_epochs=0",
                          f"train.target_loss={max(val)}"], run_dir=tmp_path / "target")
    assert target["status"] == "ok" and target["target_loss"] == max(val) and target["steps_to_target"] <= 40


def test_fit_raises_on_bad_input_and_the_process_goes_on(tmp_path):
    with pytest.raises(UserError, match="model=transformer is not a known model"):
        ddtrain.fit(["model=transformer"], run_dir=tmp_path / "a")
    with pytest.raises(UserError, match="train.lr"):
        ddtrain.fit([*TINY, "train.lr=-1"], run_dir=tmp_path / "b")
    with pytest.raises(UserError, match="model._target_=helpers.usernets.Broken failed"):
        ddtrain.fit([*TINY, "model._target_=helpers.usernets.Broken"], run_dir=tmp_path / "c")
    with pytest.raises(UserError, match="bad configuration"):
        ddtrain.fit({"train": {"lr": "fast"}}, run_dir=tmp_path / "d")
    # the same process trains afterwards, from a dict of values as well
    s = ddtrain.fit(OmegaConf.merge(compose("train", TINY), {"model": {"name": "mlp", "hidden_sizes": [8]}}),
                    run_dir=tmp_path / "e")
    assert s["steps"] == 4 and s["model"] == "mlp"
    s = ddtrain.fit({"dataset": {"name": "synthetic", "shape": [12], "num_samples": 96},
                     "train": {"global_batch_size": 16, "max_steps": 2}, "logging": {"progress": False},
                     "model": {"_target_": "helpers.usernets.WideNet", "width": 4}}, run_dir=tmp_path / "f")
    assert s["steps"] == 2 and s["model"] == "helpers.usernets.WideNet"
