"""Weights out (<run_dir>/model.pt) and in (model.init_from): reload, fine-tune a new head, foreign layouts."""

from __future__ import annotations

import pytest
import torch

import ddtrain
from ddtrain.config import ModelConfig
from ddtrain.errors import UserError
from ddtrain.models import build_model
from ddtrain.models.weights import init_from, load_model_file

SMALL = ["model=mlp", "model.hidden_sizes=[16]", "dataset=synthetic", "dataset.shape=[20]", "dataset.num_samples=128",
         "dataset.num_test_samples=32", "train.global_batch_size=16", "train.log_every=4",
         "train.throughput_warmup_steps=0", "logging.progress=false", "logging.tensorboard=false"]


@pytest.fixture(autouse=True)
def single_process(in_process):
    """One rank in this process (conftest.in_process)."""


@pytest.fixture
def trained(tmp_path):
    """A finished 8-step run with its last checkpoint: (run directory, summary)."""
    run = tmp_path / "trained"
    summary = ddtrain.fit([*SMALL, "train.max_steps=8", "checkpoint.every_steps=8"], run_dir=run)
    return run, summary


def test_model_pt_reloads_to_identical_logits(trained):
    run, summary = trained
    assert summary["model_file"] == str(run / "model.pt")
    content = torch.load(run / "model.pt", weights_only=True)  # plain values and tensors only
    assert content["model"]["name"] == "mlp" and content["model"]["hidden_sizes"] == [16]
    assert (content["input_shape"], content["num_classes"], content["step"]) == ([20], 10, 8)
    final = torch.load(run / "checkpoints" / "step_00000008.pt", weights_only=True)["model"]
    reference = build_model(ModelConfig(name="mlp", hidden_sizes=[16]), (20,), 10)
    reference.load_state_dict(final)
    model, _ = load_model_file(run)  # a run directory or its model.pt
    x = torch.randn(64, 20)
    with torch.no_grad():
        assert torch.equal(model(x), reference.eval()(x))


def test_no_model_pt_when_turned_off(tmp_path):
    s = ddtrain.fit([*SMALL, "train.max_steps=2", "checkpoint.save_model=false"], run_dir=tmp_path / "run")
    assert s["model_file"] is None and not (tmp_path / "run" / "model.pt").exists()


def test_init_from_with_a_new_head_trains_and_logs_the_skipped_keys(trained, tmp_path):
    run, _ = trained
    tuned = tmp_path / "tuned"
    common = [*SMALL, "dataset.num_classes=4", "train.max_steps=3", f"model.init_from={run / 'model.pt'}"]
    with pytest.raises(UserError, match=r"model.init_strict=false.*") as err:
        ddtrain.fit(common, run_dir=tmp_path / "strict")
    assert "2 with another shape (e.g. net.2.weight: [10, 16] in the file, [4, 16] in the model)" in str(err.value)
    s = ddtrain.fit([*common, "model.init_strict=false"], run_dir=tuned)
    # fine-tuning: a new step count and optimizer, not a resume
    assert s["steps"] == 3 and s["trained_steps_this_run"] == 3 and s["resumed_from"] is None
    log = (tuned / "train.log").read_text()
    assert "initialised from" in log and "2 of 4 tensors" in log
    assert "skipped, kept as initialised: net.2.weight, net.2.bias" in log


def test_init_from_loads_the_body_and_leaves_the_head(trained, tmp_path):
    run, _ = trained
    source = torch.load(run / "model.pt", weights_only=True)["state_dict"]
    for path, kind in ((run / "model.pt", "model.pt"), (run / "checkpoints" / "step_00000008.pt", "checkpoint")):
        torch.manual_seed(1)
        model = build_model(ModelConfig(name="mlp", hidden_sizes=[16]), (20,), 4)
        head = model.net[2].weight.detach().clone()
        report = init_from(model, path, strict=False)
        assert report.kind.startswith(kind) and report.loaded == 2 and report.fresh == ["net.2.weight",
                                                                                        "net.2.bias"]
        assert torch.equal(model.net[0].weight, source["net.0.weight"])
        assert torch.equal(model.net[2].weight, head)


