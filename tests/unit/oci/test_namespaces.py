"""Namespace entries planned for the guest: a table of (spec entries, pod, result)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from cocoon.errors import InvalidArgument
from cocoon.oci.namespaces import host_nstype, plan_namespaces

QEMU = 4242  # the host PID the shim reports for every container of the pod
FILES = {
    f"/proc/{QEMU}/ns/ipc": "ipc",
    f"/proc/{QEMU}/ns/uts": "uts",
    f"/proc/{QEMU}/ns/pid": "pid",
    f"/proc/{QEMU}/ns/mnt": "mount",
    "/proc/1/ns/ipc": "ipc",
    "/proc/1/ns/pid": "pid",
    "/run/netns/x": "network",
    "/etc/hostname": "",
}


def probe(path: str) -> str:
    if path == "/proc/1/ns/uts":
        raise PermissionError(13, "Permission denied")
    if path not in FILES:
        raise FileNotFoundError(2, "No such file or directory")
    return FILES[path]


POD = frozenset({QEMU})
HOST: frozenset[int] = frozenset()  # outside a pod (the CLI)


def ns(kind: str, path: str = "") -> dict[str, str]:
    return {"type": kind, "path": path} if path else {"type": kind}


def pod(kind: str, name: str = "") -> dict[str, str]:
    return ns(kind, f"/proc/{QEMU}/ns/{name or kind}")


NOT_YET = "it is not a namespace of a running Cocoon container \\(not Cocoon's"
CASES: list[tuple[str, list[dict[str, str]], frozenset[int], Any]] = [
    ("new namespaces pass", [ns("pid"), ns("ipc")], HOST, ([ns("pid"), ns("ipc")], [])),
    ("network is the VM's", [ns("network", "/run/netns/x"), ns("network")], HOST, ([], [])),
    ("pod ipc uts pid", [pod("ipc"), pod("uts"), pod("pid")], POD, ([], ["ipc", "uts", "pid"])),
    ("pod pid, own mount", [ns("mount"), pod("pid")], POD, ([ns("mount")], ["pid"])),
    ("wrong type", [pod("uts", "ipc")], POD, "is an ipc namespace, not uts"),
    ("wrong type, no pod", [ns("pid", "/proc/1/ns/ipc")], HOST, "is an ipc namespace, not pid"),
    ("not a namespace", [ns("ipc", "/etc/hostname")], HOST, "/etc/hostname is not a namespace"),
    ("missing", [ns("ipc", "/nope")], HOST, "/nope does not exist"),
    ("host ipc", [ns("ipc", "/proc/1/ns/ipc")], HOST, NOT_YET),
    ("host pid in a pod", [ns("pid", "/proc/1/ns/pid")], POD, NOT_YET + ".* \\(a pod's"),
    ("pod mount namespace", [pod("mount", "mnt")], POD, "cannot join"),
    ("unreadable", [ns("uts", "/proc/1/ns/uts")], HOST, "cannot open /proc/1/ns/uts: Permission"),
    ("unknown type", [ns("bogus")], HOST, "unknown type 'bogus'"),
    ("index in the error", [ns("pid"), ns("ipc", "/nope")], HOST, r"linux.namespaces\[1\] \(ipc\)"),
]


@pytest.mark.parametrize(
    ("entries", "pod", "want"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_plan_namespaces(entries: list[dict[str, Any]], pod: frozenset[int], want: Any) -> None:
    if isinstance(want, str):
        with pytest.raises(InvalidArgument, match=want):
            plan_namespaces(entries, pod, probe)
        return
    plan = plan_namespaces(entries, pod, probe)
    assert (plan.guest, plan.pod_joins) == want


def test_host_nstype_reads_the_kernels_answer(tmp_path: Any) -> None:
    for name, kind in (
        ("ipc", "ipc"),
        ("uts", "uts"),
        ("mnt", "mount"),
        ("pid", "pid"),
        ("net", "network"),
    ):
        assert host_nstype(f"/proc/self/ns/{name}") == kind
    with pytest.raises(FileNotFoundError):
        host_nstype(str(tmp_path / "missing"))
    (tmp_path / "file").write_text("x")
    assert host_nstype(str(tmp_path / "file")) == ""
    os.mkfifo(tmp_path / "fifo")
    assert host_nstype(str(tmp_path / "fifo")) == ""  # and does not block
    assert host_nstype("/dev/null") == ""  # a device is never opened
