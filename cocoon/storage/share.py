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
import dataclasses
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cocoon.errors import InvalidArgument
from cocoon.oci.guestcg import guest_resources
from cocoon.oci.namespaces import host_nstype, plan_namespaces
from cocoon.storage import hostmount, mounts, volumes

GUEST_SHARE = "/run/cocoon/shared"
# File binds copied into the guest (block rootfs mode) land here.
GUEST_FILES = "/run/cocoon/files"
# Larger files stay shared: a copy is a snapshot, fine for /etc/hosts, not for data.
COPY_FILE_MAX = 1 << 20
COPY_TOTAL_MAX = 2 << 20  # all of a container's copies travel in one agent request
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
    # Host mounts made later under a shared source reach the guest (runc's
    # default for binds); "rprivate"/"private" in the options stops that.
    propagate: bool = True
    # A kubelet volume's source: resolved beneath this root (cocoon.storage.volumes).
    beneath: str = ""
    rest: str = ""


@dataclass(frozen=True)
class EmptyDir:
    """A kubelet emptyDir, kept in the guest (a tmpfs there) instead of crossing the share."""

    source: Path  # the kubelet's host directory (only probed: tmpfs or not)
    guest_path: str
    size: int = 0  # bytes (0: the guest tmpfs default)
    # subPath directories (relative path → mode) the guest makes in it.
    subdirs: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class ContainerShare:
    binds: list[Bind]
    guest_rootfs: str
    guest_spec: dict[str, Any]
    pod_namespaces: list[str] = field(default_factory=list)  # joined from the pod's sandbox
    emptydirs: list[EmptyDir] = field(default_factory=list)


def _is_bind(m: dict[str, Any]) -> bool:
    opts = m.get("options") or []
    return m.get("type") in ("bind", "rbind") or "bind" in opts or "rbind" in opts


def _propagates(opts: list[str]) -> bool:
    return not ({"private", "rprivate"} & set(opts))


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
    binds = [Bind(rootfs, f"{cid}/rootfs", readonly)]
    guest = copy.deepcopy(spec)
    out_mounts = []
    emptydirs: list[EmptyDir] = []
    annotations = spec.get("annotations") or {}
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
        # Whether it exists (and is a file or a directory) is seen where it is
        # cloned, in the host's current mount namespace (SharedDir.apply_binds).
        source = Path(src)
        opts = m.get("options") or []
        ro = "ro" in opts
        kind = volumes.classify(src)
        if kind.kind == "emptydir":
            try:
                size = volumes.emptydir_size(annotations, kind.volume)
            except ValueError as exc:
                raise InvalidArgument(
                    f"annotation {volumes.SIZE_ANNOTATION_PREFIX}{kind.volume}: {exc}"
                ) from exc
            ed = EmptyDir(source, volumes.guest_emptydir(src, kind.volume), size)
            if ed not in emptydirs:
                emptydirs.append(ed)
            out_mounts.append({**m, "source": ed.guest_path, "type": "bind"})
            continue
        rel = f"{cid}/{i}/{_share_name(source)}"
        binds.append(Bind(source, rel, ro, _propagates(opts), kind.beneath, kind.rest))
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
    return ContainerShare(
        binds, f"{GUEST_SHARE}/{cid}/rootfs", guest, namespaces.pod_joins, emptydirs
    )


