"""The pod network plan: what is carried into the VM, computed from a snapshot (no root)."""

from __future__ import annotations

import pytest

from cocoon.errors import FailedPrecondition
from cocoon.network.plan import (
    NUD_PERMANENT,
    Address,
    Link,
    Neighbor,
    RouteEntry,
    Snapshot,
    plan_network,
)
from cocoon.wire import agent as w

LO = Link(1, "lo", "", "00:00:00:00:00:00", 65536)
ETH0 = Link(2, "eth0", "veth", "AA:BB:CC:00:00:01", 1450)


def pod(*extra_links: Link, **kw: object) -> Snapshot:
    base: dict[str, object] = {
        "links": (LO, ETH0, *extra_links),
        "addresses": (
            Address(1, "127.0.0.1", 8, 4, 254),
            Address(2, "10.88.0.5", 16, 4),
            Address(2, "fd00::5", 64, 6),
            Address(2, "fe80::1", 64, 6, 253),
        ),
        "routes": (
            RouteEntry(2, "", 0, gateway="10.88.0.1"),
            RouteEntry(2, "10.88.0.0", 16, source="10.88.0.5", scope=253),
            RouteEntry(2, "fe80::", 64, family=6),
            RouteEntry(2, "10.88.0.5", 32, scope=254, table=255),  # local table
        ),
        "neighbors": (
            Neighbor(2, "10.88.0.1", "aa:bb:cc:00:00:fe", NUD_PERMANENT),
            Neighbor(2, "10.88.0.9", "aa:bb:cc:00:00:09", 0x02),  # learnt: not carried
        ),
    }
    base.update(kw)
    return Snapshot(**base)  # type: ignore[arg-type]


def test_a_veth_becomes_a_tap_and_a_guest_nic_with_its_mac() -> None:
    plan = plan_network(pod())
    (nic,) = plan.nics
    assert (nic.link, nic.link_index, nic.tap, nic.mac, nic.mtu) == (
        "eth0",
        2,
        "tap0_cocoon",
        "aa:bb:cc:00:00:01",
        1450,
    )
    assert (nic.netdev_id, nic.device_id) == ("hostnet0", "net0")
    assert plan.guest.interfaces == [
        w.Interface(
            "eth0",
            "aa:bb:cc:00:00:01",
            1450,
            [w.IPAddress("10.88.0.5", 16, 4), w.IPAddress("fd00::5", 64, 6)],
        )
    ]


def test_routes_main_table_without_ipv6_link_local() -> None:
    routes = plan_network(pod()).guest.routes
    assert routes == [
        w.Route("", "10.88.0.1", "eth0", "", "", 4),
        w.Route("10.88.0.0/16", "", "eth0", "10.88.0.5", "link", 4),
    ]


def test_only_permanent_neighbours() -> None:
    assert plan_network(pod()).guest.neighbors == [
        w.ARPNeighbor("10.88.0.1", "aa:bb:cc:00:00:fe", "eth0")
    ]


@pytest.mark.parametrize(
    ("links", "taps", "skipped"),
    [
        ((), ["tap0_cocoon"], ()),
        (
            (Link(3, "eth1", "macvlan", "aa:00:00:00:00:03", 1500),),
            ["tap0_cocoon", "tap1_cocoon"],
            (),
        ),
        (
            (Link(3, "dummy0", "dummy", "aa:00:00:00:00:03", 1500),),
            ["tap0_cocoon"],
            ("dummy0 (dummy)",),
        ),
        ((Link(3, "wg0", "", "", 1420),), ["tap0_cocoon"], ("wg0 (device)",)),
    ],
)
def test_which_links_are_carried(
    links: tuple[Link, ...], taps: list[str], skipped: tuple[str, ...]
) -> None:
    plan = plan_network(pod(*links))
    assert [n.tap for n in plan.nics] == taps
    assert plan.skipped == skipped


def test_empty_namespace_plans_no_nic() -> None:
    plan = plan_network(Snapshot(links=(LO,)))
    assert plan.empty and plan.guest == w.UpdateNetworkRequest()


def test_a_namespace_already_carried_by_a_vm_is_refused() -> None:
    with pytest.raises(FailedPrecondition, match="already carries another Cocoon VM"):
        plan_network(pod(Link(3, "tap0_cocoon", "tun", "aa:00:00:00:00:03", 1500)), "ns X")
    busy = Link(2, "eth0", "veth", "aa:bb:cc:00:00:01", 1450, has_ingress=True)
    with pytest.raises(FailedPrecondition, match="eth0 in ns X already has an ingress qdisc"):
        plan_network(Snapshot(links=(LO, busy)), "ns X")
