"""Mount points in a read-only rootfs, made on the host before the guest sees it.

A rootfs that is read-only at the host side (cocoon.storage.hostmount) cannot
get the directories and files crun mounts volumes on, so they are made here,
as runc makes them before it remounts the root read-only. Paths come from the
bundle and the image may hold hostile symlinks: every lookup is resolved with
``openat2(RESOLVE_IN_ROOT)``, so nothing outside the rootfs is ever touched.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from pathlib import Path, PurePosixPath
from typing import Any

from cocoon.errors import InvalidArgument

SYS_OPENAT2 = 437
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def _open_in_root(root: int, rel: str) -> int:
    how = _OpenHow(os.O_PATH | os.O_CLOEXEC, 0, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
    fd = _libc.syscall(SYS_OPENAT2, root, (rel or ".").encode(), ctypes.byref(how), 24)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), rel)
    return int(fd)


def plan(
    mounts: list[dict[str, Any]], bind_targets: dict[str, int]
) -> list[tuple[str, int | None]]:
    """Mount points a read-only rootfs needs, in the guest spec's order: each destination
    with the index of the bind it receives (its source says file or directory), or None
    (a guest-local filesystem: a directory). Destinations under an earlier guest-local
    mount are left out: crun makes those inside that mount, in the guest."""
    out: list[tuple[str, int | None]] = []
    local: list[str] = []
    for m in mounts:
        dest = str(PurePosixPath("/", str(m.get("destination", ""))))
        if not any(dest.startswith(p.rstrip("/") + "/") for p in local):
            out.append((dest, bind_targets.get(str(m.get("source", "")))))
        if str(m.get("source", "")) not in bind_targets:
            local.append(dest)
    return out


def ensure(rootfs: Path, dest: str, is_dir: bool) -> None:
    """Make ``dest`` (and its parents) inside ``rootfs`` if it does not exist.

    Raises InvalidArgument naming the destination if it cannot be made.
    """
    parts = [p for p in PurePosixPath(dest).parts if p not in ("/", ".")]
    if not parts or ".." in parts:
        return
    root = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i in range(len(parts)):
            rel = "/".join(parts[: i + 1])
            try:
                os.close(_open_in_root(root, rel))
                continue
            except FileNotFoundError:
                pass
            parent = _open_in_root(root, "/".join(parts[:i]))
            try:
                if i == len(parts) - 1 and not is_dir:
                    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
                    os.close(os.open(parts[i], flags, 0o644, dir_fd=parent))
                else:
                    os.mkdir(parts[i], 0o755, dir_fd=parent)
            finally:
                os.close(parent)
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            return  # made meanwhile, or a dangling symlink: crun reports it in the guest
        raise InvalidArgument(f"cannot make the mount point {dest} in {rootfs}: {exc}") from exc
    finally:
        os.close(root)
