"""Separate "hosts" on one machine: Linux network namespaces joined by a bridge (needs root and iproute2).

    from helpers.netns import hosts, require    # tests/ is on sys.path under pytest

    require()                                   # fails (not skips) when root or `ip` is missing
    with hosts(2) as net:                       # namespaces created here, always removed on exit
        h0, h1 = net.hosts                      # Host(name, ns, addr="10.233.X.1", ifname="eth0")
        p = h1.popen(["ping", "-c1", h0.addr])  # any command, inside that host's network namespace
        net.link_down(h1)                       # unplug h1's cable (packets to and from it are lost)
        net.link_up(h1)                         # plug it back in

Layout: one "switch" namespace holds a bridge; each host namespace has one veth end named `eth0`
with address 10.233.X.(i+1)/24 and `lo` up, and the other end plugged into the bridge. Nothing is
added to the machine's own network unless gateway=True, which plugs in a veth from the root
namespace with address 10.233.X.254 so processes outside (a slurmctld, the test itself) can reach
the hosts. X is picked so that it is not in use by another live `hosts()` on this machine.

Namespace names are `ddt<pid>-<X>-h<i>` and `ddt<pid>-<X>-sw`; cleanup kills every process left in
them and deletes them, and `cleanup_stale()` removes those whose creating process has died (e.g.
after a SIGKILLed pytest). A command inside a namespace runs via `nsenter --net=/run/netns/NS`
(unlike `ip netns exec`, nothing is remounted, so daemons that need /sys/fs/cgroup keep working).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "ddt"
SUBNET = "10.233.{x}.0/24"
NETNS_DIR = Path("/run/netns")


def missing() -> str | None:
    """Why namespaces cannot be made here (None when they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nsenter"):
        if shutil.which(tool) is None:
            return f"`{tool}` is missing: run launch/setup-test.sh as root (apt-get install iproute2 util-linux)"
    return None


def require() -> None:
    """Fail the calling test (never skip it) when namespaces cannot be made; a feature untested is a defect."""
    reason = missing()
    if reason:
        import pytest

        pytest.fail(f"two-host tests: {reason}", pytrace=False)


def ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run `ip [-n ns] args...` (10 s timeout); raise with ip's message when it fails and check is set."""
    cmd = ["ip", *(["-n", ns] if ns else []), *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {p.stderr.strip()}")
    return p


def in_ns(ns: str, argv: list[str]) -> list[str]:
    """The command line that runs argv inside network namespace `ns`."""
    return ["nsenter", f"--net={NETNS_DIR / ns}", "--", *argv]


@dataclass
class Host:
    """One namespace: its name, address on the test subnet and interface name."""

    name: str  # "h0", "h1", ...
    ns: str  # namespace name (for `ip -n`, /run/netns/<ns>)
    addr: str  # e.g. "10.233.7.1"
    ifname: str = "eth0"  # the interface that carries addr (for GLOO_SOCKET_IFNAME)
    port: str = ""  # its bridge port in the switch namespace

    def cmd(self, argv: list[str]) -> list[str]:
        """argv wrapped to run in this host's namespace."""
        return in_ns(self.ns, argv)

    def popen(self, argv: list[str], **kwargs) -> subprocess.Popen:
        """Start argv in this host's namespace (subprocess.Popen keyword arguments pass through)."""
        return subprocess.Popen(self.cmd(argv), **kwargs)

    def run(self, argv: list[str], timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
        """Run argv in this host's namespace to completion (subprocess.run; a timeout is required)."""
        return subprocess.run(self.cmd(argv), timeout=timeout, **kwargs)


@dataclass
class Network:
    """What hosts() yields: the hosts, the switch namespace, the subnet and the optional gateway address."""

    hosts: list[Host]
    switch: str
    subnet: str
    gateway: str | None = None
    _root_if: str | None = field(default=None, repr=False)

    def link_down(self, host: Host) -> None:
        """Take the host's cable out: its bridge port goes down, so nothing reaches it or leaves it."""
        ip("link", "set", host.port, "down", ns=self.switch)

    def link_up(self, host: Host) -> None:
        """Plug the host back in."""
        ip("link", "set", host.port, "up", ns=self.switch)

    def namespaces(self) -> list[str]:
        """Every namespace this network made."""
        return [h.ns for h in self.hosts] + [self.switch]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ours() -> list[str]:
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(PREFIX))


def _used_subnets() -> set[int]:
    used = set()
    for name in _ours():
        try:
            used.add(int(name.split("-")[1]))
        except (IndexError, ValueError):
            pass
    routes = ip("-4", "route", "show", check=False).stdout
    used.update(int(part.split(".")[2]) for part in routes.split() if part.startswith("10.233."))
    return used


def kill_all_in(ns: str) -> None:
    """SIGKILL every process whose network namespace is `ns`, and wait briefly for them to go."""
    for _ in range(50):
        pids = [int(p) for p in ip("netns", "pids", ns, check=False).stdout.split()]
        pids = [p for p in pids if p != os.getpid()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def delete(ns: str) -> None:
    """Kill what runs in namespace `ns` and delete it (its interfaces go with it)."""
    kill_all_in(ns)
    ip("netns", "delete", ns, check=False)


def cleanup_stale() -> list[str]:
    """Delete ddt* namespaces whose creating process is gone; returns their names."""
    removed = []
    for name in _ours():
        try:
            pid = int(name[len(PREFIX):].split("-")[0])
        except ValueError:
            continue
        if not _pid_alive(pid):
            delete(name)
            removed.append(name)
    return removed  # a gateway veth in the root namespace dies with its peer in the switch namespace


@contextlib.contextmanager
def hosts(n: int = 2, gateway: bool = False):
    """Create n hosts on one bridged test subnet 10.233.X.0/24; yields a Network; removes everything on exit."""
    cleanup_stale()
    used = _used_subnets()
    x = next(i for i in range(1, 255) if i not in used)
    base = f"{PREFIX}{os.getpid()}-{x}"
    net = Network(hosts=[], switch=f"{base}-sw", subnet=SUBNET.format(x=x))
    made: list[str] = []
    try:
        ip("netns", "add", net.switch)
        made.append(net.switch)
        ip("link", "add", "br0", "type", "bridge", ns=net.switch)
        ip("link", "set", "br0", "up", ns=net.switch)
        ip("link", "set", "lo", "up", ns=net.switch)
        for i in range(n):
            h = Host(name=f"h{i}", ns=f"{base}-h{i}", addr=f"10.233.{x}.{i + 1}", port=f"p{i}")
            ip("netns", "add", h.ns)
            made.append(h.ns)
            ip("link", "add", h.ifname, "netns", h.ns, "type", "veth", "peer", "name", h.port, "netns", net.switch)
            ip("link", "set", h.port, "master", "br0", ns=net.switch)
            ip("link", "set", h.port, "up", ns=net.switch)
            ip("addr", "add", f"{h.addr}/24", "dev", h.ifname, ns=h.ns)
            ip("link", "set", h.ifname, "up", ns=h.ns)
            ip("link", "set", "lo", "up", ns=h.ns)
            net.hosts.append(h)
        if gateway:
            root_if = f"ddtgw{x}"
            ip("link", "add", root_if, "type", "veth", "peer", "name", "pgw", "netns", net.switch)
            net._root_if = root_if
            ip("link", "set", "pgw", "master", "br0", ns=net.switch)
            ip("link", "set", "pgw", "up", ns=net.switch)
            net.gateway = f"10.233.{x}.254"
            ip("addr", "add", f"{net.gateway}/24", "dev", root_if)
            ip("link", "set", root_if, "up")
        _wait_reachable(net)
        yield net
    finally:
        for ns in reversed(made):
            delete(ns)
        if net._root_if:
            ip("link", "delete", net._root_if, check=False)


_PROBE = ("import socket, sys\n"
          "s = socket.socket(); s.settimeout(1)\n"
          "try: s.connect((sys.argv[1], 9))\n"
          "except ConnectionRefusedError: sys.exit(0)\n"
          "except OSError: sys.exit(1)\n")


def reachable(src: Host, dst_addr: str) -> bool:
    """True when a TCP connection attempt from src to dst_addr gets an answer (a refusal counts) within 1 s."""
    p = src.run([sys.executable, "-c", _PROBE, dst_addr], capture_output=True, timeout=10)
    return p.returncode == 0


def _wait_reachable(net: Network, timeout: float = 5.0) -> None:
    """Wait until the bridge forwards between the first two hosts."""
    if len(net.hosts) < 2:
        return
    a, b = net.hosts[0], net.hosts[1]
    deadline = time.monotonic() + timeout
    while not reachable(a, b.addr):
        if time.monotonic() > deadline:
            raise RuntimeError(f"netns: {a.addr} cannot reach {b.addr} after {timeout} s")
        time.sleep(0.1)
