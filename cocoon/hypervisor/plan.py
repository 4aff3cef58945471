"""A sandbox's VM plan from its resolved settings: one place for the mapping.

The sandbox service boots (or clones) with it, and ``cocoon factory init``
makes the template a default sandbox would be cloned from, so both must
compute the plan the same way.
"""

from __future__ import annotations

from pathlib import Path

from cocoon.assets import GuestAssets
from cocoon.config.settings import Settings
from cocoon.hypervisor.cmdline import SharePlan, VMPlan
from cocoon.hypervisor.hostclock import host_tsc_khz


def vm_plan(
    settings: Settings,
    assets: GuestAssets,
    accel: str,
    *,
    qmp_socket: Path,
    agent_socket: Path,
    console_log: Path,
    share: SharePlan | None,
    debug_socket: Path | None = None,
) -> VMPlan:
    """``debug_socket``: where the debug console's host end goes, if the settings want one."""
    dynamic = settings.dynamic
    return VMPlan(
        qemu=settings.qemu,
        kernel=assets.kernel,
        initrd=assets.initrd,
        image=assets.image,
        qmp_socket=qmp_socket,
        agent_socket=agent_socket,
        console_log=console_log,
        accel=accel,
        machine=settings.machine,
        vcpus=settings.vcpus,
        memory_mib=settings.memory_mib,
        share=share,
        extra_kernel_params=tuple(settings.kernel_params.split()),
        tcg_tb_size=settings.tcg_tb_size,
        free_page_reporting=settings.free_page_reporting,
        max_vcpus=settings.max_vcpus if dynamic else 0,
        max_memory_mib=settings.max_memory_mib if dynamic else 0,
        memory_slots=settings.memory_slots if dynamic else 0,
        tsc_khz=host_tsc_khz(),
        debug_socket=debug_socket if settings.debug_console else None,
    )
