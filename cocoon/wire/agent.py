"""The guest agent's API: one schema module, imported by the host client and the guest.

Modelled on Kata's ``grpc.AgentService`` (names and meaning), carried as JSON
inside ttRPC envelopes. ``METHODS`` is the single table of RPC name → request
and response types that both sides use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SERVICE = "cocoon.agent.v1.Agent"
AGENT_PORT_NAME = "agent0"
# ``[agent] debug_console``: the guest writes this, the exit status and "]" on
# the console when its shell ends (then starts another); `cocoon debug-console`
# ends there with that status.
DEBUG_EXIT_MARK = b"[cocoon debug console: the shell exited with status "


@dataclass
class Empty:
    pass


@dataclass
class CheckResponse:
    version: str
    kernel: str
    uptime: float


@dataclass
class Storage:
    """A filesystem the agent mounts in the guest (the shared dir, later volumes)."""

    driver: str  # "9p" | "virtiofs"
    source: str  # mount tag
    mount_point: str
    options: list[str] = field(default_factory=list)
    readonly: bool = False


@dataclass
class CreateSandboxRequest:
    """Who the (generic) VM now is: sent once, right after boot or restore."""

    sandbox_id: str
    hostname: str = ""
    storages: list[Storage] = field(default_factory=list)
    time_ns: int = 0  # host CLOCK_REALTIME; a restored VM's clock is stale
    seed: bytes = b""  # host randomness mixed into the guest CRNG
    dns: list[str] = field(default_factory=list)
    # ``[agent] kernel_modules``: "name [param=value ...]", loaded with modprobe.
    kernel_modules: list[str] = field(default_factory=list)


@dataclass
class ReadClockResponse:
    """The guest's CLOCK_REALTIME when the request was handled."""

    time_ns: int


@dataclass
class AdjustClockRequest:
    """Move the guest's CLOCK_REALTIME by ``delta_ns``: stepped at once when ``step``,
    else slewed (adjtime: 0.5 ms per second, monotonic time never jumps).

    A delta, not a time: how long the request travelled does not matter."""

    delta_ns: int
    step: bool = False


@dataclass
class BlockRootfs:
    """The rootfs as virtio-blk disks (cocoon.storage.blockroot): the agent mounts the
    read-only image and an overlay upper on the scratch disk, which it formats."""

    image_serial: str
    scratch_serial: str


@dataclass
class BlockDevice:
    """A host block device hot-plugged for the container: the spec's entries (and
    cgroup rules) with the host's numbers get the guest disk's."""

    serial: str
    host_major: int
    host_minor: int


@dataclass
class GuestVolume:
    """A volume kept in the guest (a kubelet emptyDir): a tmpfs at ``path``, made by the
    first container of the pod that mounts it and shared by the others."""

    path: str  # under /run/cocoon/emptydir/
    size: int = 0  # bytes; 0: the tmpfs default (half the guest's RAM)
    medium: str = "disk"  # "disk" | "memory": what the kubelet made on the host
    # subPath directories to make in it (relative path → mode), as the kubelet made them.
    subdirs: dict[str, int] = field(default_factory=dict)


@dataclass
class GuestFile:
    """A file bind's content, copied into the guest instead of shared (block rootfs
    mode: a VM with nothing mounted from the host can be checkpointed). The agent
    writes it at ``path`` (under /run/cocoon/files/) with ``mode``."""

    path: str
    data: bytes
    mode: int = 0o644


@dataclass
class CreateContainerRequest:
    container_id: str
    spec: dict[str, Any]  # the OCI config.json; the agent rewrites root.path
    rootfs: str  # guest path of the container's root filesystem
    stdin: bool = False
    terminal: bool = False
    # A pod member: join this (running) container's IPC, UTS and network namespaces.
    pod_sandbox: str = ""
    # More of pod_sandbox's namespaces to join, by OCI type ("pid": the pod shares it).
    pod_namespaces: list[str] = field(default_factory=list)
    block_rootfs: BlockRootfs | None = None
    block_devices: list[BlockDevice] = field(default_factory=list)
    # A privileged container: every guest device (never the host's) in its /dev.
    guest_devices: bool = False
    # Guest-side volumes the spec's mounts take their sources from.
    volumes: list[GuestVolume] = field(default_factory=list)
    # Join exactly pod_namespaces (a container of another CLI invocation in this VM:
    # docker's --ipc container:A), not the pod's IPC and UTS ones besides.
    pod_exact: bool = False
    # File binds carried by value (GuestFile), and the host share to mount first if
    # the container has binds left (block rootfs mode mounts it only when needed).
    files: list[GuestFile] = field(default_factory=list)
    share: Storage | None = None


@dataclass
class ContainerRequest:
    container_id: str


@dataclass
class ExecProcessRequest:
    container_id: str
    exec_id: str
    process: dict[str, Any]  # an OCI Process
    stdin: bool = False
    terminal: bool = False


@dataclass
class ProcessRequest:
    """Names a process: the container's init when exec_id is empty."""

    container_id: str
    exec_id: str = ""


@dataclass
class SignalProcessRequest:
    container_id: str
    exec_id: str = ""
    signal: int = 15
    all: bool = False


@dataclass
class WaitProcessResponse:
    status: int  # exit code, or 128+N when killed by signal N
    exited_at_ns: int = 0


@dataclass
class WriteStreamRequest:
    container_id: str
    exec_id: str
    data: bytes


