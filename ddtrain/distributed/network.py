"""Which network interface a rank uses to reach the others: rank 0's advertised address, gloo's device.

A host has several interfaces (lo, eth0, ib0, docker0, ...) and its hostname may resolve to a
loopback address (Debian and Ubuntu map it to 127.0.1.1), so neither "the address of the hostname"
nor "the first interface" is safe once a job spans hosts. The choice, first match wins:

1. what the user names: dist.interface, else GLOO_SOCKET_IFNAME (gloo) or NCCL_SOCKET_IFNAME (nccl),
   an interface name or a subnet such as 10.0.0.0/24 (a subnet works when names differ by host);
2. the interface MPI itself uses: Open MPI's btl_tcp_if_include (names or subnets);
3. rank 0: the interface whose subnet holds an address of the most ranks on other hosts, else the
   one the kernel routes to them through; any other rank: the one the kernel routes to rank 0's
   address through;
4. every rank on one host: loopback.

interfaces() and route_source() ask the kernel; the choices are pure functions of their arguments.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Mapping

from ddtrain.errors import UserError

_SIOCGIFFLAGS, _SIOCGIFADDR, _SIOCGIFNETMASK = 0x8913, 0x8915, 0x891B
_IFF_UP = 0x1


@dataclass(frozen=True)
class Interface:
    """One IPv4 interface of this host: its name, address and prefix length."""

    name: str
    addr: str
    prefix: int = 32

    @property
    def loopback(self) -> bool:
        return ipaddress.IPv4Address(self.addr).is_loopback

    @property
    def network(self) -> ipaddress.IPv4Network:
        """The subnet this interface is on, e.g. 10.0.0.0/24."""
        return ipaddress.IPv4Network(f"{self.addr}/{self.prefix}", strict=False)

    def holds(self, addr: str) -> bool:
        """True when addr is on this interface's subnet."""
        return ipaddress.IPv4Address(addr) in self.network

    def __str__(self) -> str:
        return f"{self.name} {self.addr}"


@dataclass(frozen=True)
class Choice:
    """The chosen interface and why (for the log line and error messages)."""

    interface: Interface
    reason: str


def interfaces() -> list[Interface]:
    """This host's interfaces that are up and have an IPv4 address, in the kernel's order."""
    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                flags = struct.unpack("H", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, request)[16:18])[0]
                addr = socket.inet_ntoa(fcntl.ioctl(s.fileno(), _SIOCGIFADDR, request)[20:24])
                mask = socket.inet_ntoa(fcntl.ioctl(s.fileno(), _SIOCGIFNETMASK, request)[20:24])
            except OSError:  # no IPv4 address on it
                continue
            if flags & _IFF_UP:
                found.append(Interface(name, addr, ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen))
    return found


def route_source(dest: str) -> str | None:
    """The local address the kernel would send from to reach dest (no packet is sent), or None."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((dest, 9))  # a UDP connect only looks up the route
            return s.getsockname()[0]
    except OSError:
        return None


def resolve(host: str) -> str | None:
    """host's IPv4 address (a name is looked up), or None."""
    try:
        return socket.gethostbyname(host)
    except OSError:
        return None


# ---- what the user (or MPI) names ---------------------------------------------------------------

def hints(environ: Mapping[str, str], interface: str = "", backend: str = "gloo") -> list[tuple[str, str]]:
    """(where it came from, what it names), in order of precedence: dist.interface, the backend's variable, MPI's."""
    found = []
    if interface:
        found.append(("dist.interface", interface))
    variable = "NCCL_SOCKET_IFNAME" if backend == "nccl" else "GLOO_SOCKET_IFNAME"
    if environ.get(variable, "").strip():
        found.append((variable, environ[variable].strip()))
    mpi = environ.get("OMPI_MCA_btl_tcp_if_include", "").strip()
    if mpi:
        found.append(("Open MPI's btl_tcp_if_include", mpi))
    return found


def _matches(item: str, iface: Interface, nccl: bool) -> bool:
    if "/" in item:  # a subnet, as Open MPI's if_include accepts
        try:
            return ipaddress.IPv4Address(iface.addr) in ipaddress.IPv4Network(item, strict=False)
        except ValueError:
            return False
    if nccl and item.startswith("="):
        return iface.name == item[1:]
    return iface.name.startswith(item) if nccl else iface.name == item  # NCCL matches name prefixes


