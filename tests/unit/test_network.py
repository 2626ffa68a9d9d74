"""Which interface a rank uses across hosts (ddtrain.distributed.network): tables of hosts, no sockets.

The end-to-end proof (mpirun across two network namespaces, nothing set by hand) is in
tests/e2e/test_two_hosts.py.
"""

from __future__ import annotations

import pytest

from ddtrain.distributed import network
from ddtrain.distributed.network import Interface
from ddtrain.distributed.rendezvous import remote
from ddtrain.errors import UserError

LO = Interface("lo", "127.0.0.1", 8)
ETH = Interface("eth0", "10.1.0.5", 24)
IB = Interface("ib0", "192.168.7.5", 16)
DOCKER = Interface("docker0", "172.17.0.1", 16)  # the same address on every host
NODE = [LO, DOCKER, ETH, IB]


def no_route(addr):
    return None


def test_rank0_picks_the_subnet_where_the_other_hosts_are_not_loopback_or_docker():
    peers = [["127.0.0.1", "172.17.0.1", "10.1.0.6"], ["127.0.0.1", "172.17.0.1", "10.1.0.7", "192.168.7.7"]]
    choice = network.for_rank0(NODE, peers, [], "n0", route=no_route)
    assert choice.interface == ETH and "10.1.0.0/24 holds 2 of the 2" in choice.reason


def test_rank0_follows_the_kernel_route_when_no_subnet_is_shared():
    routes = {"10.9.0.6": "192.168.7.5"}  # another rack: routed through ib0
    choice = network.for_rank0(NODE, [["10.9.0.6"]], [], "n0", route=routes.get)
    assert choice.interface == IB and "routes" in choice.reason


def test_one_host_uses_loopback_and_hostname_127_0_1_1_does_not_matter():
    assert network.for_rank0(NODE, [], [], "n0").interface == LO


def test_user_and_mpi_hints_come_first_in_order():
    env = {"GLOO_SOCKET_IFNAME": "ib0", "NCCL_SOCKET_IFNAME": "eth", "OMPI_MCA_btl_tcp_if_include": "10.1.0.0/24"}
    peers = [["10.1.0.6"]]
    assert network.for_rank0(NODE, peers, network.hints(env, "", "gloo")).interface == IB
    assert network.for_rank0(NODE, peers, network.hints(env, "", "nccl")).interface == ETH  # NCCL: name prefix
    assert network.for_rank0(NODE, peers, network.hints(env, "192.168.0.0/16", "gloo")).interface == IB  # subnet
    only_mpi = network.hints({"OMPI_MCA_btl_tcp_if_include": "10.1.0.0/24"})
    choice = network.for_rank0(NODE, peers, only_mpi)
    assert choice.interface == ETH and choice.reason == "Open MPI's btl_tcp_if_include=10.1.0.0/24"


def test_nccl_exclusion_and_exact_syntax():
    assert network.named("^docker,lo", NODE, "NCCL_SOCKET_IFNAME") == [ETH, IB]
    assert network.named("=eth", NODE, "NCCL_SOCKET_IFNAME") == []
    assert network.named("eth", NODE, "GLOO_SOCKET_IFNAME") == []  # gloo wants the exact name


def test_a_user_hint_that_names_nothing_here_is_one_line():
    with pytest.raises(UserError, match=r"dist.interface=ens5 names no interface of host n0 \(it has lo 127.0.0.1, "
                                        r"docker0 172.17.0.1, eth0 10.1.0.5, ib0 192.168.7.5\)"):
        network.for_rank0(NODE, [], network.hints({}, "ens5"), "n0")
    # MPI's setting may name interfaces of other hosts: not an error, the next rule decides
    assert network.for_rank0(NODE, [["10.1.0.6"]], network.hints({"OMPI_MCA_btl_tcp_if_include": "ens5"})).interface \
        == ETH


def test_other_ranks_use_the_interface_that_routes_to_rank0():
    assert network.for_rank(NODE, "10.1.0.6", [], route={"10.1.0.6": "10.1.0.5"}.get).interface == ETH
    assert network.for_rank(NODE, "127.0.1.1", [], route={"127.0.1.1": "127.0.0.1"}.get).interface == LO
    assert network.for_rank(NODE, "10.200.0.1", [], route=no_route) is None


def test_gloo_device_respects_what_the_user_set():
    choice = network.Choice(ETH, "x")
    assert network.gloo_device(choice, {}, "") == "eth0"
    assert network.gloo_device(choice, {"GLOO_SOCKET_IFNAME": "ib0"}, "") is None
    assert network.gloo_device(choice, {"GLOO_SOCKET_IFNAME": "ib0"}, "eth0") == "eth0"  # dist.interface wins


def test_ranks_on_this_host_are_not_remote():
    me = ("n0", ["127.0.0.1", "10.1.0.5"])
    everyone = [me, ("n0", ["10.1.0.5", "127.0.0.1"]), ("n1", ["127.0.0.1", "10.1.0.6"]),
                ("n0", ["127.0.0.1", "10.2.0.5"])]  # same name, other addresses: a network namespace
    assert remote(everyone, me) == [["127.0.0.1", "10.1.0.6"], ["127.0.0.1", "10.2.0.5"]]


def test_this_machine_has_loopback():
    assert any(f.loopback for f in network.interfaces())
    assert network.route_source("127.0.0.1") == "127.0.0.1"
