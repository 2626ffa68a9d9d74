"""Published peak figures of NVIDIA data-centre GPUs and of the links between them.

Used to turn measured throughput into MFU and to predict scaling. Every figure is a vendor peak
(boost clock, dense: NVIDIA's "with sparsity" numbers are halved), never a measurement; the source
of each one is named next to it.

Units: FLOP/s, bytes, bytes/s (decimal: 1 GB/s = 1e9 B/s, 1 TB/s = 1e12 B/s), seconds.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Dict, Optional

from ddtrain.errors import UserError

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")

_T = 1e12  # TFLOP/s
_GB_S = 1e9  # GB/s
_GIB = 2 ** 30  # memory capacity: HBM/GDDR parts come in binary sizes; CUDA reports a little less (ECC, reserved)


@dataclass(frozen=True)
class GPUSpec:
    """One GPU part: dense peak FLOP/s per precision (None = format not supported), memory and NVLink."""

    name: str
    peak_flops: Dict[str, Optional[float]] = field(hash=False)  # keys: fp32, tf32, bf16, fp16
    memory_bytes: int
    memory_bandwidth: float  # bytes/s
    nvlink_bandwidth: Optional[float]  # bytes/s per GPU, bidirectional aggregate over all links (NVIDIA's quote)
    nvlink_generation: Optional[int]


def _flops(fp32: float, tf32: Optional[float], bf16: Optional[float],
           fp16: Optional[float]) -> Dict[str, Optional[float]]:
    return {"fp32": fp32 * _T, "tf32": tf32 and tf32 * _T, "bf16": bf16 and bf16 * _T, "fp16": fp16 and fp16 * _T}


# --- Pascal. Source: "Tesla P100 datasheet" (NVLink-optimized vs PCIe servers). No tensor cores: the fp16
# figure is packed half2 math on the CUDA cores; no tf32/bf16.
# NVLink 1: 4 links x 40 GB/s bidirectional = 160 GB/s bidirectional (80 GB/s per direction).
_P100_SXM2 = GPUSpec("Tesla P100 SXM2 16GB", _flops(10.6, None, None, 21.2), 16 * _GIB, 732 * _GB_S, 160 * _GB_S, 1)
# PCIe card: 9.3 fp32 / 18.7 fp16; 16 GB at 732 GB/s or 12 GB at 549 GB/s; PCIe gen3 x16, no NVLink
_P100_PCIE = GPUSpec("Tesla P100 PCIe 16GB", _flops(9.3, None, None, 18.7), 16 * _GIB, 732 * _GB_S, None, None)
_P100_PCIE_12 = dataclasses.replace(_P100_PCIE, name="Tesla P100 PCIe 12GB", memory_bytes=12 * _GIB,
                                    memory_bandwidth=549 * _GB_S)

# --- Volta. Source: "Tesla V100 datasheet" (SXM2 vs PCIe columns). fp16 = tensor-core peak (fp16 in, fp32
# accumulate); no tf32/bf16. HBM2 900 GB/s on both, 16 or 32 GB.
# NVLink 2: 6 links x 50 GB/s bidirectional = 300 GB/s bidirectional (150 GB/s per direction).
_V100_SXM2 = GPUSpec("Tesla V100 SXM2 16GB", _flops(15.7, None, None, 125), 16 * _GIB, 900 * _GB_S, 300 * _GB_S, 2)
_V100_SXM2_32 = dataclasses.replace(_V100_SXM2, name="Tesla V100 SXM2 32GB", memory_bytes=32 * _GIB)
# PCIe card: 14 fp32 / 112 tensor (lower boost clock than SXM2); PCIe gen3 x16, no NVLink
_V100_PCIE = GPUSpec("Tesla V100 PCIe 16GB", _flops(14.0, None, None, 112), 16 * _GIB, 900 * _GB_S, None, None)
_V100_PCIE_32 = dataclasses.replace(_V100_PCIE, name="Tesla V100 PCIe 32GB", memory_bytes=32 * _GIB)

# --- Turing. Source: "T4 datasheet" (NVIDIA T4 Tensor Core GPU): 8.1 fp32, 65 mixed-precision fp16 tensor,
# 16 GB GDDR6 at 320 GB/s; PCIe gen3 x16, no NVLink, no tf32/bf16.
_T4 = GPUSpec("Tesla T4", _flops(8.1, None, None, 65), 16 * _GIB, 320 * _GB_S, None, None)

# --- Ampere. Source: "NVIDIA A100 datasheet" (A100 80GB PCIe / A100 80GB SXM / A100 40GB columns; sparse
# figures halved): 19.5 fp32, 156 tf32, 312 bf16/fp16 on every form factor (the PCIe card's 250-300 W
# limit lowers what it sustains, not its quoted peak).
# Memory bandwidth: 40 GB (SXM4 and PCIe) 1,555 GB/s; 80 GB SXM4 2,039 GB/s; 80 GB PCIe 1,935 GB/s.
# NVLink 3: 12 links x 50 GB/s bidirectional = 600 GB/s bidirectional (300 GB/s per direction).
_A100_FLOPS = _flops(19.5, 156, 312, 312)
_A100_SXM4_40 = GPUSpec("A100 SXM4 40GB", _A100_FLOPS, 40 * _GIB, 1555 * _GB_S, 600 * _GB_S, 3)
_A100_SXM4_80 = GPUSpec("A100 SXM4 80GB", _A100_FLOPS, 80 * _GIB, 2039 * _GB_S, 600 * _GB_S, 3)
# PCIe cards: PCIe gen4 x16. The datasheet also lists an optional NVLink bridge (600 GB/s) that joins only
# pairs of cards; most PCIe servers lack it and it does not connect all GPUs, so it is not assumed here.
_A100_PCIE_40 = GPUSpec("A100 PCIe 40GB", _A100_FLOPS, 40 * _GIB, 1555 * _GB_S, None, None)
_A100_PCIE_80 = GPUSpec("A100 PCIe 80GB", _A100_FLOPS, 80 * _GIB, 1935 * _GB_S, None, None)

# --- Hopper. Sources: "NVIDIA H100 Tensor Core GPU datasheet" and the "NVIDIA H100 Tensor Core GPU
# Architecture" whitepaper (dense figures). H100 SXM5: 66.9 fp32, 494.7 tf32, 989.4 bf16/fp16,
# 80 GB HBM3 at 3.35 TB/s.
# NVLink 4: 18 links x 50 GB/s bidirectional = 900 GB/s bidirectional (450 GB/s per direction).
_H100_SXM = GPUSpec("H100 SXM5 80GB", _flops(66.9, 494.7, 989.4, 989.4), 80 * _GIB, 3.35 * _T, 900 * _GB_S, 4)
# H100 PCIe: 51.2 fp32, 378 tf32, 756 bf16/fp16 dense (datasheet: 51 / 756* / 1,513* with sparsity),
# 80 GB HBM2e at 2.0 TB/s; PCIe gen5 x16. Optional 2-card NVLink bridge (600 GB/s) not assumed, as for A100 PCIe.
_H100_PCIE = GPUSpec("H100 PCIe 80GB", _flops(51.2, 378, 756, 756), 80 * _GIB, 2.0 * _T, None, None)
# H200 SXM. Source: "NVIDIA H200 product brief" / H200 datasheet: same GH100 compute and NVLink 4 as
# H100 SXM5 (67 fp32, 989 tf32*, 1,979 bf16/fp16* with sparsity), 141 GB HBM3e at 4.8 TB/s.
_H200_SXM = dataclasses.replace(_H100_SXM, name="H200 SXM 141GB", memory_bytes=141 * _GIB, memory_bandwidth=4.8 * _T)

GPUS: Dict[str, GPUSpec] = {s.name: s for s in (
    _P100_SXM2, _P100_PCIE, _P100_PCIE_12, _V100_SXM2, _V100_SXM2_32, _V100_PCIE, _V100_PCIE_32, _T4,
    _A100_SXM4_40, _A100_SXM4_80, _A100_PCIE_40, _A100_PCIE_80, _H100_SXM, _H100_PCIE, _H200_SXM)}


def _match(tokens: set) -> Optional[GPUSpec]:
    # whole tokens, not substrings: "GH200" is not an H200, "V100S" / "T400" are other parts
    pcie = "PCIE" in tokens
    if "H200" in tokens:
        # H200 NVL is a PCIe card with lower clocks: unknown rather than wrongly given SXM peaks
        return None if "NVL" in tokens or pcie else _H200_SXM
    if "H100" in tokens:
        if pcie:
            return _H100_PCIE
        # the SXM5 part reports itself as "NVIDIA H100 80GB HBM3" and is the default for a bare "H100";
        # H100 NVL (94 GB, other clocks) is unknown rather than wrongly given SXM5 figures
        return None if "NVL" in tokens else _H100_SXM
    if "A100" in tokens:
        big = "80GB" in tokens
        if pcie:
            return _A100_PCIE_80 if big else _A100_PCIE_40
        return _A100_SXM4_80 if big else _A100_SXM4_40
    if "V100" in tokens:
        big = "32GB" in tokens
        if pcie:
            return _V100_PCIE_32 if big else _V100_PCIE
        # FHHL (150 W) runs at lower clocks; SXM2, DGXS (the DGX Station's SXM2) and a bare "V100" get SXM2
        return None if "FHHL" in tokens else (_V100_SXM2_32 if big else _V100_SXM2)
    if "T4" in tokens:
        return _T4
    if "P100" in tokens:
        if pcie:
            return _P100_PCIE_12 if "12GB" in tokens else _P100_PCIE
        return _P100_SXM2
    return None


def lookup_gpu(device_name: str) -> Optional[GPUSpec]:
    """The spec of a torch.cuda.get_device_name() string such as "NVIDIA H100 80GB HBM3", or None if unknown."""
    tokens = set(re.split(r"[\s\-_/,()]+", str(device_name).upper())) - {""}
    spec = _match(tokens)
    # a private copy of the dict: a caller editing it must not change the table
    return None if spec is None else dataclasses.replace(spec, peak_flops=dict(spec.peak_flops))


def peak_flops(spec: Optional[GPUSpec], precision: str) -> Optional[float]:
    """Dense peak FLOP/s of spec at precision (fp32 | tf32 | bf16 | fp16); None if unknown or unsupported."""
    if precision not in PRECISIONS:
        raise UserError(f"precision={precision} has no peak figure; choose one of: {', '.join(PRECISIONS)}")
    return None if spec is None else spec.peak_flops.get(precision)


@dataclass(frozen=True)
class Interconnect:
    """A link between GPUs: bandwidth in bytes/s PER DIRECTION (what a ring allreduce's time uses), latency in s."""

    name: str
    bandwidth: float
    latency: float


# Bandwidth convention: unidirectional bytes/s one GPU can send while it also receives as much
# (NVIDIA quotes NVLink as the bidirectional aggregate, twice these; GPUSpec.nvlink_bandwidth keeps that quote).
# Latencies are order-of-magnitude defaults for one small collective step including software (NCCL)
# overhead, not measurements: override them (Interconnect(name, bandwidth, latency)) with nccl-tests figures.
_NVLINK_LATENCY = 3e-6  # a few us per step through NCCL on NVLink
_PCIE_LATENCY = 8e-6  # 5-10 us: PCIe switch / host bridge hops plus NCCL
_IB_LATENCY = 5e-6  # ~1 us wire/switch, 1-5 us with verbs + NCCL proxy

INTERCONNECTS: Dict[str, Interconnect] = {
    # per GPU, summed over its links; bidirectional quotes 160 / 300 / 600 / 900 GB/s
    # (Tesla P100, Tesla V100, NVIDIA A100, NVIDIA H100 datasheets)
    "nvlink1": Interconnect("NVLink 1 (P100)", 80 * _GB_S, _NVLINK_LATENCY),
    "nvlink2": Interconnect("NVLink 2 (V100)", 150 * _GB_S, _NVLINK_LATENCY),
    "nvlink3": Interconnect("NVLink 3 (A100)", 300 * _GB_S, _NVLINK_LATENCY),
    "nvlink4": Interconnect("NVLink 4 (H100/H200)", 450 * _GB_S, _NVLINK_LATENCY),
    # x16 link rate after 128b/130b encoding (8 / 16 / 32 GT/s x 16 lanes): 15.75 / 31.5 / 63 GB/s per
    # direction, commonly rounded to 16 / 32 / 64 ("32 GB/s" PCIe gen3 in the datasheets is both directions);
    # packet overhead leaves ~80-90% of this in practice
    "pcie3": Interconnect("PCIe gen3 x16", 15.75 * _GB_S, _PCIE_LATENCY),
    "pcie4": Interconnect("PCIe gen4 x16", 31.5 * _GB_S, _PCIE_LATENCY),
    "pcie5": Interconnect("PCIe gen5 x16", 63.0 * _GB_S, _PCIE_LATENCY),
    # one port per GPU: EDR 100, HDR 200, NDR 400 Gb/s per direction (InfiniBand Trade Association rates)
    "ib-edr": Interconnect("InfiniBand EDR 100 Gb/s", 100e9 / 8, _IB_LATENCY),
    "ib-hdr": Interconnect("InfiniBand HDR 200 Gb/s", 200e9 / 8, _IB_LATENCY),
    "ib-ndr": Interconnect("InfiniBand NDR 400 Gb/s", 400e9 / 8, _IB_LATENCY),
}


def lookup_interconnect(name: str) -> Interconnect:
    """The INTERCONNECTS entry for name (case-insensitive); UserError listing the choices otherwise."""
    key = str(name).strip().lower()
    if key not in INTERCONNECTS:
        raise UserError(f"interconnect {name} is not known; choose one of: {', '.join(INTERCONNECTS)}")
    return INTERCONNECTS[key]


__all__ = ["GPUS", "GPUSpec", "INTERCONNECTS", "Interconnect", "PRECISIONS", "lookup_gpu",
           "lookup_interconnect", "peak_flops"]
