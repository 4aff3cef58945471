"""Apply a :class:`NetworkPlan` inside the pod namespace: taps + tc mirred (``tcfilter``).

Per pod interface: a tap (opened on /dev/net/tun with ``IFF_VNET_HDR`` so
QEMU gets offloads; not persistent, so it vanishes when the last fd, QEMU's,
closes), an ingress qdisc on each side, and a u32 match-all filter whose
mirred action redirects to the other side's egress. Kata's tcfilter model.
Teardown removes the interface's ingress qdisc (its filter goes with it) and
the tap if it is still there; the interface itself is never changed.

Every function here runs inside the namespace (see ``in_netns``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
from typing import Any

from cocoon.errors import CocoonError
from cocoon.network.plan import NetworkPlan, NicPlan, Snapshot

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
INGRESS = 0xFFFF0000  # handle ffff:
ETH_P_ALL = 0x0003


def _iproute() -> Any:
    from pyroute2 import IPRoute

    return IPRoute()


def scan() -> Snapshot:
    from cocoon.network.scan import snapshot

    with _iproute() as ipr:
        return snapshot(ipr)


def open_tap(name: str) -> int:
    """Create tap ``name`` in the current namespace; return its fd (close-on-exec)."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        ifr = struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
        fcntl.ioctl(fd, TUNSETIFF, ifr)
    except OSError:
        os.close(fd)
        raise
    return fd


def _redirect(ipr: Any, src: int, dst: int) -> None:
    ipr.tc("add", "ingress", src, INGRESS)
    ipr.tc(
        "add-filter",
        "u32",
        src,
        parent=INGRESS,
        protocol=ETH_P_ALL,
        keys=["0x0/0x0+0"],  # match every packet
        target=0x10001,
        action=[{"kind": "mirred", "direction": "egress", "action": "redirect", "ifindex": dst}],
    )


def connect(plan: NetworkPlan) -> list[int]:
    """Create the taps and the redirects; return the tap fds (in plan order).

    On failure undoes what it did and raises CocoonError naming the step.
    """
    fds: list[int] = []
    done: list[NicPlan] = []
    with _iproute() as ipr:
        try:
            for nic in plan.nics:
                step = f"create {nic.tap}"
                fds.append(open_tap(nic.tap))
                done.append(nic)
                tap = ipr.link_lookup(ifname=nic.tap)[0]
                step = f"bring {nic.tap} up"
                ipr.link("set", index=tap, mtu=nic.mtu, state="up")
                step = f"redirect {nic.link} → {nic.tap}"
                _redirect(ipr, nic.link_index, tap)
                step = f"redirect {nic.tap} → {nic.link}"
                _redirect(ipr, tap, nic.link_index)
        except Exception as exc:
            _undo(ipr, done)
            for fd in fds:
                os.close(fd)
            raise CocoonError(f"pod network: cannot {step}", exc) from exc
    return fds


def _undo(ipr: Any, nics: list[NicPlan]) -> list[str]:
    errors = []
    for nic in nics:
        try:
            ipr.tc("del", "ingress", nic.link_index, INGRESS)
        except Exception as exc:  # noqa: BLE001 - absent already is fine
            if getattr(exc, "code", 0) not in (2, 22):  # ENOENT, EINVAL: no qdisc
                errors.append(f"ingress qdisc of {nic.link}: {exc}")
        with contextlib.suppress(Exception):
            for idx in ipr.link_lookup(ifname=nic.tap):
                ipr.link("del", index=idx)
    return errors


def disconnect(plan: NetworkPlan) -> list[str]:
    """Remove the redirects and any tap left; return what could not be removed."""
    with _iproute() as ipr:
        return _undo(ipr, list(plan.nics))


def _mirred_targets(msg: Any) -> list[int]:
    """The ifindexes a u32 filter's mirred actions redirect to (0: the target is gone)."""
    opts = msg.get_attr("TCA_OPTIONS")
    acts = opts.get_attr("TCA_U32_ACT") if opts is not None else None
    if acts is None:
        return []
    targets = []
    for _, act in acts["attrs"]:
        if not hasattr(act, "get_attr") or act.get_attr("TCA_ACT_KIND") != "mirred":
            continue
        parms = act.get_attr("TCA_ACT_OPTIONS").get_attr("TCA_MIRRED_PARMS")
        targets.append(int(parms["ifindex"]))
    return targets


def sweep() -> list[str]:
    """Remove ingress qdiscs whose only filters redirect to taps that are gone.

    What a sandbox killed before its teardown leaves (its taps die with QEMU):
    such a redirect blackholes the interface. Returns the interfaces cleaned.
    """
    cleaned = []
    with _iproute() as ipr:
        alive = {m["index"] for m in ipr.get_links()}
        names = {m["index"]: m.get_attr("IFLA_IFNAME") for m in ipr.get_links()}
        for q in ipr.get_qdiscs():
            if q["parent"] != 0xFFFFFFF1:
                continue
            idx = q["index"]
            targets: list[int] = []
            for f in ipr.get_filters(index=idx, parent=INGRESS):
                targets += _mirred_targets(f)
            if targets and all(t == 0 or t not in alive for t in targets):
                ipr.tc("del", "ingress", idx, INGRESS)
                cleaned.append(str(names.get(idx, idx)))
    return cleaned
