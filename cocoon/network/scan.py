"""Read a network namespace's links, addresses, routes and neighbours (pyroute2).

Call :func:`snapshot` from inside the namespace (:func:`cocoon.network.netns.in_netns`):
a netlink socket talks to the namespace it was created in.
"""

from __future__ import annotations

from typing import Any

from cocoon.network.plan import Address, Link, Neighbor, RouteEntry, Snapshot

AF_INET6 = 10
TC_H_INGRESS = 0xFFFFFFF1


def _kind(msg: Any) -> str:
    info = msg.get_attr("IFLA_LINKINFO")
    return str(info.get_attr("IFLA_INFO_KIND") or "") if info is not None else ""


def snapshot(ipr: Any) -> Snapshot:
    """Everything :func:`cocoon.network.plan.plan_network` needs, from an IPRoute."""
    ingress = {q["index"] for q in ipr.get_qdiscs() if q["parent"] == TC_H_INGRESS}
    links = tuple(
        Link(
            index=m["index"],
            name=str(m.get_attr("IFLA_IFNAME")),
            kind=_kind(m),
            mac=str(m.get_attr("IFLA_ADDRESS") or ""),
            mtu=int(m.get_attr("IFLA_MTU") or 1500),
            has_ingress=m["index"] in ingress,
        )
        for m in ipr.get_links()
    )
    addresses = tuple(
        Address(
            index=m["index"],
            address=str(m.get_attr("IFA_ADDRESS")),
            prefix_len=m["prefixlen"],
            family=6 if m["family"] == AF_INET6 else 4,
            scope=m["scope"],
        )
        for m in ipr.get_addr()
    )
    routes = []
    for family in (2, AF_INET6):
        for m in ipr.get_routes(family=family):
            oif = m.get_attr("RTA_OIF")
            if oif is None:
                continue
            routes.append(
                RouteEntry(
                    oif=oif,
                    dest=str(m.get_attr("RTA_DST") or ""),
                    dst_len=m["dst_len"],
                    gateway=str(m.get_attr("RTA_GATEWAY") or ""),
                    source=str(m.get_attr("RTA_PREFSRC") or ""),
                    scope=m["scope"],
                    family=6 if family == AF_INET6 else 4,
                    table=m.get_attr("RTA_TABLE") or m["table"],
                )
            )
    neighbors = tuple(
        Neighbor(
            index=m["ifindex"],
            address=str(m.get_attr("NDA_DST") or ""),
            mac=str(m.get_attr("NDA_LLADDR") or ""),
            state=m["state"],
        )
        for m in ipr.get_neighbours()
    )
    return Snapshot(links, addresses, tuple(routes), neighbors)
