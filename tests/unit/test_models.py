"""Tests of ddtrain.models: shapes, backward, parameter counts, errors and seeding."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from ddtrain.config import MODELS, ModelConfig
from ddtrain.errors import UserError
from ddtrain.models import MODEL_NAMES, build_model

# the smallest shape each model is cheap on, with a second (typical dataset) shape where it is cheap
SHAPES = {
    "mlp": [(40,), (1, 28, 28)],
    "cnn1d": [(40,), (2, 40)],
    "lenet5": [(1, 28, 28), (3, 32, 32)],
    "resnet20": [(3, 32, 32), (1, 8, 8)],
    "resnet18": [(3, 32, 32)],
    "resnet50": [(3, 32, 32)],
    "alexnet": [(3, 63, 63)],
}


def _build(name: str, shape, num_classes: int = 10, **fields) -> nn.Module:
    return build_model(ModelConfig(name=name, **fields), shape, num_classes)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_names_match_config():
    assert MODEL_NAMES == MODELS
    assert set(SHAPES) == set(MODEL_NAMES)


@pytest.mark.parametrize("name,shape", [(n, s) for n, shapes in SHAPES.items() for s in shapes])
def test_forward_backward(name, shape):
    torch.manual_seed(0)
    model = _build(name, shape, num_classes=7)
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, 7)
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", ["mlp", "lenet5", "resnet20", "resnet18"])
def test_channels_last_matches(name):
    torch.manual_seed(0)
    shape = (3, 32, 32)
    model = _build(name, shape).eval()
    x = torch.randn(2, *shape)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_channels_last_alexnet_and_resnet50():
    torch.manual_seed(0)
    for name, shape in (("alexnet", (3, 63, 63)), ("resnet50", (3, 32, 32))):
        model = _build(name, shape).to(memory_format=torch.channels_last).eval()
        with torch.no_grad():
            out = model(torch.randn(1, *shape).to(memory_format=torch.channels_last))
        assert out.shape == (1, 10)


@pytest.mark.parametrize("name,count", [("resnet18", 11_689_512), ("resnet50", 25_557_032),
                                        ("alexnet", 61_100_840)])
def test_parameter_counts_match_torchvision(name, count):
    assert _count(_build(name, (3, 224, 224), num_classes=1000)) == count


def test_cnn1d_matches_mnist1d_paper():
    model = _build("cnn1d", (40,))
    assert model.flat_size == 125
    expected = (1 * 25 * 5 + 25) + 2 * (25 * 25 * 3 + 25) + (125 * 10 + 10)
    assert _count(model) == expected == 5210
    assert model.conv1.stride == (2,) and model.conv1.padding == (1,)


def test_mlp_layout():
    model = _build("mlp", (40,))
    assert _count(model) == (40 * 100 + 100) + (100 * 100 + 100) + (100 * 10 + 10)
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())
    model = _build("mlp", (784,), hidden_sizes=[1024, 1024], dropout=0.5)
    assert [type(m) for m in model.net] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.ReLU, nn.Linear]
    assert model.net[2].p == 0.5
    assert _build("mlp", (1, 28, 28), hidden_sizes=[]).net[0].in_features == 784


def test_alexnet_dropout_from_config():
    model = _build("alexnet", (3, 63, 63), dropout=0.3)
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.3, 0.3]


def test_lenet5_padding_by_size():
    assert _build("lenet5", (1, 28, 28)).features[0].padding == (2, 2)
    assert _build("lenet5", (3, 32, 32)).features[0].padding == (0, 0)
    assert _build("lenet5", (3, 32, 32)).classifier[0].in_features == 400


def test_resnet_init():
    torch.manual_seed(0)
    model = _build("resnet18", (3, 32, 32))
    last = [b.last_bn().weight for b in model.modules() if hasattr(b, "last_bn")]
    assert len(last) == 8 and all((w == 0).all() for w in last)
    assert (model.bn1.weight == 1).all() and (model.bn1.bias == 0).all()
    r20 = _build("resnet20", (3, 32, 32))
    assert sum(1 for m in r20.modules() if hasattr(m, "last_bn")) == 9
    # option B: projection shortcuts only where the shape changes (stages 2 and 3)
    assert sum(1 for m in r20.modules() if getattr(m, "downsample", None) is not None) == 2


def test_accepts_dictconfig():
    cfg = OmegaConf.structured(ModelConfig(name="mlp", hidden_sizes=[32, 16], dropout=0.1))
    model = build_model(cfg, [40], 3)
    assert model(torch.randn(4, 40)).shape == (4, 3)


def test_same_seed_same_parameters():
    for name, shape in (("cnn1d", (40,)), ("resnet20", (3, 32, 32)), ("mlp", (40,))):
        states = []
        for seed in (1, 1, 2):
            torch.manual_seed(seed)
            states.append(_build(name, shape).state_dict())
        assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
        assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])


@pytest.mark.parametrize("name", ["lenet5", "resnet20", "resnet18", "resnet50", "alexnet"])
@pytest.mark.parametrize("shape", [(40,), (784,)])
def test_image_models_reject_flat_samples(name, shape):
    with pytest.raises(UserError) as err:
        _build(name, shape)
    msg = str(err.value)
    assert f"model={name}" in msg and str(shape) in msg and "cnn1d" in msg and "\n" not in msg


@pytest.mark.parametrize("name,shape,hint", [
    ("cnn1d", (3, 32, 32), "model=cnn1d"),
    ("alexnet", (3, 32, 32), "model=alexnet"),
    ("alexnet", (3, 62, 224), "at least 63x63"),
    ("lenet5", (1, 16, 16), "model=lenet5"),
    ("resnet20", (3, 4, 4), "model=resnet20"),
    ("resnet20", (3, 2, 32, 32), "model=resnet20"),
    ("cnn1d", (2,), "model=cnn1d"),
])
def test_bad_shapes(name, shape, hint):
    with pytest.raises(UserError, match=hint):
        _build(name, shape)


def test_small_image_error_suggests_fitting_models():
    with pytest.raises(UserError) as err:
        _build("alexnet", (1, 28, 28))
    assert "model=lenet5" in str(err.value) and "model=resnet20" in str(err.value)


@pytest.mark.parametrize("fields,key", [
    ({"name": "vgg16"}, "model=vgg16"),
    ({"name": "mlp", "dropout": 1.0}, "model.dropout"),
    ({"name": "alexnet", "dropout": -0.1}, "model.dropout"),
    ({"name": "mlp", "hidden_sizes": [100, 0]}, "model.hidden_sizes"),
    ({"name": "cnn1d", "channels": 0}, "model.channels"),
])
def test_bad_config(fields, key):
    shape = (3, 63, 63) if fields["name"] == "alexnet" else (40,)
    with pytest.raises(UserError) as err:
        build_model(ModelConfig(**fields), shape, 10)
    assert key in str(err.value)
    if fields["name"] == "vgg16":
        assert all(n in str(err.value) for n in MODEL_NAMES)
