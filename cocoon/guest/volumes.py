"""Volumes the guest keeps itself: a kubelet emptyDir as a tmpfs of the guest.

The guest root is a read-only erofs and there is no guest disk, so both kinds
of emptyDir are a tmpfs: its pages are charged to the memory cgroup of the
container that writes them (inside the pod's guest cgroup), as the kubelet
charges a ``medium: Memory`` emptyDir. The first container of the pod that
mounts it makes it; the others find it mounted and share it.
"""

from __future__ import annotations

import os

from cocoon.guest import system
from cocoon.wire import agent as w

ROOT = "/run/cocoon/emptydir"


def tmpfs_options(vol: w.GuestVolume) -> tuple[str, str]:
    """(source name, mount data) of the volume's tmpfs; ValueError for a bad path."""
    parent, _, name = vol.path.rpartition("/")
    if parent != ROOT or name in ("", ".", "..") or "\0" in name:
        raise ValueError(f"guest volume {vol.path!r} is not a directory of {ROOT}")
    if vol.medium not in ("disk", "memory") or vol.size < 0:
        raise ValueError(f"guest volume {vol.path!r}: bad medium or size")
    data = "mode=0777" + (f",size={vol.size}" if vol.size else "")
    return f"emptydir-{vol.medium}", data


def subdir_parts(rel: str) -> list[str]:
    """The components of a subPath directory; ValueError unless relative and normal."""
    parts = rel.split("/")
    if not rel or any(p in ("", ".", "..") or "\0" in p for p in parts):
        raise ValueError(f"subPath {rel!r} is not a relative normal path")
    return parts


def ensure(vol: w.GuestVolume) -> None:
    """Mount the volume's tmpfs unless a container of the pod already did, then make
    its subPath directories (never following a symlink a container put there)."""
    source, data = tmpfs_options(vol)
    subdirs = [(subdir_parts(rel), mode & 0o7777) for rel, mode in vol.subdirs.items()]
    if not system.is_mounted(vol.path):
        os.makedirs(vol.path, mode=0o755, exist_ok=True)
        system.mount(source, vol.path, "tmpfs", system.MS_NOSUID | system.MS_NODEV, data)
    for parts, mode in subdirs:
        fd = os.open(vol.path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for i, name in enumerate(parts):
                try:
                    os.mkdir(name, mode if i == len(parts) - 1 else 0o755, dir_fd=fd)
                    if i == len(parts) - 1:
                        os.chmod(name, mode, dir_fd=fd)  # whatever the umask
                except FileExistsError:
                    pass
                flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
                nfd = os.open(name, flags, dir_fd=fd)
                os.close(fd)
                fd = nfd
        finally:
            os.close(fd)