@dataclass
class WriteStreamResponse:
    length: int


@dataclass
class ReadStreamRequest:
    container_id: str
    exec_id: str = ""
    max_len: int = 65536


@dataclass
class ReadStreamResponse:
    data: bytes = b""
    eof: bool = False


@dataclass
class TtyWinResizeRequest:
    container_id: str
    exec_id: str = ""
    rows: int = 24
    cols: int = 80


@dataclass
class ProcessInfo:
    pid: int
    args: list[str] = field(default_factory=list)


@dataclass
class ListProcessesResponse:
    processes: list[ProcessInfo] = field(default_factory=list)


@dataclass
class UpdateContainerRequest:
    container_id: str
    resources: dict[str, Any]  # OCI LinuxResources, applied to the guest cgroup


@dataclass
class StatsResponse:
    """The container's guest cgroup (v2) counters, as read from its files."""

    cpu_usage_usec: int = 0
    cpu_user_usec: int = 0
    cpu_system_usec: int = 0
    cpu_throttled_usec: int = 0
    cpu_nr_throttled: int = 0
    memory_current: int = 0
    memory_max: int = 0  # 0: no limit
    memory_peak: int = 0
    memory_stat: dict[str, int] = field(default_factory=dict)
    memory_events: dict[str, int] = field(default_factory=dict)
    pids_current: int = 0
    pids_max: int = 0  # 0: no limit
    io_stat: dict[str, dict[str, int]] = field(default_factory=dict)  # "maj:min" → counters


@dataclass
class OnlineCPUMemRequest:
    """Bring hot-added vCPUs (and any offline memory) online; wait for ``nb_cpus``."""

    nb_cpus: int
    timeout: float = 10.0


@dataclass
class OnlineCPUMemResponse:
    online_cpus: int
    mem_total_kib: int


@dataclass
class IPAddress:
    address: str
    prefix_len: int
    family: int = 4  # 4 | 6


@dataclass
class Interface:
    """A guest NIC, found by its MAC (the veth's) and given the veth's name and addresses."""

    name: str
    hw_addr: str
    mtu: int = 1500
    addresses: list[IPAddress] = field(default_factory=list)


@dataclass
class Route:
    dest: str = ""  # CIDR; "" is the default route
    gateway: str = ""
    device: str = ""
    source: str = ""
    scope: str = ""  # "" (global) | "link" | "host"
    family: int = 4


@dataclass
class ARPNeighbor:
    """A static (permanent) neighbour entry, as CNI plugins sometimes add."""

    address: str
    hw_addr: str
    device: str


@dataclass
class UpdateNetworkRequest:
    """The pod network as the guest must see it (Kata's UpdateInterface + UpdateRoutes +
    AddARPNeighbors in one call): NICs by MAC, then routes, then neighbours."""

    interfaces: list[Interface] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    neighbors: list[ARPNeighbor] = field(default_factory=list)
    timeout: float = 10.0  # how long to wait for hot-plugged NICs to appear


@dataclass
class DetachRequest:
    """Quiesce the host link before the VM is saved: the agent drops its in-flight long
    polls (WaitProcess, ReadStdout/ReadStderr: the host asks again after the save or
    after a restore), waits for its other calls to answer, and, with ``release_share``,
    unmounts the host share (QEMU refuses to migrate a VM with 9p mounted)."""

    release_share: bool = False


@dataclass
class DetachResponse:
    dropped: int = 0  # long polls dropped
    share_released: bool = False


@dataclass
class RenameContainerRequest:
    """A restored container under another ID (podman restore --import --name)."""

    old_id: str
    new_id: str


METHODS: dict[str, tuple[type, type]] = {
    "Check": (Empty, CheckResponse),
    "CreateSandbox": (CreateSandboxRequest, Empty),
    "DestroySandbox": (Empty, Empty),
    "CreateContainer": (CreateContainerRequest, Empty),
    "StartContainer": (ContainerRequest, Empty),
    "RemoveContainer": (ContainerRequest, Empty),
    "ExecProcess": (ExecProcessRequest, Empty),
    "SignalProcess": (SignalProcessRequest, Empty),
    "WaitProcess": (ProcessRequest, WaitProcessResponse),
    "WriteStdin": (WriteStreamRequest, WriteStreamResponse),
    "CloseStdin": (ProcessRequest, Empty),
    "ReadStdout": (ReadStreamRequest, ReadStreamResponse),
    "ReadStderr": (ReadStreamRequest, ReadStreamResponse),
    "TtyWinResize": (TtyWinResizeRequest, Empty),
    "ListProcesses": (ContainerRequest, ListProcessesResponse),
    "PauseContainer": (ContainerRequest, Empty),
    "ResumeContainer": (ContainerRequest, Empty),
    "UpdateContainer": (UpdateContainerRequest, Empty),
    "StatsContainer": (ContainerRequest, StatsResponse),
    "OnlineCPUMem": (OnlineCPUMemRequest, OnlineCPUMemResponse),
    "UpdateNetwork": (UpdateNetworkRequest, Empty),
    "ReadClock": (Empty, ReadClockResponse),
    "AdjustClock": (AdjustClockRequest, Empty),
    "Detach": (DetachRequest, DetachResponse),
    "RenameContainer": (RenameContainerRequest, Empty),
    # Forget an exec'd process (killed first if it still runs): its id may be used again.
    "RemoveProcess": (ProcessRequest, Empty),
}
