"""QEMU command lines computed as plain data from a :class:`VMPlan`.

Only the devices a sandbox needs, each explained where it is added. The plan
is generic on purpose: it knows nothing of containers, so that a VM booted
from it could be a template (the per-sandbox share is the one exception, and
it is a 9p device the guest mounts only when told to).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from cocoon.hypervisor.hostclock import kernel_params as clock_params

# Boot tuning measured under TCG (shared/facts/host.md §2): skip crypto self
# tests and the W+X check, one UART. The TSC frequency comes from the host
# (VMPlan.tsc_khz, cocoon.hypervisor.hostclock).
BASE_KERNEL_PARAMS = (
    "console=ttyS0 quiet panic=-1 cryptomgr.notests "
    "rodata=off tsc=reliable mitigations=off audit=0 nowatchdog i8042.noaux i8042.nokbd "
    "i8042.nopnp 8250.nr_uarts=1 random.trust_cpu=on cocoon.root=/dev/vda"
)
SHARE_TAG = "cocoon"
DEBUG_PORT_NAME = "cocoon.debug"
MEMORY_BLOCK_MIB = 128  # x86 guests online hot-added memory in 128 MiB blocks
MACHINES = ("pc", "microvm")
# Host CPU flags the guest's emulated CPU offers too, when the host has them:
# pdpe1gb gives the guest 1 GiB pages, so hugetlb limits of both sizes apply.
GUEST_CPU_FLAGS = ("pdpe1gb",)


@functools.cache
def host_cpu_features(cpuinfo: str = "/proc/cpuinfo") -> tuple[str, ...]:
    """Which of :data:`GUEST_CPU_FLAGS` the host CPU has (read once per process)."""
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as fh:
            flags = next((ln.split(":", 1)[1].split() for ln in fh if ln.startswith("flags")), [])
    except OSError:
        return ()
    return tuple(f for f in GUEST_CPU_FLAGS if f in flags)


@dataclass(frozen=True)
class SharePlan:
    """The sandbox's shared directory: 9p (QEMU serves it) or virtio-fs (virtiofsd does)."""

    kind: str  # "9p" | "virtiofs"
    path: Path | None = None  # 9p: the host directory
    socket: Path | None = None  # virtiofs: virtiofsd's vhost-user socket
    tag: str = SHARE_TAG


@dataclass(frozen=True)
class NicArg:
    """A pod NIC on the command line (microvm only: pc hot-plugs NICs over QMP)."""

    netdev_id: str
    device_id: str
    fd: int  # an open tap fd that QEMU inherits
    mac: str


@dataclass(frozen=True)
class VMPlan:
    qemu: str
    kernel: Path
    initrd: Path
    image: Path
    qmp_socket: Path
    agent_socket: Path
    console_log: Path
    accel: str = "tcg"
    machine: str = "pc"
    vcpus: int = 1
    memory_mib: int = 256
    share: SharePlan | None = None
    extra_kernel_params: tuple[str, ...] = field(default_factory=tuple)
    tcg_tb_size: int = 0  # MiB; 0 = QEMU's default (TCG only)
    free_page_reporting: bool = False
    # Hotplug ceilings (pc only): more vCPU slots and DIMM room than booted with.
    max_vcpus: int = 0
    max_memory_mib: int = 0
    memory_slots: int = 0
    # VM templates: guest RAM in a file, shared (the template, which writes it)
    # or private copy-on-write (a clone); a clone waits for its device state.
    memory_file: Path | None = None
    memory_shared: bool = False
    incoming: bool = False
    # Guest RAM from a plain ``memory-backend-ram`` object named ``mem``: a restore of a
    # template clone (its RAM block is "mem", not "pc.ram") without the template file.
    memory_ram_object: bool = False
    # ``-S``: stay paused after the incoming migration until QMP ``cont`` (a live
    # migration's destination: its disk export is stopped, its network moved first).
    start_paused: bool = False
    nics: tuple[NicArg, ...] = ()
    # Extra flags of the emulated CPU (TCG); part of the argv, so of a template's key.
    cpu_features: tuple[str, ...] = field(default_factory=host_cpu_features)
    # The host's TSC frequency (kHz): the guest's clock runs at the host's rate
    # only if its kernel is told (tsc_early_khz=, lpj=). 0: let it calibrate.
    tsc_khz: int = 0
    # ``[agent] debug_console``: a virtio console port whose host end is this
    # socket; the guest runs a root shell on it (cocoon debug-console).
    debug_socket: Path | None = None

    @property
    def cpu_hotplug(self) -> bool:
        return self.machine == "pc" and self.max_vcpus > self.vcpus

    @property
    def memory_hotplug(self) -> bool:
        return (
            self.machine == "pc" and self.memory_slots > 0 and self.max_memory_mib > self.memory_mib
        )

    def __post_init__(self) -> None:
        if self.memory_file is not None and self.share is not None and self.share.kind != "9p":
            raise ValueError("a file-backed (template) VM cannot use virtio-fs")
        if self.machine not in MACHINES:
            raise ValueError(f"unsupported machine type {self.machine!r}")
        if self.accel not in ("tcg", "kvm"):
            raise ValueError(f"unsupported accelerator {self.accel!r}")


