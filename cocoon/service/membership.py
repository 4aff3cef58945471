"""Containers of separate ``cocoon create`` calls that share one sandbox (one VM).

podman's pod members and docker's ``--network container:A`` name the namespaces
of a running container by ``/proc/<pid>/ns/<kind>``, with the PID the runtime
wrote to ``--pid-file`` (our stub), or name the pod's network namespace file
itself. When that container is Cocoon's, the new one is created inside its VM,
through its service (the service API's ``Join``): the VM's network is the pod's,
and the IPC, UTS and PID namespaces the spec names are joins of that container's
in the guest. The joiner has its own state dir (its ID, stub, exit status) whose
``state.json`` says ``sandbox``: the ID whose dir is the sandbox's *home* (its
service's sockets, QEMU's files).

Lifetimes, as runc's: a member comes and goes alone; the home's own container can
be deleted while members live (its record is marked ``deleted``, its dir stays as
the sandbox's home); the sandbox goes with the last container in it.

The decisions (:func:`match`, :func:`join_plan`, :func:`delete_plan`) are pure;
:func:`pods_in` gathers the facts from the runtime root.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cocoon.errors import CocoonError, InvalidArgument

_PROC_NS = re.compile(r"/proc/(\d+)/ns/[a-z_]+")
JOINABLE = ("ipc", "uts", "pid")  # joined from a container in the guest; network: the VM's
SANDBOX_ANNOTATION = "io.cocoon.sandbox"  # in state: the ID of the sandbox's home

NsId = tuple[int, int]


@dataclass(frozen=True)
class PodView:
    """One running sandbox of the runtime root, as its state dirs record it."""

    home: str
    stubs: dict[int, str]  # live stub PID → container ID (the home's and its members')
    netns_id: NsId | None = None  # the VM's network namespace (device, inode)


@dataclass(frozen=True)
class Match:
    home: str
    via: str  # the first path that named it, for messages


@dataclass(frozen=True)
class JoinPlan:
    """How the service creates a joiner in its VM."""

    pod_pids: frozenset[int]  # host PIDs whose /proc/<pid>/ns/* paths mean this sandbox
    target: str  # the container whose IPC/UTS/PID namespaces are joined ("" = none)
    new_network: bool  # the spec asks for a network namespace of its own (loopback only)


@dataclass(frozen=True)
class DeletePlan:
    home: str
    mark_deleted: bool  # the home's container goes, its dir stays: members live on
    last: bool  # nothing is left in the sandbox afterwards: it stops, the home goes


def _entries(spec: dict[str, Any]) -> list[dict[str, Any]]:
    namespaces = (spec.get("linux") or {}).get("namespaces") or []
    return [ns for ns in namespaces if isinstance(ns, dict)] if isinstance(namespaces, list) else []


def named_paths(spec: dict[str, Any]) -> list[tuple[str, str]]:
    """(type, path) of every namespace entry with a path."""
    return [
        (str(ns.get("type")), ns["path"])
        for ns in _entries(spec)
        if isinstance(ns.get("path"), str) and ns["path"]
    ]


def _pid_of(path: str) -> int:
    m = _PROC_NS.fullmatch(path)
    return int(m.group(1)) if m else 0


def match(
    spec: dict[str, Any], pods: Iterable[PodView], ns_id: Callable[[str], NsId | None]
) -> Match | None:
    """The sandbox whose namespaces the spec names (None: no Cocoon sandbox's).

    A ``/proc/<pid>/ns/*`` path names a sandbox when the PID is one of its stubs; a
    network path also when it is the namespace the VM carries. Raises
    InvalidArgument when the paths name two sandboxes (one VM cannot be in two).
    """
    pods = list(pods)
    found: list[Match] = []
    for kind, path in named_paths(spec):
        pid = _pid_of(path)
        for pod in pods:
            hit = pid in pod.stubs if pid else False
            if not hit and kind == "network" and pod.netns_id is not None:
                hit = ns_id(path) == pod.netns_id
            if hit:
                found.append(Match(pod.home, path))
    homes = list(dict.fromkeys(m.home for m in found))
    if len(homes) > 1:
        raise InvalidArgument(
            f"the spec's namespaces belong to two Cocoon sandboxes ({homes[0]}, {homes[1]}): "
            "a container can live in one VM only"
        )
    return found[0] if found else None


def join_plan(spec: dict[str, Any], stubs: dict[int, str]) -> JoinPlan:
    """Which container's namespaces a joiner takes in the guest; raises InvalidArgument."""
    targets: list[str] = []
    new_network = False
    for ns in _entries(spec):
        kind, path = ns.get("type"), ns.get("path")
        if kind == "network" and not path:
            new_network = True
        if kind in JOINABLE and isinstance(path, str) and _pid_of(path) in stubs:
            cid = stubs[_pid_of(path)]
            if cid not in targets:
                targets.append(cid)
    if len(targets) > 1:
        raise InvalidArgument(
            f"the spec joins namespaces of two containers ({targets[0]}, {targets[1]}): "
            "a container joins the IPC/UTS/PID namespaces of one container only"
        )
    return JoinPlan(frozenset(stubs), targets[0] if targets else "", new_network)


def without_pod_paths(
    spec: dict[str, Any], pod: PodView, ns_id: Callable[[str], NsId | None]
) -> dict[str, Any]:
    """The spec minus the namespace entries that name ``pod``: what stays is checked as
    for any container (another container's paths are still refused). A network path
    must be the pod's: the VM has one network. Raises InvalidArgument."""
    kept = []
    for ns in _entries(spec):
        path = ns.get("path")
        if not isinstance(path, str) or not path:
            kept.append(ns)
            continue
        pid = _pid_of(path)
        ours = pid in pod.stubs if pid else False
        if ns.get("type") == "network":
            if not ours and (pod.netns_id is None or ns_id(path) != pod.netns_id):
                raise InvalidArgument(
                    f"network namespace {path} is not the one of sandbox {pod.home} whose "
                    "other namespaces the spec joins: a VM has one network"
                )
            continue
        if not ours:
            kept.append(ns)
    linux = dict(spec.get("linux") or {})
    linux["namespaces"] = kept
    return {**spec, "linux": linux}


def delete_plan(cid: str, home: str, home_deleted: bool, members: Iterable[str]) -> DeletePlan:
    """What deleting ``cid`` does to its sandbox (``members``: the joiners' IDs)."""
    others = [m for m in members if m != cid]
    if cid == home:
        return DeletePlan(home, mark_deleted=bool(others), last=not others)
    return DeletePlan(home, mark_deleted=False, last=home_deleted and not others)


# -- facts -----------------------------------------------------------------------------


def ns_id(path: str) -> NsId | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _live_stub(pid: int) -> bool:
    """A stub still there (not a reused PID): alive and a Cocoon command line."""
    from cocoon.network.netns import is_cocoon_cmdline
    from cocoon.procutil import alive, cmdline

    if not alive(pid):
        return False
    argv = [a.decode(errors="replace") for a in cmdline(pid).split(b"\0") if a]
    return is_cocoon_cmdline(argv)


def states_in(root: Path) -> list[Any]:
    """Every readable container state of the runtime root."""
    from cocoon.service import persist

    out = []
    with contextlib.suppress(OSError):
        for entry in sorted(root.iterdir()):
            if entry.name.startswith("."):
                continue
            with contextlib.suppress(CocoonError):
                out.append(persist.load(persist.SandboxPaths(root, entry.name)))
    return out


def members_of(root: Path, home: str) -> list[str]:
    """The IDs of the containers living in ``home``'s sandbox besides its own."""
    return [st.id for st in states_in(root) if st.sandbox == home and st.id != home]


def pods_in(root: Path) -> list[PodView]:
    """The running sandboxes of the runtime root and the stubs that stand for them."""
    from cocoon.procutil import alive

    states = states_in(root)
    pods = []
    for home in states:
        if home.sandbox or not alive(home.service_pid):
            continue
        stubs: dict[int, str] = {}
        for st in states:
            ours = (st.id == home.id and not st.deleted) or st.sandbox == home.id
            if ours and st.stub_pid and _live_stub(st.stub_pid):
                stubs[st.stub_pid] = st.id
        ident = home.netns_id
        pods.append(PodView(home.id, stubs, (ident[0], ident[1]) if len(ident) == 2 else None))
    return pods


def record_stub(paths: Any, pid: int) -> None:
    """After ``create`` spawned the stub: what a later spec's paths will name."""
    from cocoon.service import persist

    st = persist.load(paths)
    st.stub_pid = pid
    ident = ns_id(f"/proc/{pid}/ns/net")
    st.netns_id = list(ident) if ident else []
    persist.save(paths, st)
