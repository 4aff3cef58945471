"""Disks the host hot-plugs for a container, found by serial (guest side).

The block rootfs (cocoon.storage.blockroot): the read-only erofs image is the
overlay's lower layer; the scratch disk arrives as zeros and is formatted here
(the host never reads it back). Host block devices (cocoon.storage.devices)
get the guest disk's numbers written into the spec so crun makes their nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import shutil
import stat
from typing import Any

from cocoon.guest import system
from cocoon.guest.reaper import Reaper
from cocoon.ttrpc.status import Code, RPCError

BLOCK_DIR = "/run/cocoon/block"
SYS_BLOCK = "/sys/block"
DISK_WAIT = 15.0  # a hot-plugged disk appears within ~0.1 s (seconds under a loaded TCG)
MKFS = ["/usr/sbin/mke2fs", "-t", "ext4", "-q", "-F", "-m", "0", "-O", "^has_journal"]
MKFS_EXT = "lazy_itable_init=1,nodiscard"
# Guest /dev entries a privileged container does not get as nodes: crun makes
# its own ptmx, console and pts; shm and mqueue are mounts.
NOT_DEVICES = {"pts", "shm", "mqueue", "console", "ptmx"}


def find_by_serial(serial: str, sys_block: str = SYS_BLOCK) -> str | None:
    """The block device name (``vdb``) whose virtio serial is ``serial``."""
    try:
        names = os.listdir(sys_block)
    except OSError:
        return None
    for name in sorted(names):
        try:
            with open(os.path.join(sys_block, name, "serial"), encoding="ascii") as fh:
                if fh.read().strip() == serial:
                    return name
        except (OSError, UnicodeDecodeError):
            continue
    return None


async def wait_disk(serial: str, timeout: float = DISK_WAIT) -> str:
    """``/dev/<name>`` of the disk with ``serial`` once the kernel has it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        name = find_by_serial(serial)
        if name is not None and os.path.exists(f"/dev/{name}"):
            return f"/dev/{name}"
        if loop.time() > deadline:
            raise RPCError(Code.UNAVAILABLE, f"disk {serial} did not appear in the guest")
        await asyncio.sleep(0.02)


def dev_numbers(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return os.major(st.st_rdev), os.minor(st.st_rdev)


async def mount_block_rootfs(reaper: Reaper, cid: str, image: str, scratch: str) -> str:
    """Mount the image (ro), format and mount the scratch disk, and return the
    overlay of both, the container's rootfs."""
    base = os.path.join(BLOCK_DIR, cid)
    lower, upper_fs, root = (os.path.join(base, d) for d in ("lower", "scratch", "rootfs"))
    for d in (lower, upper_fs, root):
        os.makedirs(d, exist_ok=True)
    try:
        image_dev = await wait_disk(image)
        scratch_dev = await wait_disk(scratch)
        system.mount(image_dev, lower, "erofs", system.MS_RDONLY)
        code, out = await reaper.run([*MKFS, "-E", MKFS_EXT, scratch_dev])
        if code != 0:
            raise RPCError(Code.INTERNAL, f"formatting the scratch disk failed: {out.strip()}")
        system.mount(scratch_dev, upper_fs, "ext4", 0)
        upper, work = os.path.join(upper_fs, "upper"), os.path.join(upper_fs, "work")
        os.mkdir(upper)
        os.mkdir(work)
        top = os.stat(lower)  # the merged root shows the upper dir's owner and mode
        os.chown(upper, top.st_uid, top.st_gid)
        os.chmod(upper, stat.S_IMODE(top.st_mode))
        system.mount(
            "overlay", root, "overlay", 0, f"lowerdir={lower},upperdir={upper},workdir={work}"
        )
    except BaseException:
        unmount_block_rootfs(cid)
        raise
    return root


def unmount_block_rootfs(cid: str) -> None:
    base = os.path.join(BLOCK_DIR, cid)
    if not os.path.isdir(base):
        return
    for d in ("rootfs", "scratch", "lower"):
        target = os.path.join(base, d)
        while system.is_mounted(target):
            try:
                system.umount(target)
            except OSError:
                break
    with contextlib.suppress(OSError):
        shutil.rmtree(base)


def renumber(
    linux: dict[str, Any], numbers: dict[tuple[int, int], tuple[int, int]]
) -> dict[str, Any]:
    """``linux`` with block entries and cgroup rules naming a host device's numbers
    (``numbers`` keys) given the guest disk's."""
    linux = copy.deepcopy(linux)
    for dev in linux.get("devices") or []:
        key = (dev.get("major"), dev.get("minor"))
        if dev.get("type") == "b" and key in numbers:
            dev["major"], dev["minor"] = numbers[key]  # type: ignore[index]
    for rule in (linux.get("resources") or {}).get("devices") or []:
        key = (rule.get("major"), rule.get("minor"))
        if rule.get("type") == "b" and key in numbers:
            rule["major"], rule["minor"] = numbers[key]  # type: ignore[index]
    return linux


def guest_devices(root: str = "/dev") -> list[dict[str, Any]]:
    """Every char/block node of the guest's ``/dev``, as OCI ``linux.devices`` entries
    (what a privileged container gets in place of the host's)."""
    out: list[dict[str, Any]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        dirnames[:] = sorted(d for d in dirnames if rel_dir != "." or d not in NOT_DEVICES)
        for name in sorted(filenames):
            if rel_dir == "." and name in NOT_DEVICES:
                continue
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if not (stat.S_ISBLK(st.st_mode) or stat.S_ISCHR(st.st_mode)):
                continue
            out.append(
                {
                    "path": path,
                    "type": "b" if stat.S_ISBLK(st.st_mode) else "c",
                    "major": os.major(st.st_rdev),
                    "minor": os.minor(st.st_rdev),
                    "fileMode": stat.S_IMODE(st.st_mode),
                    "uid": st.st_uid,
                    "gid": st.st_gid,
                }
            )
    return out
