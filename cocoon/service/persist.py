"""Everything a sandbox keeps on disk, in one place (recovery reads only this).

``<root>/<id>/state.json`` is written atomically (temp file, fsync, rename).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cocoon.errors import InvalidArgument, NotFound

UNIX_PATH_MAX = 107
# Where sockets go when the state dir is too deep for a unix socket path
# (docker: <exec-root>/runtime-runc/moby/<64 hex>), as containerd does with
# /run/containerd/s/<hash>.
SHORT_SOCKET_ROOT = Path("/run/cocoon-s")


@dataclass(frozen=True)
class SandboxPaths:
    root: Path
    id: str
    # A member of another container's sandbox (cocoon.service.membership): the ID
    # whose state dir is the sandbox's home, where its service's sockets are.
    home: str = ""

    @property
    def dir(self) -> Path:
        return self.root / self.id

    @property
    def home_dir(self) -> Path:
        return self.root / (self.home or self.id)

    @property
    def is_member(self) -> bool:
        return bool(self.home) and self.home != self.id

    def _p(self, name: str) -> Path:
        return self.dir / name

    @property
    def sock_dir(self) -> Path:
        """The state dir, or a short hashed dir when socket paths would be too long."""
        home = self.home_dir
        if len(str(home / "service.sock")) <= UNIX_PATH_MAX:
            return home
        import hashlib

        return SHORT_SOCKET_ROOT / hashlib.sha256(str(home).encode()).hexdigest()[:20]

    def _s(self, name: str) -> Path:
        return self.sock_dir / name

    state = property(lambda self: self._p("state.json"))
    service_sock = property(lambda self: self._s("service.sock"))
    stdio_sock = property(lambda self: self._s("stdio.sock"))
    qmp_sock = property(lambda self: self._s("qmp.sock"))
    agent_sock = property(lambda self: self._s("agent.sock"))
    vfs_sock = property(lambda self: self._s("vfs.sock"))
    debug_sock = property(lambda self: self._s("debug.sock"))  # [agent] debug_console
    console_log = property(lambda self: self._p("console.log"))
    qemu_log = property(lambda self: self._p("qemu.log"))
    service_log = property(lambda self: self._p("service.log"))
    virtiofsd_log = property(lambda self: self._p("virtiofsd.log"))

    def make_sock_dir(self) -> None:
        if self.sock_dir != self.home_dir:
            self.sock_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def remove_sock_dir(self) -> None:
        if self.is_member:
            return  # the sandbox's, not this member's
        if self.sock_dir != self.dir and self.sock_dir.exists():
            remove_tree(self.sock_dir)

    def check_socket_lengths(self) -> None:
        longest = str(self.sock_dir / "service.sock")
        if len(longest) > UNIX_PATH_MAX:
            raise InvalidArgument(f"socket dir {self.sock_dir} is too long for unix sockets")


@dataclass
class SandboxState:
    id: str
    bundle: str
    created: str
    status: str = "creating"  # creating | created | running | stopped
    service_pid: int = 0
    qemu_pid: int = 0
    virtiofsd_pid: int = 0
    accel: str = ""
    exit_status: int | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    assets: dict[str, str] = field(default_factory=dict)
    cgroup: dict[str, Any] = field(default_factory=dict)  # the host cgroup plan
    netns: str = ""  # the pod network namespace the VM carries ("" = none)
    # Sharing a sandbox (cocoon.service.membership):
    stub_pid: int = 0  # the init's stub: what another spec's /proc/<pid>/ns/* names
    netns_id: list[int] = field(default_factory=list)  # (dev, ino) of the VM's netns
    sandbox: str = ""  # a member: the ID whose state dir is the sandbox's home
    deleted: bool = False  # the home's own container is deleted; members still live
    restore: str = ""  # the checkpoint image dir this sandbox is restored from
    listen: str = ""  # HOST:PORT a live migration's destination receives it on
    # A restored pod's home: the members (id, bundle at checkpoint) awaiting their restore.
    awaiting: list[dict[str, str]] = field(default_factory=list)


def save(paths: SandboxPaths, state: SandboxState) -> None:
    import tempfile

    data = json.dumps(dataclasses.asdict(state), indent=1).encode()
    fd, tmp = tempfile.mkstemp(dir=paths.dir, prefix=".state-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, paths.state)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def load(paths: SandboxPaths) -> SandboxState:
    """Read state.json; raise NotFound if the container does not exist."""
    try:
        raw = json.loads(paths.state.read_bytes())
    except FileNotFoundError:
        raise NotFound(f"container {paths.id!r} does not exist") from None
    except (OSError, ValueError) as exc:
        raise NotFound(f"container {paths.id!r} has unreadable state", exc) from exc
    known = {f.name for f in dataclasses.fields(SandboxState)}
    return SandboxState(**{k: v for k, v in raw.items() if k in known})


def remove_tree(path: Path) -> list[str]:
    """Delete a sandbox dir without ever crossing into a mount; return what was left.

    A bind mount of a container's rootfs under it must never be emptied, so
    anything on another device is skipped (and reported) instead of deleted.
    """
    left: list[str] = []
    try:
        top_dev = path.lstat().st_dev
    except FileNotFoundError:
        return left
    for dirpath, dirnames, filenames in os.walk(path, topdown=False):
        base = Path(dirpath)
        for name in filenames:
            with contextlib.suppress(FileNotFoundError):
                p = base / name
                if p.lstat().st_dev != top_dev:
                    left.append(str(p))
                    continue
                p.unlink()
        for name in dirnames:
            p = base / name
            try:
                if p.lstat().st_dev != top_dev or os.path.ismount(p):
                    left.append(str(p))
                    continue
                p.rmdir()
            except FileNotFoundError:
                continue
            except OSError:
                left.append(str(p))
    with contextlib.suppress(OSError):
        path.rmdir()
    return left
