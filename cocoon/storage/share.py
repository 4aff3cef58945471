"""The shared directory, Kata's proven layout, as a plan computed from a spec.

``<sandbox>/mounts/`` receives a bind of each container rootfs and bind-mount
source; ``<sandbox>/shared/`` is a read-only slave bind of it and is what the
guest sees, so the guest can change the host only through the writable binds
it was given. The plan (binds + the spec rewritten with guest paths) is plain
data; :func:`apply_binds` performs it inside the service's mount namespace.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cocoon.errors import InvalidArgument
from cocoon.oci.guestcg import guest_resources
from cocoon.oci.namespaces import host_nstype, plan_namespaces
from cocoon.storage import mounts

GUEST_SHARE = "/run/cocoon/shared"
# Filesystems the guest kernel provides itself; they never cross the share.
GUEST_LOCAL_TYPES = {"proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2", "shm"}
# Directories only Cocoon makes (mounts/, shared/, mounts/<cid>/): traversable, not
# listable. A container in a user namespace is set up by crun as its mapped root, a
# stranger to these root-owned dirs, on its way to its rootfs and bind sources; the
# sandbox dir above them stays 0700 on the host. Nothing of the bundle is loosened.
COCOON_DIR_MODE = 0o711


def make_cocoon_dir(path: Path) -> None:
    """Create (or re-mode) one of Cocoon's own share directories, whatever the umask."""
    path.mkdir(mode=COCOON_DIR_MODE, exist_ok=True)
    os.chmod(path, COCOON_DIR_MODE)


@dataclass(frozen=True)
class Bind:
    source: Path  # host path
    target: str  # relative to mounts/
    readonly: bool
    is_dir: bool


@dataclass(frozen=True)
class ContainerShare:
    binds: list[Bind]
    guest_rootfs: str
    guest_spec: dict[str, Any]
    pod_namespaces: list[str] = field(default_factory=list)  # joined from the pod's sandbox


def _is_bind(m: dict[str, Any]) -> bool:
    opts = m.get("options") or []
    return m.get("type") in ("bind", "rbind") or "bind" in opts or "rbind" in opts


def _share_name(source: Path) -> str:
    """The bind's name in the share: its source's last component (the guest's mountinfo
    shows it, and tools match mounts by it), if that is a safe single component."""
    name = source.name
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        return "bind"
    return name


def plan_container(
    cid: str,
    spec: dict[str, Any],
    rootfs: Path,
    readonly: bool,
    pod_pids: frozenset[int] = frozenset(),
    nstype: Callable[[str], str] = host_nstype,
) -> ContainerShare:
    """Binds for the container and its spec with guest paths; raises InvalidArgument.

    ``pod_pids``: the host PIDs standing for the containers of the pod this one
    joins (its namespace paths may name them; see cocoon.oci.namespaces).
    """
    binds = [Bind(rootfs, f"{cid}/rootfs", readonly, True)]
    guest = copy.deepcopy(spec)
    out_mounts = []
    for i, m in enumerate(guest.get("mounts") or []):
        if m.get("type") in GUEST_LOCAL_TYPES and not _is_bind(m):
            out_mounts.append(m)
            continue
        if not _is_bind(m):
            raise InvalidArgument(
                f"mounts[{i}] ({m['destination']}): type {m.get('type')!r} is not supported"
            )
        src = m.get("source")
        if not isinstance(src, str) or not src.startswith("/"):
            raise InvalidArgument(f"mounts[{i}] ({m['destination']}): source must be absolute")
        source = Path(src)
        if not source.exists():
            raise InvalidArgument(f"mounts[{i}] ({m['destination']}): source {src} does not exist")
        opts = m.get("options") or []
        ro = "ro" in opts
        rel = f"{cid}/{i}/{_share_name(source)}"
        binds.append(Bind(source, rel, ro, source.is_dir()))
        out_mounts.append({**m, "source": f"{GUEST_SHARE}/{rel}", "type": "bind"})
    guest["mounts"] = out_mounts
    proc = guest.get("process") or {}
    proc.pop("apparmorProfile", None)  # no LSM in the guest (warned at create)
    proc.pop("selinuxLabel", None)
    (guest.get("linux") or {}).pop("mountLabel", None)
    linux = guest.setdefault("linux", {})
    # The pod's network (joined or new) is the VM's own: containers share the
    # guest's network namespace, where the pod NICs are.
    namespaces = plan_namespaces(linux.get("namespaces") or [], pod_pids, nstype)
    linux["namespaces"] = namespaces.guest
    if "resources" in linux:
        linux["resources"] = guest_resources(linux["resources"])[0]  # warned at create
    return ContainerShare(binds, f"{GUEST_SHARE}/{cid}/rootfs", guest, namespaces.pod_joins)


class SharedDir:
    """``mounts/`` and ``shared/`` of one sandbox, inside its private mount namespace."""

    def __init__(self, sandbox_dir: Path) -> None:
        self.mounts_dir = sandbox_dir / "mounts"
        self.shared_dir = sandbox_dir / "shared"

    def setup(self) -> None:
        make_cocoon_dir(self.mounts_dir)
        make_cocoon_dir(self.shared_dir)
        mounts.bind(str(self.mounts_dir), str(self.mounts_dir), recursive=False)
        mounts.mount("none", str(self.mounts_dir), None, mounts.MS_SHARED)
        mounts.bind(str(self.mounts_dir), str(self.shared_dir))
        mounts.mount("none", str(self.shared_dir), None, mounts.MS_SLAVE)
        mounts.mount(
            "none",
            str(self.shared_dir),
            None,
            mounts.MS_BIND | mounts.MS_REMOUNT | mounts.MS_RDONLY,
        )

    def apply_binds(self, binds: list[Bind]) -> None:
        for cid in {b.target.split("/")[0] for b in binds}:
            make_cocoon_dir(self.mounts_dir / cid)
        for b in binds:
            target = self.mounts_dir / b.target
            make_cocoon_dir(target.parent)  # <cid>/, or <cid>/<i>/ of a named bind
            if b.is_dir:
                target.mkdir(exist_ok=True)
            else:
                target.touch(exist_ok=True)
            mounts.bind(str(b.source), str(target), readonly=b.readonly)

    def remove_binds(self, cid: str) -> None:
        base = self.mounts_dir / cid
        if not base.exists():
            return
        for top in sorted(base.iterdir(), reverse=True):
            # <cid>/rootfs, and <cid>/<i>/<name> (never descend into a bind).
            inner = list(top.iterdir()) if top.name.isdigit() and top.is_dir() else []
            for entry in [*inner, top]:
                with contextlib.suppress(OSError):
                    mounts.umount(str(entry))
                with contextlib.suppress(OSError):
                    entry.rmdir() if entry.is_dir() else entry.unlink()
        with contextlib.suppress(OSError):
            base.rmdir()
