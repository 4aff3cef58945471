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


def ensure(vol: w.GuestVolume) -> None:
    """Mount the volume's tmpfs unless a container of the pod already did."""
    source, data = tmpfs_options(vol)
    if system.is_mounted(vol.path):
        return
    os.makedirs(vol.path, mode=0o755, exist_ok=True)
    system.mount(source, vol.path, "tmpfs", system.MS_NOSUID | system.MS_NODEV, data)
