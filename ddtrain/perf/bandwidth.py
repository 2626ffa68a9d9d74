"""The arithmetic and tables of the allreduce benchmark: message sizes, algbw and busbw, byte counts.

busbw follows nccl-tests: algbw x 2(n-1)/n, the bytes each rank's link carries in a ring allreduce,
comparable across world sizes.
"""

from __future__ import annotations

import re

from ddtrain.errors import UserError

MiB = 1 << 20
DTYPE_BYTES = 4  # float32


def message_sizes(min_bytes: int, max_bytes: int, factor: float) -> list[int]:
    """Byte sizes from min_bytes to max_bytes (both included), each `factor` times the last, whole float32s."""
    if min_bytes < DTYPE_BYTES:
        raise UserError(f"--min-bytes={min_bytes} is below one float32 ({DTYPE_BYTES} bytes)")
    if max_bytes < min_bytes:
        raise UserError(f"--max-bytes={max_bytes} is below --min-bytes={min_bytes}")
    if factor <= 1:
        raise UserError(f"--factor={factor} must be above 1")
    sizes, size = [], float(min_bytes)
    while size <= max_bytes * (1 + 1e-9):
        b = max(DTYPE_BYTES, int(size) // DTYPE_BYTES * DTYPE_BYTES)
        if not sizes or b > sizes[-1]:
            sizes.append(b)
        size *= factor
    return sizes


def algorithm_bandwidth(nbytes: int, seconds: float) -> float:
    """Bytes per second of the message itself: size / time."""
    return nbytes / seconds


def bus_bandwidth(algbw: float, world_size: int) -> float:
    """nccl-tests' allreduce bus bandwidth: algbw * 2(n-1)/n (what each rank's link carries in a ring)."""
    return algbw * 2 * (world_size - 1) / world_size


def parse_bytes(text: str) -> int:
    """'4', '64K', '1M', '256MiB', '1G' -> bytes (K/M/G are powers of 1024)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)(?:i?B)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise UserError(f"{text!r} is not a byte count: use e.g. 4, 64K, 1M, 256M")
    return int(float(m.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m.group(2).upper()])


def human_bytes(n: int) -> str:
    """1048576 -> '1 MiB' (exact powers), else bytes."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} B"


def reference_size(sizes: list[int], ref_bytes: int) -> int:
    """The measured size used for the memcpy comparison: the largest not above ref_bytes (else the smallest)."""
    below = [s for s in sizes if s <= ref_bytes]
    return max(below) if below else min(sizes)


def format_table(name: str, device: str, rows: list[dict]) -> str:
    """nccl-tests-like table for one library."""
    lines = [f"# library {name} ({device}), float32, op sum, in place",
             f"# {'size (B)':>12s} {'count':>11s} {'time (us)':>11s} {'algbw GB/s':>11s} {'busbw GB/s':>11s} ok"]
    for r in rows:
        lines.append(f"  {r['bytes']:12d} {r['count']:11d} {r['time_us']:11.2f} {r['algbw_GBps']:11.4f} "
                     f"{r['busbw_GBps']:11.4f} {'yes' if r['correct'] else 'WRONG'}")
    return "\n".join(lines)


def summarise(result: dict) -> str:
    """The memcpy ceiling and each library's busbw at the reference size as a fraction of it."""
    lines = []
    for dev, m in result["memcpy"].items():
        lines.append(f"memcpy {dev}: {m['bytes_per_s'] / 1e9:.3f} GB/s (copy_ of {human_bytes(m['bytes'])}, best of "
                     f"{m['repeats']}, rank 0 alone; all ranks at once: "
                     f"{', '.join(f'{b / 1e9:.3f}' for b in m['concurrent_per_rank_bytes_per_s'])} GB/s)")
    for name, e in result["libraries"].items():
        if e["status"] != "ok":
            lines.append(f"{name:8s} skipped: {e['reason']}")
        else:
            lines.append(f"{name:8s} busbw at {human_bytes(e['ref_bytes'])}: {e['ref_busbw_GBps']:.3f} GB/s = "
                         f"{e['busbw_fraction_of_memcpy']:.3f} of memcpy ({e['device']})")
    return "\n".join(lines)
