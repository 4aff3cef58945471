"""Which template fits a VM plan, computed as plain data.

A template is identified by the QEMU command line it was booted with, with the
per-VM paths (sockets, console, shared directory, RAM file) replaced by fixed
placeholders, plus a fingerprint of every file QEMU reads (kernel, initrd, root
image, the QEMU binary). A clone must be started with exactly that command line
(other paths), so the key doubles as the compatibility check: anything that
changes the VM (assets rebuilt, machine type, CPU model, kernel parameters,
hotplug ceilings, Cocoon's own argv code) changes the key, and a stale template
is simply never found.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

from cocoon.hypervisor.cmdline import MEMORY_BLOCK_MIB, VMPlan, build_argv

KEY_VERSION = 1
PLACEHOLDER = Path("/cocoon-template")


@dataclass(frozen=True)
class Shape:
    vcpus: int
    memory_mib: int

    def fits_in(self, other: Shape) -> bool:
        return self.vcpus <= other.vcpus and self.memory_mib <= other.memory_mib


def generic_plan(plan: VMPlan) -> VMPlan:
    """``plan`` as a template of it would be booted, with placeholder paths."""
    share = plan.share
    if share is not None:
        share = replace(share, path=PLACEHOLDER / "share")
    return replace(
        plan,
        qmp_socket=PLACEHOLDER / "qmp.sock",
        agent_socket=PLACEHOLDER / "agent.sock",
        console_log=PLACEHOLDER / "console.log",
        share=share,
        memory_file=PLACEHOLDER / "memory",
        debug_socket=PLACEHOLDER / "debug.sock" if plan.debug_socket is not None else None,
        memory_shared=True,
        incoming=False,
    )


def fingerprint(path: Path | str) -> list[object]:
    """What changes when a file is replaced or rewritten (size, mtime, inode)."""
    st = os.stat(path)
    return [str(path), st.st_size, st.st_mtime_ns, st.st_ino]


def fingerprints(plan: VMPlan) -> list[list[object]]:
    """Fingerprints of the files a VM of ``plan`` reads; OSError if one is missing."""
    return [fingerprint(p) for p in (plan.qemu, plan.kernel, plan.initrd, plan.image)]


def template_argv(plan: VMPlan) -> list[str]:
    return build_argv(generic_plan(plan))


def template_key(plan: VMPlan, files: list[list[object]]) -> str:
    """The key of the template a VM of ``plan`` (its exact size) would be cloned from."""
    material = {"version": KEY_VERSION, "argv": template_argv(plan), "files": files}
    blob = json.dumps(material, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def can_grow(plan: VMPlan, start: Shape, want: Shape) -> bool:
    """Whether a VM of ``plan`` booted at ``start`` can hot-plug up to ``want``.

    ``plan`` carries the ceilings; growing needs pc's ACPI hotplug and room
    for the vCPUs, and a free DIMM slot for the memory.
    """
    if not start.fits_in(want):
        return False
    at_start = replace(plan, vcpus=start.vcpus, memory_mib=start.memory_mib)
    cpus_ok = start.vcpus == want.vcpus or (at_start.cpu_hotplug and want.vcpus <= plan.max_vcpus)
    grow = want.memory_mib - start.memory_mib
    dimm = -(-grow // MEMORY_BLOCK_MIB) * MEMORY_BLOCK_MIB  # one DIMM, whole blocks
    mem_ok = grow == 0 or (
        at_start.memory_hotplug and dimm <= plan.max_memory_mib - start.memory_mib
    )
    return cpus_ok and mem_ok
