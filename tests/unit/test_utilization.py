"""Tests of ddtrain.hardware and ddtrain.models.flops: hand-counted FLOPs, MFU, GPU and link look-ups."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from ddtrain.batching import BatchPlan
from ddtrain.config import ModelConfig
from ddtrain.errors import UserError
from ddtrain.hardware import GPUS, INTERCONNECTS, PRECISIONS, lookup_gpu, lookup_interconnect, peak_flops
from ddtrain.models import build_model
from ddtrain.models.flops import flops_per_sample
from ddtrain.runtime.throughput import ThroughputMeter


def _build(name: str, shape, num_classes: int, **fields) -> nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(name=name, **fields), shape, num_classes)


@pytest.mark.parametrize("d,h1,h2,c,batch", [(40, 100, 100, 10, 2), (11, 7, 5, 3, 4), (784, 32, 16, 10, 3)])
def test_mlp_flops_by_hand(d, h1, h2, c, batch):
    model = _build("mlp", (d,), c, hidden_sizes=[h1, h2])
    # a linear layer of n -> m costs 2*n*m per sample forward, the same again for grad w.r.t. its weight and
    # again for grad w.r.t. its input; the raw input does not require grad, so the first layer skips that one
    # (bias grads are sums, which FlopCounterMode does not count)
    expected = 2 * d * h1 * 2 + 2 * h1 * h2 * 3 + 2 * h2 * c * 3
    assert flops_per_sample(model, (d,), c, batch=batch) == expected


def test_mlp_flops_any_sample_shape():
    # the MLP flattens: a (1, 6, 5) sample is a 30-wide input
    model = _build("mlp", (1, 6, 5), 4, hidden_sizes=[8])
    assert flops_per_sample(model, (1, 6, 5), 4) == 2 * 30 * 8 * 2 + 2 * 8 * 4 * 3


def _conv_len(length: int, kernel: int, stride: int = 2, padding: int = 1) -> int:
    return (length + 2 * padding - kernel) // stride + 1


@pytest.mark.parametrize("shape,channels,classes", [((40,), 25, 10), ((2, 40), 4, 3), ((1, 17), 6, 5)])
def test_cnn1d_flops_by_hand(shape, channels, classes):
    model = _build("cnn1d", shape, classes, channels=channels)
    c_in, length = (1, shape[0]) if len(shape) == 1 else shape
    l1 = _conv_len(length, 5)
    l2 = _conv_len(l1, 3)
    l3 = _conv_len(l2, 3)
    # conv forward: 2 * C_out * L_out * C_in * K per sample; backward: the same for grad w.r.t. weight and
    # for grad w.r.t. input, except conv1 whose input (the data) needs none
    conv1 = 2 * channels * l1 * c_in * 5
    conv2 = 2 * channels * l2 * channels * 3
    conv3 = 2 * channels * l3 * channels * 3
    linear = 2 * channels * l3 * classes
    expected = conv1 * 2 + conv2 * 3 + conv3 * 3 + linear * 3
    assert flops_per_sample(model, shape, classes) == expected
    assert flops_per_sample(model, shape, classes, batch=5) == expected  # exact per-sample, any batch


def test_resnet20_flops_match_published_count():
    model = _build("resnet20", (3, 32, 32), 10)
    # resnet20 (CIFAR) is 40.81 M multiply-adds forward: 2x for FLOPs, 3x for forward + backward, minus the
    # stem conv's grad w.r.t. the image (16 x 32 x 32 outputs, 3 x 3 x 3 taps)
    forward = 2 * 40_813_184
    assert flops_per_sample(model, (3, 32, 32), 10) == 3 * forward - 2 * 16 * 32 * 32 * 3 * 9


@pytest.mark.parametrize("train_mode", [True, False])
def test_flops_per_sample_leaves_model_untouched(train_mode):
    model = _build("resnet20", (3, 32, 32), 10)
    # a few real steps first so running stats, num_batches_tracked and .grad are non-trivial
    for _ in range(2):
        torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.randint(0, 10, (4,))).backward()
    model.train(train_mode)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    rng = torch.get_rng_state()

    flops = flops_per_sample(model, (3, 32, 32), 10)

    assert flops > 0
    assert model.training is train_mode
    assert all(m.training is train_mode for m in model.modules())
    after = model.state_dict()
    assert set(after) == set(state)
    for key, value in state.items():
        assert torch.equal(after[key], value), key  # includes running_mean/var and num_batches_tracked
    for name, p in model.named_parameters():
        assert torch.equal(p.grad, grads[name]), name
    assert torch.equal(torch.get_rng_state(), rng)  # the seeded training stream is not advanced


def test_flops_per_sample_no_grads_stay_none_and_dropout_rng():
    model = _build("mlp", (20,), 3, hidden_sizes=[8, 8], dropout=0.5)
    rng = torch.get_rng_state()
    assert flops_per_sample(model, (20,), 3) == 2 * 20 * 8 * 2 + 2 * 8 * 8 * 3 + 2 * 8 * 3 * 3
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def test_flops_per_sample_bad_batch():
    with pytest.raises(UserError, match="batch"):
        flops_per_sample(_build("mlp", (4,), 2), (4,), 2, batch=0)


def utilization(fps: int, samples_per_s: float, world_size: int, gpu, precision: str) -> dict:
    """What the trainer's throughput meter reports for this throughput (the one place MFU is computed)."""
    meter = ThroughputMeter(torch.device("cpu"), BatchPlan(world_size, world_size, 1), 0, 0, 0, fps,
                            peak_flops(gpu, precision))
    return meter.utilization(samples_per_s)


