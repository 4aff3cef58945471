"""The block-device rootfs: the bundle rootfs as a read-only image on virtio-blk.

``[runtime] rootfs_mode = "block"`` (or the annotation
``io.cocoon.config.runtime.rootfs_mode``): the service builds an uncompressed
erofs image of the bundle rootfs in the sandbox dir, and creates a sparse raw
scratch file. Both reach the guest as virtio-blk disks hot-plugged over QMP as
fds (QEMU is chrooted: it opens no path), found by the agent by serial
(:mod:`cocoon.guest.disks`); the agent formats the scratch disk itself and
gives crun an overlay of the image (lower) and the scratch fs (upper). The host
writes the scratch file once, empty, and never reads what the guest wrote.

Why: block I/O instead of a file protocol (see docs/performance.md), and a VM
with no host-dir share can be snapshotted and migrated (QEMU 7.2 refuses with
a mounted 9p share; virtio-fs cannot migrate). The cost: the container's writes
are not in the bundle's rootfs on the host, so ``podman diff``, ``docker cp``
from a stopped container and commits do not see them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from cocoon.errors import CocoonError, InvalidArgument

MODES = ("share", "block")
# Sparse: only what the container writes takes host disk. ext4 in the guest.
SCRATCH_BYTES = 16 << 30
GUEST_BLOCK_DIR = "/run/cocoon/block"
MKFS_EROFS = "mkfs.erofs"


@dataclass(frozen=True)
class Disk:
    """One virtio-blk disk: its QEMU node/device id, the serial the guest finds it by
    (virtio-blk keeps 20 bytes), the host file or device, and how it is opened."""

    node: str
    serial: str
    path: Path
    readonly: bool


@dataclass(frozen=True)
class BlockRootfs:
    image: Disk
    scratch: Disk
    guest_rootfs: str  # where the agent mounts the overlay


def plan(disks_dir: Path, cid: str, index: int) -> BlockRootfs:
    """The two disks of container ``cid``, the ``index``-th of its sandbox.

    Serials and node names come from the index, not the id (64 characters for
    Kubernetes): ``cocoon-r<index>`` is the image, ``cocoon-s<index>`` the scratch.
    """
    return BlockRootfs(
        image=Disk(f"rootimg{index}", f"cocoon-r{index}", disks_dir / f"{index}.erofs", True),
        scratch=Disk(f"rootscr{index}", f"cocoon-s{index}", disks_dir / f"{index}.scratch", False),
        guest_rootfs=f"{GUEST_BLOCK_DIR}/{cid}/rootfs",
    )


def mkfs_argv(image: Path, source: str) -> list[str]:
    """Uncompressed (fast to build, fast to read under TCG), owners, modes, xattrs
    and mtimes kept as the bundle has them."""
    return [MKFS_EROFS, "--quiet", "--preserve-mtime", str(image), source]


async def build_image(image: Path, tree_fd: int) -> None:
    """Write the erofs image of the detached rootfs tree ``tree_fd`` (an
    ``open_tree`` clone, so the rootfs is read in the namespace it was cloned in).

    mkfs.erofs resolves its source to a path (a detached tree's is "/"), so the
    tree is attached for the build on ``<image>.src`` in the service's private
    mount namespace, and detached after. Raises CocoonError with mkfs.erofs's
    last line."""
    from cocoon.storage import hostmount, mounts

    image.parent.mkdir(mode=0o700, exist_ok=True)
    src = image.with_suffix(".src")
    src.mkdir(mode=0o700)
    try:
        hostmount.attach(tree_fd, str(src))
        try:
            await _mkfs(image, src)
        finally:
            with contextlib.suppress(OSError):
                mounts.umount(str(src))
    finally:
        with contextlib.suppress(OSError):
            src.rmdir()


async def _mkfs(image: Path, src: Path) -> None:
    try:
        proc = await asyncio.create_subprocess_exec(
            *mkfs_argv(image, str(src)),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    except OSError as exc:
        raise CocoonError(f"cannot run {MKFS_EROFS} for the block rootfs", exc) from exc
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        with contextlib.suppress(OSError):
            image.unlink()
        lines = out.decode(errors="replace").strip().splitlines()
        raise CocoonError(
            f"{MKFS_EROFS} failed ({proc.returncode}): {lines[-1] if lines else 'no output'}"
        )
    os.chmod(image, 0o600)


def create_scratch(path: Path, size: int = SCRATCH_BYTES) -> None:
    """A new sparse file of ``size`` bytes: zeros, for the guest to format."""
    path.parent.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def open_disk(disk: Disk) -> int:
    """The fd QEMU gets for ``disk`` (O_RDONLY for a read-only one)."""
    flags = (os.O_RDONLY if disk.readonly else os.O_RDWR) | os.O_CLOEXEC
    try:
        return os.open(disk.path, flags)
    except OSError as exc:
        raise InvalidArgument(f"cannot open {disk.path}: {exc.strerror}") from exc


def remove_files(rootfs: BlockRootfs) -> None:
    for disk in (rootfs.image, rootfs.scratch):
        with contextlib.suppress(FileNotFoundError):
            disk.path.unlink()


def check_mode(mode: str, machine: str) -> None:
    """Block disks are hot-plugged on PCI: the ``pc`` machine only."""
    if mode == "block" and machine != "pc":
        raise InvalidArgument(f"rootfs_mode = block needs machine_type = pc (not {machine})")