def test_plain_state_dicts_with_wrapper_prefixes_load_strictly(tmp_path):
    torch.manual_seed(0)
    source = build_model(ModelConfig(name="lenet5"), (1, 28, 28), 10)
    layouts = {"plain.pt": source.state_dict(),
               "ddp.pt": {f"module.{k}": v for k, v in source.state_dict().items()},
               "lightning.ckpt": {"state_dict": {f"net.{k}": v for k, v in source.state_dict().items()}, "epoch": 3}}
    for name, content in layouts.items():
        torch.save(content, tmp_path / name)
        torch.manual_seed(1)
        model = build_model(ModelConfig(name="lenet5"), (1, 28, 28), 10)
        init_from(model, tmp_path / name, strict=True)
        for k, v in source.state_dict().items():
            assert torch.equal(model.state_dict()[k], v), (name, k)


def test_unreadable_and_foreign_files_are_one_line(tmp_path):
    model = build_model(ModelConfig(name="mlp"), (20,), 10)
    with pytest.raises(UserError, match="no such file"):
        init_from(model, tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="cannot be read as PyTorch weights"):
        init_from(model, tmp_path / "junk.pt")
    torch.save({"w": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="none of its 1 tensors matches"):
        init_from(model, tmp_path / "other.pt", strict=False)


def torchvision_resnet18_keys() -> dict[str, tuple]:
    """torchvision.models.resnet18's state_dict names and shapes, as torchvision defines them (1000 classes)."""
    keys = {"conv1.weight": (64, 3, 7, 7)}

    def bn(prefix, c):
        keys.update({f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
                     f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()})

    bn("bn1", 64)
    cin = 64
    for layer, width in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            p = f"layer{layer}.{block}"
            keys[f"{p}.conv1.weight"] = (width, cin if block == 0 else width, 3, 3)
            bn(f"{p}.bn1", width)
            keys[f"{p}.conv2.weight"] = (width, width, 3, 3)
            bn(f"{p}.bn2", width)
            if block == 0 and layer > 1:  # the projection shortcut where the shape changes
                keys[f"{p}.downsample.0.weight"] = (width, cin, 1, 1)
                bn(f"{p}.downsample.1", width)
        cin = width
    keys.update({"fc.weight": (1000, 512), "fc.bias": (1000,)})
    return keys


def test_a_torchvision_layout_resnet18_state_dict_loads_strictly(tmp_path):
    keys = torchvision_resnet18_keys()
    assert len(keys) == 122  # torchvision's resnet18().state_dict() has 122 entries
    gen = torch.Generator().manual_seed(0)
    state = {k: (torch.randint(0, 100, s, generator=gen) if k.endswith("num_batches_tracked")
                 else torch.randn(s, generator=gen)) for k, s in keys.items()}
    torch.save(state, tmp_path / "resnet18-f37072fd.pth")
    model = build_model(ModelConfig(name="resnet18"), (3, 224, 224), 1000)
    assert sum(p.numel() for p in model.parameters()) == 11_689_512  # torchvision's published count
    report = init_from(model, tmp_path / "resnet18-f37072fd.pth", strict=True)
    assert report.loaded == 122 and not report.fresh and not report.ignored
    for k, v in state.items():
        assert torch.equal(model.state_dict()[k], v), k
    # and through the config key, into a 10-class fine-tuning model
    torch.manual_seed(0)
    tuned = build_model(ModelConfig(name="resnet18"), (3, 32, 32), 10)
    report = init_from(tuned, tmp_path / "resnet18-f37072fd.pth", strict=False)
    assert report.fresh == ["fc.weight", "fc.bias"] and report.loaded == 120


def test_resnet_checkpoints_with_the_old_names_still_load(tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="resnet20"), (3, 32, 32), 10)
    old = {}
    for k, v in model.state_dict().items():  # the names before they followed torchvision
        k = k.replace("conv1.", "stem.0.", 1) if k.startswith("conv1.") else k
        k = k.replace("bn1.", "stem.1.", 1) if k.startswith("bn1.") else k
        if k.startswith("layer"):
            stage, rest = k.split(".", 1)
            k = f"stages.{int(stage[5:]) - 1}.{rest}"
        old[k] = v.clone()
    torch.save({"model": old, "step": 5}, tmp_path / "old.pt")
    fresh = build_model(ModelConfig(name="resnet20"), (3, 32, 32), 10)
    init_from(fresh, tmp_path / "old.pt", strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
