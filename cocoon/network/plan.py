"""What a pod network namespace holds, and the plan that carries it into the VM.

Pure data and pure functions (no netlink here): :mod:`cocoon.network.scan`
fills a :class:`Snapshot`, :func:`plan_network` turns it into a
:class:`NetworkPlan` (per interface a tap, the guest NIC's MAC = the
interface's, MTU, addresses; routes; neighbours), and
:mod:`cocoon.network.tap` applies it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cocoon.errors import FailedPrecondition
from cocoon.wire import agent as w

#: Link kinds whose traffic is carried into the VM (what CNI plugins put in a pod).
CARRIED_KINDS = ("veth", "macvlan", "ipvlan")
TAP_SUFFIX = "_cocoon"  # tap<N>_cocoon, like Kata's tap<N>_kata
NUD_PERMANENT = 0x80
SCOPES = {0: "", 253: "link", 254: "host"}


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str  # "veth", "tun", "" (loopback, physical), ...
    mac: str
    mtu: int
    has_ingress: bool = False  # an ingress qdisc is already attached


@dataclass(frozen=True)
class Address:
    index: int
    address: str
    prefix_len: int
    family: int  # 4 | 6
    scope: int = 0  # 253: link-local


@dataclass(frozen=True)
class RouteEntry:
    oif: int
    dest: str  # "" = default
    dst_len: int
    gateway: str = ""
    source: str = ""
    scope: int = 0
    family: int = 4
    table: int = 254  # main


@dataclass(frozen=True)
class Neighbor:
    index: int
    address: str
    mac: str
    state: int


@dataclass(frozen=True)
class Snapshot:
    links: tuple[Link, ...] = ()
    addresses: tuple[Address, ...] = ()
    routes: tuple[RouteEntry, ...] = ()
    neighbors: tuple[Neighbor, ...] = ()


@dataclass(frozen=True)
class NicPlan:
    """One pod interface carried into the VM through a tap."""

    link: str  # the pod interface (veth), left as found
    link_index: int
    tap: str
    mac: str  # the pod interface's MAC, given to the guest NIC
    mtu: int
    netdev_id: str  # QEMU ids
    device_id: str


@dataclass(frozen=True)
class NetworkPlan:
    nics: tuple[NicPlan, ...] = ()
    guest: w.UpdateNetworkRequest = field(default_factory=w.UpdateNetworkRequest)
    skipped: tuple[str, ...] = ()  # "name (kind)" of interfaces left alone

    @property
    def empty(self) -> bool:
        return not self.nics


def _carried(link: Link) -> bool:
    return link.kind in CARRIED_KINDS


def _route(r: RouteEntry, names: dict[int, str]) -> w.Route:
    dest = f"{r.dest}/{r.dst_len}" if r.dest else ""
    return w.Route(
        dest=dest,
        gateway=r.gateway,
        device=names[r.oif],
        source=r.source,
        scope=SCOPES.get(r.scope, str(r.scope)),
        family=r.family,
    )


def _wanted_route(r: RouteEntry) -> bool:
    """Main-table routes, minus the IPv6 link-local and multicast ones the guest makes itself."""
    if r.table != 254:
        return False
    return not (r.family == 6 and r.dest.lower().startswith(("fe80:", "ff00:")))


def plan_network(snap: Snapshot, netns: str = "the network namespace") -> NetworkPlan:
    """Carry every veth/macvlan/ipvlan of ``snap`` into the VM.

    Raises FailedPrecondition when the namespace already carries a VM's
    network (a Cocoon tap exists, or an interface already has an ingress
    qdisc): two VMs cannot share one interface.
    """
    taps = [lk.name for lk in snap.links if lk.name.endswith(TAP_SUFFIX)]
    if taps:
        raise FailedPrecondition(
            f"{netns} already carries another Cocoon VM's network ({taps[0]}): two VMs "
            "cannot share one pod interface; containers that share a network must run "
            "in one pod (one VM), e.g. through the containerd shim"
        )
    nics: list[NicPlan] = []
    interfaces: list[w.Interface] = []
    skipped: list[str] = []
    names: dict[int, str] = {}
    for link in sorted(snap.links, key=lambda lk: lk.index):
        if not _carried(link):
            if link.name != "lo":
                skipped.append(f"{link.name} ({link.kind or 'device'})")
            continue
        if link.has_ingress:
            raise FailedPrecondition(
                f"{link.name} in {netns} already has an ingress qdisc: it is in use "
                "(by another VM or a traffic filter), so Cocoon will not redirect it"
            )
        n = len(nics)
        names[link.index] = link.name
        nics.append(
            NicPlan(
                link=link.name,
                link_index=link.index,
                tap=f"tap{n}{TAP_SUFFIX}",
                mac=link.mac.lower(),
                mtu=link.mtu,
                netdev_id=f"hostnet{n}",
                device_id=f"net{n}",
            )
        )
        addrs = [
            w.IPAddress(a.address, a.prefix_len, a.family)
            for a in snap.addresses
            if a.index == link.index and not (a.family == 6 and a.scope == 253)
        ]
        interfaces.append(w.Interface(link.name, link.mac.lower(), link.mtu, addrs))
    routes = [_route(r, names) for r in snap.routes if r.oif in names and _wanted_route(r)]
    neighbors = [
        w.ARPNeighbor(n.address, n.mac.lower(), names[n.index])
        for n in snap.neighbors
        if n.index in names and n.state & NUD_PERMANENT and n.mac
    ]
    return NetworkPlan(
        tuple(nics),
        w.UpdateNetworkRequest(interfaces, routes, neighbors),
        tuple(skipped),
    )
