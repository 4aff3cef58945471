"""``linux.devices`` for a VM: host block devices as virtio-blk, the rest refused or the guest's.

A VM cannot hand a host character device to its guest. What a spec asks for:

* a host **block** device (``--device /dev/loopN``, CRI ``devices``, raw block
  ``volumeDevices``): the service opens it (``O_RDONLY`` when the container's
  cgroup rule for it lacks ``w``) and hot-plugs the fd as virtio-blk; the agent
  finds it by serial and rewrites the entry (and the cgroup rules naming the
  host's numbers) to the guest disk's major:minor, so crun makes the node at
  the requested path;
* a character device the guest serves itself (``/dev/null`` family, ``tty``,
  ``ptmx``, ``/dev/fuse``, ``/dev/net/tun``): kept, its numbers are the same
  in every Linux;
* any other character device: refused with one line;
* a **privileged** spec (every capability, and its devices are the host's whole
  ``/dev``, as podman, docker and the CRI without
  ``privileged_without_host_devices`` write it): no host device at all, and the
  agent gives the container the guest's devices instead (Kata's
  ``privileged_without_host_devices``).

The plan is plain data; :func:`plan` takes the host lookups as arguments.
"""

from __future__ import annotations

import copy
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cocoon.errors import InvalidArgument

# (major, minor) of the character devices a guest has of its own.
GUEST_CHAR = {
    (1, 3): "null",
    (1, 5): "zero",
    (1, 7): "full",
    (1, 8): "random",
    (1, 9): "urandom",
    (5, 0): "tty",
    (5, 2): "ptmx",
    (10, 200): "net/tun",
    (10, 229): "fuse",
}
# A privileged spec's devices cover (at least) this share of the host's /dev nodes.
PRIVILEGED_COVERAGE = 0.9
# Capabilities every privileged spec has and no default one does.
PRIVILEGED_CAPS = {"CAP_SYS_ADMIN", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_BOOT"}

Node = tuple[str, int, int]  # ("b" | "c", major, minor)


@dataclass(frozen=True)
class HostBlock:
    """One host block device to hot-plug."""

    host_path: Path  # the host's node, found by its numbers
    major: int
    minor: int
    readonly: bool
    node: str  # QEMU node/device id
    serial: str


@dataclass(frozen=True)
class DevicePlan:
    blocks: list[HostBlock] = field(default_factory=list)
    linux: dict[str, Any] = field(default_factory=dict)  # the guest spec's linux section
    guest_devices: bool = False  # privileged: give the container the guest's devices


def _num(dev: dict[str, Any], key: str, where: str) -> int:
    value = dev.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidArgument(f"{where}: {key} must be a non-negative integer")
    return value


def _allows_every_device(rules: list[Any]) -> bool:
    """The last catch-all device cgroup rule allows everything (``a *:* rwm``)."""
    verdict = False
    for rule in rules:
        if not isinstance(rule, dict) or rule.get("type", "a") != "a":
            continue
        if rule.get("major") not in (None, -1) or rule.get("minor") not in (None, -1):
            continue
        verdict = bool(rule.get("allow")) and set("rwm") <= set(str(rule.get("access", "rwm")))
    return verdict


def is_privileged(spec: dict[str, Any], host_nodes: set[Node]) -> bool:
    """Every capability, and either a device list that is the host's ``/dev``
    (podman, docker, the CRI) or none at all with every device allowed (the CRI
    with containerd's ``privileged_without_host_devices``)."""
    caps = set(((spec.get("process") or {}).get("capabilities") or {}).get("bounding") or [])
    if not caps >= PRIVILEGED_CAPS:
        return False
    linux = spec.get("linux") or {}
    listed = {
        (str(d.get("type")), d.get("major"), d.get("minor"))
        for d in linux.get("devices") or []
        if isinstance(d, dict)
    }
    if not listed:
        return _allows_every_device((linux.get("resources") or {}).get("devices") or [])
    if not host_nodes:
        return False
    return len(listed & host_nodes) >= PRIVILEGED_COVERAGE * len(host_nodes)


def _writable(rules: list[Any], major: int, minor: int) -> bool:
    """Whether the cgroup rules (last match wins) let the container write b major:minor."""
    allowed_w = False
    for rule in rules:
        if not isinstance(rule, dict):
            continue
        if rule.get("type", "a") not in ("a", "b"):
            continue
        if rule.get("major") not in (None, -1, major) or rule.get("minor") not in (None, -1, minor):
            continue
        if "w" in str(rule.get("access", "rwm")):
            allowed_w = bool(rule.get("allow"))
    return allowed_w


def plan(
    spec: dict[str, Any],
    first_index: int,
    host_nodes: set[Node],
    block_path: Callable[[int, int], Path | None],
) -> DevicePlan:
    """The devices of ``spec``'s container; raises InvalidArgument naming a refused one.

    ``host_nodes``: the host's ``/dev`` nodes (:func:`host_dev_nodes`);
    ``block_path(major, minor)``: the host's node of a block device, None if
    there is none. Disk serials are ``cocoon-d<n>`` from ``first_index``.
    """
    linux = copy.deepcopy(spec.get("linux") or {})
    devices = linux.get("devices") or []
    if not isinstance(devices, list):
        raise InvalidArgument("linux.devices must be a list")
    if is_privileged(spec, host_nodes):
        linux["devices"] = []
        return DevicePlan([], linux, guest_devices=True)
    rules = ((linux.get("resources") or {}).get("devices")) or []
    blocks: list[HostBlock] = []
    out: list[dict[str, Any]] = []
    for i, dev in enumerate(devices):
        if not isinstance(dev, dict):
            raise InvalidArgument(f"linux.devices[{i}] must be an object")
        where = f"linux.devices[{i}] ({dev.get('path')})"
        kind = dev.get("type")
        if kind == "p":
            out.append(dev)
            continue
        major, minor = _num(dev, "major", where), _num(dev, "minor", where)
        if kind in ("c", "u"):
            if (major, minor) not in GUEST_CHAR:
                raise InvalidArgument(
                    f"{where}: host character device {major}:{minor} cannot be passed into a VM "
                    "(block devices are; of character devices only the guest's own "
                    "null, zero, full, random, urandom, tty, ptmx, fuse, net/tun)"
                )
            out.append(dev)
            continue
        if kind != "b":
            raise InvalidArgument(f"{where}: unknown device type {kind!r}")
        host = block_path(major, minor)
        if host is None:
            raise InvalidArgument(f"{where}: the host has no block device {major}:{minor}")
        n = first_index + len(blocks)
        blocks.append(
            HostBlock(
                host, major, minor, not _writable(rules, major, minor), f"dev{n}", f"cocoon-d{n}"
            )
        )
        out.append(dev)  # the agent sets the guest disk's numbers
    linux["devices"] = out
    return DevicePlan(blocks, linux)


def host_dev_nodes(root: str = "/dev") -> set[Node]:
    """The char/block nodes under the host's ``/dev`` (not pts, shm, mqueue)."""
    nodes: set[Node] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in ("pts", "shm", "mqueue")]
        for name in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if stat.S_ISBLK(st.st_mode) or stat.S_ISCHR(st.st_mode):
                kind = "b" if stat.S_ISBLK(st.st_mode) else "c"
                nodes.add((kind, os.major(st.st_rdev), os.minor(st.st_rdev)))
    return nodes


def host_block_path(major: int, minor: int, sysfs: str = "/sys/dev/block") -> Path | None:
    """The host's ``/dev`` node of block device major:minor (its sysfs uevent's DEVNAME)."""
    try:
        text = Path(f"{sysfs}/{major}:{minor}/uevent").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "DEVNAME" and value and ".." not in value.split("/"):
            return Path("/dev") / value
    return None


def open_block(dev: HostBlock) -> int:
    """The fd QEMU gets, checked to be that very device (a node may be replaced)."""
    flags = (os.O_RDONLY if dev.readonly else os.O_RDWR) | os.O_CLOEXEC
    try:
        fd = os.open(dev.host_path, flags)
    except OSError as exc:
        raise InvalidArgument(f"cannot open {dev.host_path}: {exc.strerror}") from exc
    st = os.fstat(fd)
    if not stat.S_ISBLK(st.st_mode) or st.st_rdev != os.makedev(dev.major, dev.minor):
        os.close(fd)
        raise InvalidArgument(f"{dev.host_path} is not block device {dev.major}:{dev.minor}")
    return fd


def describe(blocks: Iterable[HostBlock]) -> str:
    return ", ".join(f"{b.host_path}{' (ro)' if b.readonly else ''}" for b in blocks)