def named(spec: str, own: list[Interface], source: str = "") -> list[Interface]:
    """The interfaces of `own` that spec names: comma-separated names or subnets (NCCL_SOCKET_IFNAME: its syntax)."""
    nccl = source == "NCCL_SOCKET_IFNAME"
    items = [i.strip() for i in spec.split(",") if i.strip()]
    if nccl and spec.startswith("^"):  # NCCL's exclusion list
        items = [i.lstrip("^") for i in items]
        return [f for f in own if not any(_matches(i, f, True) for i in items)]
    return [f for f in own if any(_matches(i, f, nccl) for i in items)]


def from_hints(given: list[tuple[str, str]], own: list[Interface], host: str) -> Choice | None:
    """The first interface a hint names (UserError when the user's names none here); None without hints."""
    for source, spec in given:
        found = named(spec, own, source)
        if found:
            return Choice(found[0], f"{source}={spec}")
        if source != "Open MPI's btl_tcp_if_include":  # MPI's own setting may name another host's interface
            raise UserError(f"{source}={spec} names no interface of host {host} (it has "
                            f"{', '.join(map(str, own)) or 'none'}); name one of them, or a subnet such as "
                            "10.0.0.0/24 when the names differ between hosts")
    return None


def by_address(addr: str | None, own: list[Interface]) -> Interface | None:
    """The interface carrying addr (loopback for any 127.x address)."""
    if addr is None:
        return None
    for iface in own:
        if iface.addr == addr:
            return iface
    if ipaddress.IPv4Address(addr).is_loopback:
        return next((f for f in own if f.loopback), Interface("lo", "127.0.0.1", 8))
    return None


# ---- the choices ------------------------------------------------------------------------------

def for_rank0(own: list[Interface], remote: list[list[str]], given: list[tuple[str, str]], host: str = "",
              route: Callable[[str], str | None] = route_source) -> Choice:
    """Rank 0's interface: what the user names, else the one that reaches the ranks on other hosts.

    remote holds, per rank on another host, its IPv4 addresses (empty: every rank is on this host).
    """
    choice = from_hints(given, own, host)
    if choice:
        return choice
    loop = next((f for f in own if f.loopback), Interface("lo", "127.0.0.1", 8))
    if not remote:
        return Choice(loop, "all ranks on this host")
    mine = {f.addr for f in own}
    peers = [[a for a in addrs if a not in mine and not ipaddress.IPv4Address(a).is_loopback] for addrs in remote]
    outward = [f for f in own if not f.loopback]
    counts = {f: sum(any(f.holds(a) for a in addrs) for addrs in peers) for f in outward}
    best = max(outward, key=lambda f: counts[f], default=None)
    if best is not None and counts[best]:
        return Choice(best, f"the subnet {best.network} holds {counts[best]} of the {len(peers)} "
                            "rank(s) on other hosts")
    sources = Counter(by_address(route(a), own) for addrs in peers for a in addrs)
    sources.pop(None, None)
    for iface, _ in sources.most_common():
        if not iface.loopback:
            return Choice(iface, "the kernel routes to the other hosts' ranks through it")
    if outward:
        return Choice(outward[0], "no interface shares a subnet with or routes to the other hosts' ranks: a guess")
    raise UserError(f"host {host} has no interface but loopback, and the job spans hosts: "
                    "connect it to the other hosts' network")


def for_rank(own: list[Interface], master: str, given: list[tuple[str, str]], host: str = "",
             route: Callable[[str], str | None] = route_source) -> Choice | None:
    """Another rank's interface: what the user names, else the one routing to rank 0's address (None: no route)."""
    choice = from_hints(given, own, host)
    if choice:
        return choice
    iface = by_address(route(master), own)
    return Choice(iface, f"the route to rank 0's address {master}") if iface else None


def gloo_device(choice: Choice, environ: Mapping[str, str], interface: str) -> str | None:
    """The GLOO_SOCKET_IFNAME to set (None: leave the user's): gloo must bind where the rendezvous reaches it."""
    if environ.get("GLOO_SOCKET_IFNAME", "").strip() and not interface:
        return None
    return choice.interface.name
