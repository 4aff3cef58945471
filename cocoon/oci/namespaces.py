"""A spec's ``linux.namespaces``, planned for the guest: new ones, or joins inside the pod.

A namespace ``path`` names a host namespace file, which means nothing in the
guest. The OCI spec requires that it be a namespace of the entry's type (checked
on the host, with ``NS_GET_NSTYPE``). The only ones Cocoon can honour are those
of its own pod: containerd's CRI names them ``/proc/<pid>/ns/<kind>`` with the PID
the shim reported for the pod's sandbox container, which is the VM's (QEMU's)
PID; in the guest they become joins of the sandbox container's namespaces. The
CLI's joiners (podman pod members, ``--ipc container:A``) are found before, by
cocoon.service.membership, and planned with their sandbox's stub PIDs. Any other
path (the host's, a runc container's) is refused. The network namespace is not
planned here: the VM carries it (``cocoon.network.netns``) and every container
shares the guest's.
"""

from __future__ import annotations

import fcntl
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cocoon.errors import InvalidArgument

NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3), linux/nsfs.h
# CLONE_NEW* (what NS_GET_NSTYPE answers) → the OCI type.
CLONE_TYPES = {
    0x00020000: "mount",
    0x02000000: "cgroup",
    0x04000000: "uts",
    0x08000000: "ipc",
    0x10000000: "user",
    0x20000000: "pid",
    0x40000000: "network",
    0x00000080: "time",
}
OCI_TYPES = frozenset(CLONE_TYPES.values())
# The namespaces a pod's containers may share with its sandbox container in the guest.
POD_JOINABLE = ("ipc", "uts", "pid")
_PROC_NS = re.compile(r"/proc/(\d+)/ns/[a-z_]+")

NOT_A_NAMESPACE = ""
NOT_COCOONS = (
    "it is not a namespace of a running Cocoon container (not Cocoon's: a VM cannot enter "
    "a host namespace); run that container with Cocoon too, and this one joins its VM"
)


@dataclass(frozen=True)
class NamespacePlan:
    guest: list[dict[str, Any]]  # the guest spec's entries: new namespaces, no paths
    pod_joins: list[str]  # OCI types joined from the pod's sandbox container in the guest


def host_nstype(path: str) -> str:
    """The OCI type of the namespace file at ``path`` ("" if it is not a namespace);
    raises OSError when it cannot be opened."""
    # Namespace files are regular files (nsfs): never open a device or a FIFO here.
    if not stat.S_ISREG(os.stat(path).st_mode):
        return NOT_A_NAMESPACE
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        return CLONE_TYPES.get(fcntl.ioctl(fd, NS_GET_NSTYPE), NOT_A_NAMESPACE)
    except OSError:
        return NOT_A_NAMESPACE
    finally:
        os.close(fd)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def plan_namespaces(
    entries: list[dict[str, Any]],
    pod_pids: frozenset[int] = frozenset(),
    nstype: Callable[[str], str] = host_nstype,
) -> NamespacePlan:
    """Plan ``entries`` for the guest; ``pod_pids`` are the host PIDs that stand for
    this pod's containers (empty outside a pod). Raises InvalidArgument, one line."""
    guest: list[dict[str, Any]] = []
    joins: list[str] = []
    for i, ns in enumerate(entries):
        kind = ns.get("type") if isinstance(ns, dict) else None
        where = f"linux.namespaces[{i}] ({kind})"
        if not isinstance(kind, str) or kind not in OCI_TYPES:
            raise InvalidArgument(f"linux.namespaces[{i}]: unknown type {kind!r}")
        if kind == "network":
            continue
        path = ns.get("path")
        if not path:
            guest.append({"type": kind})
            continue
        if not isinstance(path, str):
            raise InvalidArgument(f"{where}: path must be a string")
        try:
            found = nstype(path)
        except FileNotFoundError:
            raise InvalidArgument(f"{where}: {path} does not exist") from None
        except OSError as exc:
            raise InvalidArgument(f"{where}: cannot open {path}: {exc.strerror}") from None
        if not found:
            raise InvalidArgument(f"{where}: {path} is not a namespace")
        if found != kind:
            raise InvalidArgument(
                f"{where}: {path} is {_article(found)} {found} namespace, not {kind}"
            )
        m = _PROC_NS.fullmatch(path)
        if m and int(m.group(1)) in pod_pids and kind in POD_JOINABLE:
            if kind not in joins:
                joins.append(kind)
            continue
        hint = " (a pod's containers may share its ipc, uts and pid namespaces)" if pod_pids else ""
        raise InvalidArgument(f"{where}: cannot join {path}: {NOT_COCOONS}{hint}")
    return NamespacePlan(guest, joins)
