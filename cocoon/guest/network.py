"""The pod network inside the guest: NICs by MAC, addresses, routes, neighbours, DNS.

The host hot-plugs one virtio-net NIC per pod interface with the interface's
MAC; here each NIC is found by that MAC, renamed to the pod interface's name,
given its MTU and addresses and brought up, then routes and static neighbours
follow (Kata's UpdateInterface, UpdateRoutes, AddARPNeighbors). The commands
are computed as plain data (:func:`ip_batch`) and run as one ``ip -batch``
(one spawn: each fork costs ~0.1 s under TCG). Containers share this, the
guest's root network namespace (the host drops their network namespace).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import socket
import struct
from typing import Any

from cocoon.wire import agent as w

log = logging.getLogger("cocoon.guest")
SYS_NET = "/sys/class/net"
IP = "/bin/ip"
NET_DIR = "/run/cocoon/network"
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


def guest_links(sys_net: str = SYS_NET) -> dict[str, str]:
    """MAC (lower case) → current interface name, for every link with an Ethernet MAC."""
    found: dict[str, str] = {}
    try:
        names = sorted(os.listdir(sys_net))
    except OSError:
        return found
    for name in names:
        try:
            with open(f"{sys_net}/{name}/address", encoding="utf-8") as fh:
                mac = fh.read().strip().lower()
        except OSError:
            continue
        if mac and mac != "00:00:00:00:00:00":
            found.setdefault(mac, name)
    return found


def _route_line(r: w.Route) -> str:
    dest = r.dest or ("default" if r.family == 4 else "::/0")
    parts = ["route", "replace", dest]
    if r.gateway:
        parts += ["via", r.gateway]
    if r.device:
        parts += ["dev", r.device]
    if r.source:
        parts += ["src", r.source]
    if r.scope:
        parts += ["scope", r.scope]
    return " ".join(parts)


def ip_batch(req: w.UpdateNetworkRequest, links: dict[str, str]) -> list[str]:
    """The ``ip -batch`` lines that make the guest match ``req``; raises ValueError.

    NICs are renamed through temporary names first, so two NICs swapping
    names (eth0 ↔ eth1) cannot collide. Routes without a gateway come first:
    a gateway must be reachable when its route is added.
    """
    lines: list[str] = []
    renames: list[tuple[str, str]] = []
    for i, itf in enumerate(req.interfaces):
        current = links.get(itf.hw_addr.lower())
        if current is None:
            raise ValueError(f"no guest NIC has MAC {itf.hw_addr} (for {itf.name})")
        if current != itf.name:
            tmp = f"cocoon-tmp{i}"
            lines += [f"link set dev {current} down", f"link set dev {current} name {tmp}"]
            renames.append((tmp, itf.name))
    lines += [f"link set dev {tmp} name {name}" for tmp, name in renames]
    for itf in req.interfaces:
        lines.append(f"link set dev {itf.name} mtu {itf.mtu} up")
        for a in itf.addresses:
            lines.append(f"address replace {a.address}/{a.prefix_len} dev {itf.name}")
    for r in sorted(req.routes, key=lambda r: bool(r.gateway)):
        lines.append(_route_line(r))
    for n in req.neighbors:
        lines.append(f"neigh replace {n.address} lladdr {n.hw_addr} dev {n.device} nud permanent")
    return lines


async def wait_for_macs(macs: list[str], timeout: float) -> dict[str, str]:
    """Poll until every MAC has a guest NIC (hot-plugged NICs take a moment to probe)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    wanted = {m.lower() for m in macs}
    while True:
        links = guest_links()
        if wanted <= links.keys() or loop.time() > deadline:
            return links
        await asyncio.sleep(0.02)


def loopback_up() -> None:
    """``ip link set lo up`` without a spawn: every sandbox needs it, most need nothing else."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sH22x", b"lo", 0))
        flags = struct.unpack("16sH22x", ifr)[1]
        if not flags & IFF_UP:
            fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))


async def update(reaper: Any, req: w.UpdateNetworkRequest) -> None:
    """Apply ``req``; raises OSError naming the ``ip`` line that failed."""
    loopback_up()
    if not (req.interfaces or req.routes or req.neighbors):
        return
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    links = await wait_for_macs([i.hw_addr for i in req.interfaces], req.timeout)
    t1 = loop.time()
    try:
        lines = ip_batch(req, links)
    except ValueError as exc:
        raise OSError(f"network: {exc}") from exc
    os.makedirs(NET_DIR, exist_ok=True)
    batch = f"{NET_DIR}/ip.batch"
    with open(batch, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    code, out = await reaper.run([IP, "-batch", batch])
    if code != 0:
        raise OSError(f"network: ip -batch failed ({code}): {out}")
    log.info("network: NICs found in %.3fs, configured in %.3fs", t1 - t0, loop.time() - t1)


def resolv_conf(dns: list[str]) -> str:
    """``dns`` entries are resolv.conf lines (Kata's form) or bare server addresses."""
    lines = [d if " " in d.strip() else f"nameserver {d.strip()}" for d in dns if d.strip()]
    return "\n".join(lines) + "\n"


def hosts_file(hostname: str) -> str:
    text = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    if hostname:
        text += f"127.0.1.1\t{hostname}\n"
    return text


def write_name_files(hostname: str, dns: list[str], mount: Any) -> None:
    """The guest's /etc/hosts and /etc/resolv.conf (the root image is read-only:
    files under /run are bind-mounted over them)."""
    os.makedirs(NET_DIR, exist_ok=True)
    files = {"/etc/hosts": hosts_file(hostname)}
    if dns:
        files["/etc/resolv.conf"] = resolv_conf(dns)
    for target, text in files.items():
        src = f"{NET_DIR}/{os.path.basename(target)}"
        with open(src, "w", encoding="utf-8") as fh:
            fh.write(text)
        if os.path.isfile(target) and not os.path.islink(target):
            mount(src, target)


def apply_net_sysctls(linux: dict[str, Any], proc_sys: str = "/proc/sys") -> None:
    """Write a container's ``net.*`` sysctls to the guest, and drop them from its spec.

    Containers share (or join) the guest's network namespace, the pod's, where
    crun refuses ``net.*`` sysctls ("requires a new network namespace"); in a
    pod they are the pod's settings anyway, so the agent sets them. Raises OSError.
    """
    namespaces = linux.get("namespaces") or []
    if any(ns.get("type") == "network" and not ns.get("path") for ns in namespaces):
        return  # a network namespace of its own: crun sets them there
    sysctl = dict(linux.get("sysctl") or {})
    for key in [k for k in sysctl if k.startswith(("net.", "net/"))]:
        rel = key if "/" in key else key.replace(".", "/")
        with open(f"{proc_sys}/{rel}", "w", encoding="utf-8") as fh:
            fh.write(str(sysctl.pop(key)))
    if "sysctl" in linux:
        linux["sysctl"] = sysctl
