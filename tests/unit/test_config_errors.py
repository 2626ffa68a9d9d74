"""Config errors keep their cause (the key, the nearest valid one, the type expected), --help shows real options
and per option the keys that apply, experiments compose for ddtrain-train and ddtrain-sweep, -m expands in order."""

from __future__ import annotations

import pytest

from ddtrain.cli import jobs
from ddtrain.cli.help import applies_to, help_text
from ddtrain.compose import compose
from ddtrain.config import config_dir
from ddtrain.validation import validate
from ddtrain.errors import UserError

MESSAGES = {
    "typo in a section": (["trian.lr=0.1"], "trian.lr=0.1: trian.lr is not a config key or group (did you mean "
                                            "train.lr?); `ddtrain-train --help` lists them"),
    "typo in a key": (["model.hidden_size=[3]"], "(did you mean model.hidden_sizes?)"),
    "typo in a group": (["modle=mlp"], "modle=mlp: modle is not a config key or group (did you mean model=mlp?)"),
    "not a number": (["train.lr=abc"], "train.lr=abc: 'abc' is not a number; train.lr takes a number, e.g. "
                                       "train.lr=0.2"),
    "not a list": (["sweep.seeds=1"], "sweep.seeds=1: a list is expected, not 1; sweep.seeds takes a list of "
                                      "integers, e.g. sweep.seeds=[0]"),
    "not an integer in a list": (["sweep.batch_sizes=[a]"], "sweep.batch_sizes=[a]: 'a' is not an integer; "
                                                            "sweep.batch_sizes takes a list of integers"),
    "not a bool": (["logging.tensorboard=maybe"], "'maybe' is not true or false; logging.tensorboard takes true or "
                                                  "false, e.g. logging.tensorboard=true"),
    "a section set to a value": (["train=3"], "train=3: train is a section, not a value"),
    "no value": (["train.lr"], "train.lr: an override is key=value, e.g. train.lr=<value>"),
    "unknown option, with the nearest": (["model=mpl"], "model=mpl is not a known model; did you mean model=mlp? "
                                                        "choose one of: alexnet, cnn1d"),
}


@pytest.mark.parametrize("overrides,expected", MESSAGES.values(), ids=MESSAGES.keys())
def test_each_message_keeps_its_cause(overrides, expected):
    with pytest.raises(UserError) as info:
        validate(compose("train", overrides), 1)  # a key added to a built-in model is caught by validate
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_sweep_names_its_own_help():
    with pytest.raises(UserError, match="`ddtrain-sweep --help` lists them"):
        compose("sweep", ["sweep.seedz=[1]"])


def test_help_lists_real_options_and_per_model_keys():
    page = help_text("ddtrain-train", "train", ["model=mlp"])
    assert "_schema" not in page
    assert "model: alexnet, cnn1d, lenet5, mlp, resnet18, resnet20, resnet50" in page
    assert "experiment: " in page and "resnet20_cifar10" in page
    model = page.split("== model=mlp")[1].split("==")[1]
    assert "model.hidden_sizes=[100,100]" in model and "model.dropout=0.0" in model
    assert "model.channels" not in model and "model.sync_batchnorm" not in model
    cnn = help_text("ddtrain-train", "train", [])
    assert "model.channels=25" in cnn.split("== model=cnn1d")[1].split("== dataset")[0]
    assert "model.hidden_sizes" not in cnn.split("== model=cnn1d")[1].split("== dataset")[0]
    resnet = help_text("ddtrain-train", "train", ["model=resnet20"]).split("== model=resnet20")[1]
    assert "model.sync_batchnorm=false" in resnet.split("== dataset")[0]
    assert "== sweep ==" not in cnn and "== sweep ==" in help_text("ddtrain-sweep", "sweep", [])


def test_a_doc_names_the_options_it_is_for():
    names = ["mnist1d", "synthetic", "mnist"]
    assert applies_to("mnist1d: samples generated; synthetic: training samples.", names) == {"mnist1d", "synthetic"}
    assert applies_to("host placement: DataLoader workers", names) is None
    assert applies_to("Seed of the split: independent", names) is None


@pytest.mark.parametrize("name", sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml")))
@pytest.mark.parametrize("config_name", ["train", "sweep"])
def test_every_experiment_composes_for_both_programs(name, config_name):
    cfg = compose(config_name, [f"experiment={name}"])
    validate(cfg, 1)


def test_train_experiment_sets_its_recipe():
    cfg = compose("train", ["experiment=resnet20_cifar10", "train.lr=0.05"])
    assert (cfg.model.name, cfg.dataset.name, cfg.schedule.name, cfg.model.sync_batchnorm) == \
        ("resnet20", "cifar10", "step", True)
    assert cfg.train.lr == 0.05  # the command line still wins


def test_multirun_jobs_in_hydra_order():
    assert jobs.job_overrides(["-m", "train.lr=0.1,0.2", "model=mlp,cnn1d"]) == [
        ["train.lr=0.1", "model=mlp"], ["train.lr=0.1", "model=cnn1d"],
        ["train.lr=0.2", "model=mlp"], ["train.lr=0.2", "model=cnn1d"]]
    assert jobs.job_overrides(["train.lr=0.1"]) == [["train.lr=0.1"]]


def test_multirun_preflight_checks_every_job_and_one_dist_section():
    assert jobs.preflight("train", ["-m", "train.lr=0.1,0.2"], 2) == 2
    with pytest.raises(UserError, match="train.lr=abc: 'abc' is not a number"):
        jobs.preflight("train", ["-m", "train.lr=0.1,abc"], 2)
    with pytest.raises(UserError, match=r"-m: dist.timeout_s differs between jobs \(10.0 and 20.0\)"):
        jobs.preflight("train", ["-m", "dist.timeout_s=10,20"], 2)


def test_hydra_logging_overrides_are_refused_not_ignored():
    with pytest.raises(UserError, match=r"hydra/job_logging=default: ddtrain configures its own logging .* "
                                        "logging.level=DEBUG"):
        jobs.preflight("train", ["hydra/job_logging=default"], 1)


def test_other_ranks_keep_hydra_files_out_of_rank0_directories():
    argv = jobs.rank_argv(["-m", "train.lr=0.1,0.2", "hydra.sweep.dir=multi"], 1)
    try:
        assert "hydra.sweep.dir=multi" not in argv and "hydra.sweep.subdir=." in argv
        assert any(a.startswith("hydra.sweep.dir=") and "ddtrain-rank1-multirun-" in a for a in argv)
    finally:
        jobs.remove_scratch()
    assert jobs.rank_argv(["train.lr=0.1"], 0) == ["train.lr=0.1"]
