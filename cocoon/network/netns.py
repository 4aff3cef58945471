"""Which network namespace a sandbox's VM carries, and which ones it must refuse.

* The spec names one (``linux.namespaces`` ``network`` with a ``path``: what
  podman, CNI and the CRI prepare): its interfaces go into the VM.
* The spec asks for a new one (no path): the stub's own, empty namespace; the
  VM gets loopback only.
* The spec has no network namespace, or names the host's: refused. A VM cannot
  share the host's network stack, and taking the host's interfaces would cut
  the host off.
* A namespace where a process that is not Cocoon's lives belongs to another
  container: refused the same way rather than stolen from it.

:func:`choose` and :func:`check` are pure; :func:`resolve` gathers the facts.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from cocoon.errors import CocoonError, InvalidArgument

CLONE_NEWNET = 0x40000000
T = TypeVar("T")
HOST_ADVICE = (
    "a VM cannot share the host's network stack; give the container a network "
    "namespace of its own (podman/docker: --network none or a bridge network; OCI: "
    'a {"type": "network"} namespace, with a "path" to a prepared namespace)'
)


@dataclass(frozen=True)
class Choice:
    kind: str  # "path" | "new" | "host"
    path: str = ""


@dataclass(frozen=True)
class Inhabitant:
    """A process living in the namespace."""

    pid: int
    comm: str
    cocoon: bool


def choose(spec: dict[str, Any]) -> Choice:
    """What the spec asks for; raises InvalidArgument on a malformed entry."""
    linux = spec.get("linux") or {}
    namespaces = linux.get("namespaces") or []
    if not isinstance(namespaces, list) or not all(isinstance(n, dict) for n in namespaces):
        raise InvalidArgument("linux.namespaces must be a list of objects")
    for ns in namespaces:
        if ns.get("type") != "network":
            continue
        path = ns.get("path") or ""
        if not isinstance(path, str) or (path and not path.startswith("/")):
            raise InvalidArgument(f"network namespace path {path!r} must be absolute")
        return Choice("path", path) if path else Choice("new")
    return Choice("host")


def check(
    choice: Choice,
    same_as_host: bool = False,
    inhabitants: tuple[Inhabitant, ...] = (),
) -> None:
    """Refuse the host's namespace and another container's; raises FailedPrecondition."""
    from cocoon.errors import FailedPrecondition

    if choice.kind == "host":
        raise FailedPrecondition(
            "the container asks for the host's network (the spec has no network "
            f"namespace): {HOST_ADVICE}"
        )
    if choice.kind != "path":
        return
    if same_as_host:
        raise FailedPrecondition(f"network namespace {choice.path} is the host's: {HOST_ADVICE}")
    foreign = [p for p in inhabitants if not p.cocoon]
    if foreign:
        p = foreign[0]
        raise FailedPrecondition(
            f"network namespace {choice.path} belongs to another container (process "
            f"{p.pid}, {p.comm}, lives in it) that is not Cocoon's: moving its interfaces "
            "into a VM would cut it off; give this container a namespace of its own, or run "
            "that container with Cocoon too (then this one joins its VM)"
        )


def is_cocoon_cmdline(argv: list[str]) -> bool:
    """A Cocoon process: the CLI (and the stubs it forks), the shim, the service."""
    for arg in argv[:3]:
        base = os.path.basename(arg)
        if base.startswith(("cocoon", "containerd-shim-cocoon")) or arg.startswith("cocoon."):
            return True
    return False


def _ns_id(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def inhabitants(path: str, proc: str = "/proc") -> tuple[Inhabitant, ...]:
    """The processes whose network namespace is the one at ``path``."""
    target = _ns_id(path)
    found = []
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            if _ns_id(f"{proc}/{entry}/ns/net") != target:
                continue
            with open(f"{proc}/{entry}/cmdline", "rb") as fh:
                argv = [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
            with open(f"{proc}/{entry}/comm", encoding="utf-8") as fh:
                comm = fh.read().strip()
        except OSError:
            continue  # gone, or a kernel thread
        found.append(Inhabitant(int(entry), comm, is_cocoon_cmdline(argv)))
    return tuple(found)


def resolve(spec: dict[str, Any]) -> str:
    """The namespace path the VM carries ("" for none); raises CocoonError to refuse."""
    choice = choose(spec)
    if choice.kind != "path":
        check(choice)
        return ""
    try:
        target = _ns_id(choice.path)
    except OSError as exc:
        raise InvalidArgument(f"network namespace {choice.path}", exc) from exc
    # The runtime's own namespace (where QEMU runs), and init's when we may look at it.
    host = {_ns_id("/proc/self/ns/net")}
    with contextlib.suppress(OSError):
        host.add(_ns_id("/proc/1/ns/net"))
    check(choice, target in host, inhabitants(choice.path))
    return choice.path


def in_netns(path: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a thread that has entered the namespace at ``path``.

    setns() changes only the calling thread, so the service's other threads
    (and QEMU, its child) stay in the host namespace; the thread ends there.
    Sockets and taps created by ``fn`` stay bound to the namespace.
    """
    import ctypes

    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise CocoonError(
                        f"cannot enter network namespace {path}: " f"{os.strerror(err)}"
                    )
            finally:
                os.close(fd)
            result.append(fn())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            error.append(exc)

    thread = threading.Thread(target=run, name="netns")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]
