"""The resolved settings of one sandbox, stored in its state.json.

They come from the configuration file (``cocoon.config.loader``), the
container's annotations (``cocoon.config.annotations``) and the sizing
formulas (``cocoon.resources.sizing``); see :func:`resolve`.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from cocoon.errors import InvalidArgument

DEFAULT_TEMPLATE_DIR = "/var/lib/cocoon/templates"

if TYPE_CHECKING:
    from cocoon.config.schema import Config
    from cocoon.resources.sizing import SandboxSize


@dataclass(frozen=True)
class Settings:
    qemu: str = "/usr/bin/qemu-system-x86_64"
    machine: str = "pc"
    vcpus: int = 1
    memory_mib: int = 256
    # 9p by default: it is what VM templates can use (virtio-fs cannot serve
    # private clones, measured), and it needs no extra host process.
    shared_fs: str = "9p"
    virtiofsd: str = "/usr/lib/qemu/virtiofsd"
    # "block": container rootfs as an erofs image + scratch disk (cocoon.storage.blockroot).
    rootfs_mode: str = "share"
    agent_timeout: float = 60.0
    # Host memory the VMM needs beyond guest RAM (TCG's code buffer is most of
    # it: ~100 MB measured per VM, plus QEMU itself), added to the host
    # cgroup's limit.
    host_overhead_mib: int = 384
    kernel_params: str = ""  # appended to Cocoon's boot parameters
    tcg_tb_size: int = 0  # MiB of TCG translation cache; 0 = QEMU's default
    free_page_reporting: bool = False
    # Dynamic sizing: hot-plug up to these as containers come (pc only).
    dynamic: bool = False
    max_vcpus: int = 0
    max_memory_mib: int = 0
    memory_slots: int = 0
    # VM templates (cocoon.factory): clone instead of booting, where possible.
    template: bool = False
    template_dir: str = ""
    max_templates: int = 8  # the store's bound (cocoon.factory.bound)
    max_template_mib: int = 2048
    internetworking_model: str = "tcfilter"  # "none": the VM gets no pod NIC
    # [agent]: modules the agent loads at CreateSandbox; the guest clock's correction.
    kernel_modules: tuple[str, ...] = ()
    clock_sync_interval: float = 30.0  # seconds; 0 = never
    debug_console: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Settings:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if isinstance(known.get("kernel_modules"), list):
            known["kernel_modules"] = tuple(known["kernel_modules"])
        return cls(**known)


def resolve(config: Config, size: SandboxSize) -> Settings:
    """The settings one sandbox runs with: the effective configuration and its size."""
    hv = config.hypervisor
    qemu = hv.path
    if not os.path.isabs(qemu):
        found = shutil.which(qemu)
        if not found:
            raise InvalidArgument(f"QEMU binary {qemu!r} not found")
        qemu = found
    return Settings(
        qemu=qemu,
        machine=hv.machine_type,
        vcpus=size.vcpus,
        memory_mib=size.memory_mib,
        shared_fs="virtiofs" if hv.shared_fs == "virtio-fs" else "9p",
        virtiofsd=hv.virtio_fs_daemon,
        rootfs_mode=config.runtime.rootfs_mode,
        agent_timeout=config.agent.dial_timeout,
        host_overhead_mib=config.runtime.host_overhead_memory,
        kernel_params=hv.kernel_params,
        tcg_tb_size=hv.tcg_tb_size,
        free_page_reporting=hv.reclaim_guest_freed_memory,
        dynamic=not config.runtime.static_sandbox_resource_mgmt and hv.machine_type == "pc",
        max_vcpus=size.max_vcpus,
        max_memory_mib=size.max_memory_mib,
        memory_slots=hv.memory_slots,
        template=config.factory.enable_template,
        template_dir=config.factory.template_path or DEFAULT_TEMPLATE_DIR,
        max_templates=config.factory.max_templates,
        max_template_mib=config.factory.max_template_mib,
        internetworking_model=config.runtime.internetworking_model,
        kernel_modules=config.agent.kernel_modules,
        clock_sync_interval=config.agent.clock_sync_interval,
        debug_console=config.agent.debug_console,
    )


def host_memory_mib() -> int:
    with open("/proc/meminfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 0