def _hotplug_params(plan: VMPlan) -> list[str]:
    """Hot-added memory comes online by itself; ``maxmem`` must not force a 64 MiB SWIOTLB."""
    return ["memhp_default_state=online", "swiotlb=noforce"] if plan.memory_hotplug else []


def _bus(plan: VMPlan, device: str) -> str:
    """virtio devices are PCI on pc and MMIO on microvm."""
    return f"{device}-{'pci' if plan.machine == 'pc' else 'device'}"


def _accel(plan: VMPlan) -> str:
    if plan.accel == "tcg" and plan.tcg_tb_size:
        return f"tcg,tb-size={plan.tcg_tb_size}"
    return plan.accel


def _cpu(plan: VMPlan) -> str:
    if plan.accel == "kvm":
        return "host"
    # qemu64 lacks ARAT, so a microvm guest (no HPET) keeps a 250 Hz periodic
    # tick: 3-6 % of a host core per idle VM; TCG implements ARAT (measured).
    flags = ("arat",) if plan.machine == "microvm" else ()
    return ",".join(["qemu64", *(f"+{f}" for f in (*flags, *plan.cpu_features))])


def build_argv(plan: VMPlan) -> list[str]:
    """The full QEMU argv for ``plan``."""
    virtiofs = plan.share is not None and plan.share.kind == "virtiofs"
    machine = plan.machine
    # Guest RAM from the "mem" backend object (pc + virtio-fs uses a NUMA node instead).
    if (
        plan.memory_file is not None
        or plan.memory_ram_object
        or (plan.machine == "microvm" and virtiofs)
    ):
        machine += ",memory-backend=mem"
    argv = [
        plan.qemu,
        "-name",
        "cocoon",
        "-accel",
        _accel(plan),
        "-M",
        machine,
        "-cpu",
        _cpu(plan),
        "-smp",
        f"{plan.vcpus},maxcpus={plan.max_vcpus}" if plan.cpu_hotplug else str(plan.vcpus),
        "-m",
        (
            f"{plan.memory_mib}M,slots={plan.memory_slots},maxmem={plan.max_memory_mib}M"
            if plan.memory_hotplug
            else f"{plan.memory_mib}M"
        ),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        # QEMU's seccomp filter: no obsolete calls, no setuid/setgid or
        # capability changes, no fork/exec, no scheduler or affinity changes
        # (on top of cocoon.hypervisor.jail's filter and dropped capabilities).
        "-sandbox",
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        # PVH direct boot of the uncompressed kernel: no firmware decompression.
        "-kernel",
        str(plan.kernel),
        "-initrd",
        str(plan.initrd),
        "-append",
        " ".join(
            [
                BASE_KERNEL_PARAMS,
                *clock_params(plan.tsc_khz),
                *_hotplug_params(plan),
                *(["cocoon.debug_console=1"] if plan.debug_socket is not None else []),
                *plan.extra_kernel_params,
            ]
        ),
        # Guest console (kernel, init and agent logs) into a file.
        "-chardev",
        f"file,id=console,path={plan.console_log}",
        "-serial",
        "chardev:console",
        # QMP for status, stop and hotplug.
        "-qmp",
        f"unix:{plan.qmp_socket},server=on,wait=off",
    ]
    if plan.machine == "microvm":
        # virtiofsd (libvhost-user) refuses legacy virtio, microvm's MMIO default.
        argv += ["-global", "virtio-mmio.force-legacy=false"]
    # The agent channel: one virtio-serial port (no vsock on these hosts).
    argv += [
        "-device",
        f"{_bus(plan, 'virtio-serial')},id=vser0",
        "-chardev",
        f"socket,id=agent,path={plan.agent_socket},server=on,wait=off",
        "-device",
        "virtserialport,bus=vser0.0,chardev=agent,name=agent0",
    ]
    if plan.debug_socket is not None:
        # A console port (a tty in the guest: /dev/hvc0) on the same bus.
        argv += [
            "-chardev",
            f"socket,id=debugcon,path={plan.debug_socket},server=on,wait=off",
            "-device",
            f"virtconsole,bus=vser0.0,chardev=debugcon,name={DEBUG_PORT_NAME}",
        ]
    # The read-only guest root image (erofs) on virtio-blk.
    argv += [
        "-drive",
        f"file={plan.image},if=none,id=root,format=raw,readonly=on",
        "-device",
        f"{_bus(plan, 'virtio-blk')},drive=root",
    ]
    # Entropy from the host: qemu64 under TCG has no RDRAND, and without this
    # the guest CRNG takes seconds to initialise (early getrandom() blocks).
    argv += ["-device", f"{_bus(plan, 'virtio-rng')},id=rng0"]
    if plan.free_page_reporting:
        # Pages the guest frees go back to the host (in 2 MiB runs): for
        # workloads that grow and shrink; an idle VM gains nothing (measured).
        argv += ["-device", f"{_bus(plan, 'virtio-balloon')},id=balloon0,free-page-reporting=on"]
    if plan.machine == "pc":
        # A fresh generation ID in every QEMU process: a restored clone's
        # kernel reseeds its CRNG ("virtual machine fork"). No-op on a cold boot.
        argv += ["-device", "vmgenid,id=vmgenid0"]
    if plan.share is not None:
        argv += _share_args(plan, plan.share)
    if plan.memory_file is not None:
        share = "on" if plan.memory_shared else "off"
        argv += [
            "-object",
            f"memory-backend-file,id=mem,size={plan.memory_mib}M,"
            f"mem-path={plan.memory_file},share={share}",
        ]
    elif plan.memory_ram_object:
        argv += ["-object", f"memory-backend-ram,id=mem,size={plan.memory_mib}M"]
    if plan.start_paused:
        argv += ["-S"]
    if plan.incoming:
        argv += ["-incoming", "defer"]
    # Pod NICs: a tap fd from the pod's namespace, the guest NIC with the pod
    # interface's MAC. No vhost-net (absent on these hosts): userspace virtio-net.
    for nic in plan.nics:
        argv += [
            "-netdev",
            f"tap,id={nic.netdev_id},fd={nic.fd}",
            "-device",
            f"{_bus(plan, 'virtio-net')},netdev={nic.netdev_id},id={nic.device_id},mac={nic.mac}",
        ]
    return argv


def _share_args(plan: VMPlan, share: SharePlan) -> list[str]:
    if share.kind == "9p":
        if share.path is None:
            raise ValueError("a 9p share needs a path")
        return [
            "-fsdev",
            f"local,id=share,path={share.path},security_model=none",
            "-device",
            f"{_bus(plan, 'virtio-9p')},fsdev=share,mount_tag={share.tag}",
        ]
    if share.kind == "virtiofs":
        if share.socket is None:
            raise ValueError("a virtio-fs share needs a socket")
        # vhost-user needs guest RAM that virtiofsd can map: a shared memfd.
        args = [
            "-object",
            f"memory-backend-memfd,id=mem,size={plan.memory_mib}M,share=on",
            "-chardev",
            f"socket,id=vfs,path={share.socket}",
            "-device",
            f"{_bus(plan, 'vhost-user-fs')},chardev=vfs,tag={share.tag}",
        ]
        if plan.machine == "pc":
            args += ["-numa", "node,memdev=mem"]
        return args
    raise ValueError(f"unknown share kind {share.kind!r}")