def test_mfu_from_table():
    out = utilization(int(1e9), 4000.0, 1, lookup_gpu("NVIDIA H100 80GB HBM3"), "bf16")
    assert out["achieved_tflops"] == pytest.approx(4.0)
    assert out["mfu"] == pytest.approx(4e12 / 989.4e12)


def test_mfu_splits_over_ranks():
    out = utilization(int(1e9), 8000.0, 4, lookup_gpu("NVIDIA A100-SXM4-80GB"), "fp16")
    assert out["achieved_tflops"] == pytest.approx(8.0)  # over all ranks
    assert out["mfu"] == pytest.approx(2e12 / 312e12)  # per device


def test_mfu_unknown():
    out = utilization(1000, 10.0, 1, lookup_gpu("Some Future GPU"), "bf16")
    assert out["achieved_tflops"] == pytest.approx(1e-8)
    assert "mfu" not in out  # FLOP/s without MFU
    # a known GPU without the format (no bf16 before Ampere)
    assert "mfu" not in utilization(1000, 10.0, 1, lookup_gpu("Tesla V100-SXM2-16GB"), "bf16")
    with pytest.raises(UserError, match="fp32"):
        peak_flops(lookup_gpu("Tesla T4"), "int8")


# torch.cuda.get_device_name() strings -> (part, memory GB, bandwidth bytes/s, NVLink generation)
NAMES = {
    "NVIDIA H100 80GB HBM3": ("H100 SXM5 80GB", 80, 3.35e12, 4),
    "NVIDIA H100 PCIe": ("H100 PCIe 80GB", 80, 2.0e12, None),
    "NVIDIA H200": ("H200 SXM 141GB", 141, 4.8e12, 4),
    "NVIDIA A100-SXM4-80GB": ("A100 SXM4 80GB", 80, 2.039e12, 3),
    "NVIDIA A100-SXM4-40GB": ("A100 SXM4 40GB", 40, 1.555e12, 3),
    "NVIDIA A100-PCIE-40GB": ("A100 PCIe 40GB", 40, 1.555e12, None),
    "NVIDIA A100 80GB PCIe": ("A100 PCIe 80GB", 80, 1.935e12, None),
    "Tesla V100-SXM2-16GB": ("Tesla V100 SXM2 16GB", 16, 900e9, 2),
    "Tesla V100-SXM2-32GB": ("Tesla V100 SXM2 32GB", 32, 900e9, 2),
    "Tesla V100-PCIE-32GB": ("Tesla V100 PCIe 32GB", 32, 900e9, None),
    "Tesla T4": ("Tesla T4", 16, 320e9, None),
    "Tesla P100-PCIE-16GB": ("Tesla P100 PCIe 16GB", 16, 732e9, None),
    "Tesla P100-SXM2-16GB": ("Tesla P100 SXM2 16GB", 16, 732e9, 1),
}


# short names a user may type (e.g. ddtrain-predict --device) get the flagship part
SHORT = {"H100 SXM5": "H100 SXM5 80GB", "H100": "H100 SXM5 80GB", "h100 pcie": "H100 PCIe 80GB",
         "H200": "H200 SXM 141GB", "A100": "A100 SXM4 40GB", "A100 80GB": "A100 SXM4 80GB",
         "V100": "Tesla V100 SXM2 16GB", "NVIDIA T4": "Tesla T4", "P100": "Tesla P100 SXM2 16GB",
         "Tesla V100-DGXS-32GB": "Tesla V100 SXM2 32GB", "Tesla P100-PCIE-12GB": "Tesla P100 PCIe 12GB"}


@pytest.mark.parametrize("device_name", list(SHORT))
def test_lookup_gpu_short_names(device_name):
    assert lookup_gpu(device_name).name == SHORT[device_name]