def _find_dir(root: int, want: os.stat_result, depth: int = 8, budget: int = 4096) -> str | None:
    """The path below the tree ``root`` of the directory ``want`` is (by device and inode),
    searched breadth-first without following symlinks; None if not found in budget."""
    queue: list[tuple[int, str]] = [(os.open(".", os.O_PATH | os.O_CLOEXEC, dir_fd=root), "")]
    try:
        while queue and budget > 0:
            fd, rel = queue.pop(0)
            try:
                if (rel.count("/") + 1 if rel else 0) >= depth:
                    continue  # its children would be deeper than ``depth`` components
                dfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
                try:
                    names = os.listdir(dfd)
                finally:
                    os.close(dfd)
                for name in names:
                    budget -= 1
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    if not stat.S_ISDIR(st.st_mode):
                        continue
                    sub = f"{rel}/{name}" if rel else name
                    if (st.st_dev, st.st_ino) == (want.st_dev, want.st_ino):
                        return sub
                    flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
                    queue.append((os.open(name, flags, dir_fd=fd), sub))
            finally:
                os.close(fd)
    finally:
        for fd, _ in queue:
            os.close(fd)
    return None


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

    def apply_binds(
        self,
        binds: list[Bind],
        local: frozenset[Path] = frozenset(),
        guest_mounts: list[dict[str, Any]] | None = None,
    ) -> None:
        """Attach each bind's source under ``mounts/`` (see :mod:`hostmount`).

        Sources are resolved in the host's current mount namespace, except those
        in ``local`` (mounted by this process itself). A read-only rootfs
        (``binds[0]``) first gets the mount points of ``guest_mounts`` (the guest
        spec's mounts) made on the host. Raises InvalidArgument naming a source
        that cannot be cloned or a mount point that cannot be made; nothing is
        attached then.
        """
        for cid in {b.target.split("/")[0] for b in binds}:
            make_cocoon_dir(self.mounts_dir / cid)
        requests = [
            hostmount.TreeRequest(str(b.source), b.source not in local, b.beneath, b.rest)
            for b in binds
        ]
        trees = hostmount.clone_trees(requests)
        try:
            for b, tree in zip(binds, trees, strict=True):
                prop = hostmount.MS_SLAVE if b.propagate else hostmount.MS_PRIVATE
                hostmount.set_attrs(tree, b.readonly, prop)
            if guest_mounts and binds and binds[0].readonly:
                self._make_mountpoints(binds, trees, guest_mounts)
            for i, (b, tree) in enumerate(zip(binds, trees, strict=True)):
                target = self.mounts_dir / b.target
                make_cocoon_dir(target.parent)  # <cid>/, or <cid>/<i>/ of a named bind
                if stat.S_ISDIR(os.fstat(tree).st_mode):
                    target.mkdir(exist_ok=True)
                else:
                    target.touch(exist_ok=True)
                try:
                    hostmount.attach(tree, str(target))
                except OSError as exc:
                    for done in binds[:i]:
                        with contextlib.suppress(OSError):
                            mounts.umount(str(self.mounts_dir / done.target))
                    raise InvalidArgument(f"cannot attach {b.source}: {exc.strerror}") from exc
        finally:
            hostmount.close_all(trees)

    @staticmethod
    def copy_files(
        binds: list[Bind], spec: dict[str, Any], local: frozenset[Path] = frozenset()
    ) -> tuple[list[Bind], list[tuple[str, bytes, int]], dict[str, Any]]:
        """Take the regular-file binds of at most COPY_FILE_MAX bytes (an engine's
        /etc/hosts, resolv.conf, hostname, .containerenv) by value: (binds left,
        [(guest path, content, mode)], ``spec`` with those mounts pointing at the
        copies under GUEST_FILES). A VM with nothing mounted from the host can be
        checkpointed; the price is that later host edits of those files are not
        seen (documented). Raises InvalidArgument naming a source that is gone."""
        if not binds:
            return binds, [], spec
        requests = [
            hostmount.TreeRequest(str(b.source), b.source not in local, b.beneath, b.rest)
            for b in binds
        ]
        trees = hostmount.clone_trees(requests)
        kept: list[Bind] = []
        files: list[tuple[str, bytes, int]] = []
        moved: dict[str, str] = {}
        budget = COPY_TOTAL_MAX
        try:
            for b, tree in zip(binds, trees, strict=True):
                st = os.fstat(tree)
                if not stat.S_ISREG(st.st_mode) or st.st_size > min(COPY_FILE_MAX, budget):
                    kept.append(b)
                    continue
                budget -= st.st_size
                fd = os.open(f"/proc/self/fd/{tree}", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    data = os.read(fd, COPY_FILE_MAX + 1)[:COPY_FILE_MAX]
                finally:
                    os.close(fd)
                guest = f"{GUEST_FILES}/{b.target}"
                files.append((guest, data, stat.S_IMODE(st.st_mode)))
                moved[f"{GUEST_SHARE}/{b.target}"] = guest
        finally:
            hostmount.close_all(trees)
        if not moved:
            return binds, [], spec
        out = copy.deepcopy(spec)
        for m in out.get("mounts") or []:
            if m.get("source") in moved:
                m["source"] = moved[m["source"]]
        return kept, files, out

    @staticmethod
    def shm_in_guest(
        binds: list[Bind], spec: dict[str, Any], local: frozenset[Path] = frozenset()
    ) -> tuple[list[Bind], dict[str, Any]]:
        """Serve an engine's ``/dev/shm`` bind (podman's and docker's ``userdata/shm``:
        an empty host tmpfs made for the container alone) by a tmpfs of the same size
        in the guest: (binds left, ``spec`` with those mounts made tmpfs). Block rootfs
        mode, where a VM with no host directory mounted can be checkpointed; the host
        tmpfs was only ever seen by the container, so nothing is lost."""
        wanted = {
            m.get("source")
            for m in spec.get("mounts") or []
            if m.get("destination", "").rstrip("/") == "/dev/shm"
        }
        shm = [b for b in binds if f"{GUEST_SHARE}/{b.target}" in wanted and not b.beneath]
        if not shm:
            return binds, spec
        requests = [hostmount.TreeRequest(str(b.source), b.source not in local) for b in shm]
        trees = hostmount.clone_trees(requests)
        sizes: dict[str, int] = {}
        try:
            for b, tree in zip(shm, trees, strict=True):
                size = _empty_tmpfs_size(tree)
                if size >= 0:
                    sizes[f"{GUEST_SHARE}/{b.target}"] = size
        finally:
            hostmount.close_all(trees)
        kept = [b for b in binds if f"{GUEST_SHARE}/{b.target}" not in sizes]
        return kept, shm_mounts_as_tmpfs(spec, sizes) if sizes else spec

    @staticmethod
    def emptydir_subpaths(plan: ContainerShare, annotations: dict[str, Any]) -> ContainerShare:
        """``plan`` with each kubelet subPath of an emptyDir served from the guest copy.

        The kubelet hands a subPath over as its own bind of the subdirectory it made in
        the host emptyDir (``volume-subpaths/<name>/...``); served from the host it would
        not see what the pod's other containers write in the guest. The subdirectory is
        found by its inode in the host emptyDir (which holds nothing but the kubelet's
        subPath directories: the data is in the guest), then made in the guest copy.
        """
        found: dict[int, tuple[Path, str, str, int]] = {}
        for i, b in enumerate(plan.binds[1:], 1):
            ed = volumes.emptydir_of_subpath(str(b.source))
            if ed is None:
                continue
            try:
                trees = hostmount.clone_trees(
                    [
                        hostmount.TreeRequest(str(b.source), True, b.beneath, b.rest),
                        hostmount.TreeRequest(ed[0]),
                    ]
                )
            except InvalidArgument:
                continue  # no emptyDir of that name: another kind of volume
            try:
                rel = _find_dir(trees[1], os.fstat(trees[0]))
                mode = stat.S_IMODE(os.fstat(trees[0]).st_mode)
            finally:
                hostmount.close_all(trees)
            if rel is not None:
                found[i] = (Path(ed[0]), ed[1], rel, mode)
        if not found:
            return plan
        binds = [b for i, b in enumerate(plan.binds) if i not in found]
        emptydirs = {e.guest_path: e for e in plan.emptydirs}
        spec = copy.deepcopy(plan.guest_spec)
        for i, (source, name, rel, mode) in found.items():
            guest = volumes.guest_emptydir(str(source), name)
            old = emptydirs.get(guest) or EmptyDir(
                source, guest, volumes.emptydir_size(annotations, name)
            )
            emptydirs[guest] = dataclasses.replace(old, subdirs=(*old.subdirs, (rel, mode)))
            shared = f"{GUEST_SHARE}/{plan.binds[i].target}"
            for m in spec.get("mounts") or []:
                if m.get("source") == shared:
                    m["source"] = f"{guest}/{rel}"
        return dataclasses.replace(
            plan, binds=binds, guest_spec=spec, emptydirs=list(emptydirs.values())
        )

    @staticmethod
    def probe_emptydirs(emptydirs: list[EmptyDir]) -> list[str]:
        """Each emptyDir's medium as the kubelet made it: "memory" if its host source is
        a tmpfs mount (``medium: Memory``), else "disk". Raises InvalidArgument naming a
        source that does not exist (as for a bind)."""
        if not emptydirs:
            return []
        trees = hostmount.clone_trees([hostmount.TreeRequest(str(e.source)) for e in emptydirs])
        try:
            return [
                "memory" if hostmount.fs_type(t) == hostmount.TMPFS_MAGIC else "disk" for t in trees
            ]
        finally:
            hostmount.close_all(trees)

    @staticmethod
    def _make_mountpoints(
        binds: list[Bind], trees: list[int], guest_mounts: list[dict[str, Any]]
    ) -> None:
        from cocoon.storage import mountpoints

        by_source = {f"{GUEST_SHARE}/{b.target}": i for i, b in enumerate(binds)}
        for dest, idx in mountpoints.plan(guest_mounts, by_source):
            is_dir = idx is None or stat.S_ISDIR(os.fstat(trees[idx]).st_mode)
            mountpoints.ensure(binds[0].source, dest, is_dir)

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


def shm_mounts_as_tmpfs(spec: dict[str, Any], sizes: dict[str, int]) -> dict[str, Any]:
    """``spec`` with each mount whose source is in ``sizes`` (guest share paths) made a
    guest tmpfs of that size (0: the guest's default), its nosuid/noexec/nodev kept."""
    out = copy.deepcopy(spec)
    keep = {"nosuid", "noexec", "nodev", "ro"}
    for m in out.get("mounts") or []:
        size = sizes.get(m.get("source"))
        if size is None:
            continue
        opts = [o for o in m.get("options") or [] if o in keep]
        opts.append("mode=1777")
        if size > 0:
            opts.append(f"size={size}")
        m.update(type="tmpfs", source="shm", options=opts)
    return out


def _empty_tmpfs_size(tree: int) -> int:
    """The size (bytes) of the empty tmpfs directory ``tree`` (an open tree), or -1
    if it is something else or holds anything."""
    try:
        if hostmount.fs_type(tree) != hostmount.TMPFS_MAGIC:
            return -1
        fd = os.open(f"/proc/self/fd/{tree}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if os.listdir(fd):
                return -1
            st = os.fstatvfs(fd)
        finally:
            os.close(fd)
    except OSError:
        return -1
    return st.f_blocks * st.f_frsize
