"""Everything a sandbox keeps on disk, in one place (recovery reads only this).

``<root>/<id>/state.json`` is written atomically (temp file, fsync, rename).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cocoon.errors import InvalidArgument, NotFound

UNIX_PATH_MAX = 107


@dataclass(frozen=True)
class SandboxPaths:
    root: Path
    id: str

    @property
    def dir(self) -> Path:
        return self.root / self.id

    def _p(self, name: str) -> Path:
        return self.dir / name

    state = property(lambda self: self._p("state.json"))
    service_sock = property(lambda self: self._p("service.sock"))
    stdio_sock = property(lambda self: self._p("stdio.sock"))
    qmp_sock = property(lambda self: self._p("qmp.sock"))
    agent_sock = property(lambda self: self._p("agent.sock"))
    vfs_sock = property(lambda self: self._p("vfs.sock"))
    console_log = property(lambda self: self._p("console.log"))
    qemu_log = property(lambda self: self._p("qemu.log"))
    service_log = property(lambda self: self._p("service.log"))
    virtiofsd_log = property(lambda self: self._p("virtiofsd.log"))

    def check_socket_lengths(self) -> None:
        longest = str(self.dir / "service.sock")
        if len(longest) > UNIX_PATH_MAX:
            raise InvalidArgument(
                f"state dir {self.dir} is too long for unix sockets; use a shorter --root"
            )


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


def save(paths: SandboxPaths, state: SandboxState) -> None:
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