@pytest.mark.parametrize("device_name", list(NAMES))
def test_lookup_gpu(device_name):
    part, mem_gb, bandwidth, nvlink = NAMES[device_name]
    spec = lookup_gpu(device_name)
    assert spec is not None and spec.name == part
    assert spec.memory_bytes == mem_gb * 2 ** 30
    assert spec.memory_bandwidth == pytest.approx(bandwidth)
    assert spec.nvlink_generation == nvlink
    assert (spec.nvlink_bandwidth is None) == (nvlink is None)
    assert set(spec.peak_flops) == set(PRECISIONS)


def test_lookup_gpu_peaks():
    h100, h100p, h200 = (lookup_gpu(n) for n in ("NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA H200"))
    assert h100.peak_flops == {"fp32": pytest.approx(66.9e12), "tf32": pytest.approx(494.7e12),
                               "bf16": pytest.approx(989.4e12), "fp16": pytest.approx(989.4e12)}
    assert h100.nvlink_bandwidth == pytest.approx(900e9)
    assert peak_flops(h100p, "bf16") < peak_flops(h100, "bf16")  # the PCIe part is not the SXM part
    assert h200.peak_flops == h100.peak_flops and h200.memory_bandwidth > h100.memory_bandwidth
    a100 = lookup_gpu("NVIDIA A100-SXM4-40GB")
    assert (peak_flops(a100, "bf16"), peak_flops(a100, "tf32"), peak_flops(a100, "fp32")) == \
        pytest.approx((312e12, 156e12, 19.5e12))
    assert a100.nvlink_bandwidth == pytest.approx(600e9)
    v100 = lookup_gpu("Tesla V100-SXM2-16GB")
    assert peak_flops(v100, "fp16") == pytest.approx(125e12) and peak_flops(v100, "tf32") is None
    assert v100.nvlink_bandwidth == pytest.approx(300e9)
    t4 = lookup_gpu("Tesla T4")
    assert peak_flops(t4, "fp16") == pytest.approx(65e12) and peak_flops(t4, "fp32") == pytest.approx(8.1e12)
    assert peak_flops(t4, "bf16") is None
    p100 = lookup_gpu("Tesla P100-SXM2-16GB")
    assert peak_flops(p100, "fp16") == pytest.approx(21.2e12) and p100.nvlink_bandwidth == pytest.approx(160e9)
    assert peak_flops(None, "fp32") is None


@pytest.mark.parametrize("device_name", ["NVIDIA GH200 480GB", "NVIDIA H200 NVL", "NVIDIA H100 NVL",
                                         "Tesla V100S-PCIE-32GB", "Tesla V100-FHHL-16GB", "NVIDIA T400",
                                         "NVIDIA GeForce RTX 4090", "NVIDIA H800", "", "cpu"])
def test_lookup_gpu_unknown(device_name):
    assert lookup_gpu(device_name) is None


def test_lookup_gpu_returns_private_copy():
    spec = lookup_gpu("NVIDIA H100 80GB HBM3")
    spec.peak_flops["bf16"] = 1.0
    assert peak_flops(lookup_gpu("NVIDIA H100 80GB HBM3"), "bf16") == pytest.approx(989.4e12)
    hash(spec)  # frozen and hashable despite the dict field
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "x"


def test_table_is_consistent():
    for spec in GPUS.values():
        assert spec.peak_flops["fp32"] > 0 and spec.memory_bytes > 0 and spec.memory_bandwidth > 0
        # tensor formats beat plain fp32 wherever they exist
        assert all(v is None or v > spec.peak_flops["fp32"] for k, v in spec.peak_flops.items() if k != "fp32")
        if spec.nvlink_generation is not None:
            # the per-GPU bidirectional quote is twice the one-way figure the interconnect table uses
            link = INTERCONNECTS[f"nvlink{spec.nvlink_generation}"]
            assert spec.nvlink_bandwidth == pytest.approx(2 * link.bandwidth)


def test_interconnects():
    assert set(INTERCONNECTS) == {"nvlink1", "nvlink2", "nvlink3", "nvlink4", "pcie3", "pcie4", "pcie5",
                                  "ib-edr", "ib-hdr", "ib-ndr"}
    assert lookup_interconnect("nvlink4").bandwidth == pytest.approx(450e9)
    assert lookup_interconnect("PCIe4").bandwidth == pytest.approx(31.5e9)
    assert lookup_interconnect(" ib-ndr ").bandwidth == pytest.approx(50e9)
    assert lookup_interconnect("ib-edr").bandwidth == pytest.approx(12.5e9)
    assert lookup_interconnect("pcie3").bandwidth < lookup_interconnect("pcie4").bandwidth \
        < lookup_interconnect("pcie5").bandwidth
    for link in INTERCONNECTS.values():
        assert 1e-7 < link.latency < 1e-4


def test_interconnect_unknown():
    with pytest.raises(UserError) as err:
        lookup_interconnect("ethernet")
    message = str(err.value)
    assert "ethernet" in message
    assert all(key in message for key in INTERCONNECTS)
