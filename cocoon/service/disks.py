"""A container's virtio-blk disks on the host side: built, hot-plugged, removed.

The block rootfs (:mod:`cocoon.storage.blockroot`) and host block devices
(:mod:`cocoon.storage.devices`) reach QEMU as fds only (it is chrooted); what
was plugged is recorded so the container's delete unplugs it and removes its
files, and a failure half-way undoes what was done.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from cocoon.hypervisor.qemu import QemuVM
from cocoon.storage import blockroot, devices, hostmount

log = logging.getLogger("cocoon.disks")


@dataclass
class ContainerDisks:
    rootfs: blockroot.BlockRootfs | None = None
    plugged: list[tuple[str, int]] = field(default_factory=list)  # (node, fdset)

    async def plug(
        self, vm: QemuVM, disk: blockroot.Disk | devices.HostBlock, addr: str = ""
    ) -> None:
        if isinstance(disk, blockroot.Disk):
            fd, ro = blockroot.open_disk(disk), disk.readonly
        else:
            fd, ro = devices.open_block(disk), disk.readonly
        try:
            device = isinstance(disk, devices.HostBlock)
            fdset = await vm.hotplug_disk(disk.node, disk.serial, fd, ro, device, addr)
        finally:
            os.close(fd)  # QEMU has its own copy
        self.plugged.append((disk.node, fdset))

    async def build_rootfs(self, rootfs: blockroot.BlockRootfs, source: Path, local: bool) -> None:
        """The image of ``source`` (cloned where it lives: the host's namespace unless
        ``local``) and an empty scratch file."""
        self.rootfs = rootfs
        (tree,) = hostmount.clone_trees([hostmount.TreeRequest(str(source), not local)])
        try:
            hostmount.set_attrs(tree, True, hostmount.MS_PRIVATE)
            await blockroot.build_image(rootfs.image.path, tree)
        finally:
            hostmount.close_all([tree])
        blockroot.create_scratch(rootfs.scratch.path)

    async def remove(self, vm: QemuVM | None) -> None:
        """Unplug (the guest has unmounted them) and delete the files; never raises."""
        for node, fdset in reversed(self.plugged):
            if vm is not None:
                with contextlib.suppress(Exception):
                    await vm.unplug_disk(node, fdset)
        self.plugged.clear()
        if self.rootfs is not None:
            blockroot.remove_files(self.rootfs)
            self.rootfs = None
