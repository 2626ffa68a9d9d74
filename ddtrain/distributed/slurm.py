"""SLURM's compressed node lists and the rendezvous port of a job, as pure functions (launcher detection uses them)."""

from __future__ import annotations

import re
import zlib

from ddtrain.errors import UserError

__all__ = ["parse_slurm_nodelist", "slurm_master_port"]

# slurm_master_port range: [15000, 32000). Above the privileged (<1024) and the common
# well-known service ports, below Linux's default ephemeral range (32768-60999, see
# /proc/sys/net/ipv4/ip_local_port_range) and Windows/IANA's (49152+), so the port is not
# handed out to some outgoing connection on the master node by the kernel.
SLURM_PORT_BASE = 15000
SLURM_PORT_SPAN = 17000


_RANGE = re.compile(r"(\d+)(?:-(\d+))?")


def _expand_brackets(body: str, nodelist: str) -> list[str]:
    """Expand the inside of one bracket group, e.g. "01-04,07", keeping zero padding."""
    out: list[str] = []
    for item in body.split(","):
        item = item.strip()
        m = _RANGE.fullmatch(item)
        if not m:
            raise UserError(f"SLURM node list {nodelist!r}: cannot read range {item!r} in [{body}]")
        lo_text, hi_text = m.group(1), m.group(2)
        lo = int(lo_text)
        hi = lo if hi_text is None else int(hi_text)
        if hi < lo:
            raise UserError(f"SLURM node list {nodelist!r}: range {item!r} runs backwards")
        # SLURM pads to the width of the lower bound as written: n[008-010] -> n008..n010.
        width = len(lo_text)
        out.extend(f"{i:0{width}d}" for i in range(lo, hi + 1))
    return out


def _expand_host(pattern: str, nodelist: str) -> list[str]:
    """Expand one host pattern with any number of bracket groups (cartesian product, left first)."""
    hosts = [""]
    pos = 0
    while pos < len(pattern):
        open_at = pattern.find("[", pos)
        close_at = pattern.find("]", pos)
        if open_at == -1:
            if close_at != -1:
                raise UserError(f"SLURM node list {nodelist!r}: unbalanced ']'")
            hosts = [h + pattern[pos:] for h in hosts]
            break
        if close_at != -1 and close_at < open_at:
            raise UserError(f"SLURM node list {nodelist!r}: unbalanced ']'")
        close_at = pattern.find("]", open_at)
        if close_at == -1:
            raise UserError(f"SLURM node list {nodelist!r}: unbalanced '['")
        body = pattern[open_at + 1:close_at]
        if "[" in body:
            raise UserError(f"SLURM node list {nodelist!r}: nested '['")
        prefix = pattern[pos:open_at]
        hosts = [h + prefix + n for h in hosts for n in _expand_brackets(body, nodelist)]
        pos = close_at + 1
    return hosts


def parse_slurm_nodelist(nodelist: str) -> list[str]:
    """Expand a SLURM compressed host list such as "gpu[01-04,07],cpu-a1" into host names, in order."""
    # Split on commas outside brackets only: "gpu[01-04,07]" is one pattern.
    patterns: list[str] = []
    depth = 0
    start = 0
    for i, ch in enumerate(nodelist):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise UserError(f"SLURM node list {nodelist!r}: unbalanced ']'")
        elif ch == "," and depth == 0:
            patterns.append(nodelist[start:i])
            start = i + 1
    if depth != 0:
        raise UserError(f"SLURM node list {nodelist!r}: unbalanced '['")
    patterns.append(nodelist[start:])

    hosts: list[str] = []
    for pattern in patterns:
        pattern = pattern.strip()
        if not pattern:  # tolerate "a,,b" and a trailing comma
            continue
        if any(c.isspace() for c in re.sub(r"\[[^\]]*\]", "", pattern)):
            raise UserError(f"SLURM node list {nodelist!r}: host {pattern!r} contains a space")
        hosts.extend(_expand_host(pattern, nodelist))
    return hosts


def slurm_master_port(job_id: str | int) -> int:
    """Deterministic rendezvous port for a SLURM job, in [15000, 32000): the same on every rank."""
    text = str(job_id).strip()
    if not text:
        raise UserError("SLURM_JOB_ID is empty: export MASTER_PORT")
    if text.isdigit():
        number = int(text)
    else:
        # Array/het ids like "123_4" or "123+1": CRC32 is stable across processes and runs,
        # unlike hash(), whose str seed differs per process (PYTHONHASHSEED).
        number = zlib.crc32(text.encode())
    return SLURM_PORT_BASE + number % SLURM_PORT_SPAN
