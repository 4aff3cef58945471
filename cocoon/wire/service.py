"""The sandbox service's API for the CLI (host only), carried like the agent's.

The shim will serve containerd's Task API from the same service code; this
schema is the CLI's narrower door to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cocoon.wire import agent

SERVICE = "cocoon.service.v1.Sandbox"


@dataclass
class Empty:
    pass


@dataclass
class CreateRequest:
    container_id: str
    bundle: str
    stdin: bool = True


@dataclass
class CreateResponse:
    warnings: list[str] = field(default_factory=list)  # for the user, one line each


@dataclass
class ContainerRef:
    container_id: str
    exec_id: str = ""


@dataclass
class KillRequest:
    container_id: str
    signal: int
    exec_id: str = ""
    all: bool = False


@dataclass
class WaitResponse:
    status: int
    exited_at_ns: int = 0
    error: str = ""  # set when the VM died instead of the process exiting
    timings: dict[str, float] = field(default_factory=dict)  # seconds since boot start


@dataclass
class DeleteRequest:
    container_id: str
    force: bool = False


@dataclass
class ContainerStatus:
    container_id: str
    status: str  # created | running | paused | stopped
    pid: int = 0  # the host process standing for the container's init
    bundle: str = ""
    created: str = ""
    annotations: dict[str, str] = field(default_factory=dict)
    exit_status: int = -1


@dataclass
class RegisterProcessRequest:
    """The host PID that stands for a guest process (what the engine reaps)."""

    container_id: str
    exec_id: str
    host_pid: int
    join_cgroup: bool = False  # stubs join the VMM's host cgroup; a foreground CLI does not


@dataclass
class ExecRequest:
    container_id: str
    exec_id: str
    process: dict[str, Any]  # an OCI Process
    stdin: bool = True


@dataclass
class ResizeRequest:
    container_id: str
    exec_id: str = ""
    rows: int = 24
    cols: int = 80


@dataclass
class UpdateRequest:
    container_id: str
    resources: dict[str, Any]  # OCI LinuxResources


@dataclass
class GuestProcess:
    pid: int  # PID in the guest
    args: list[str] = field(default_factory=list)


@dataclass
class PsResponse:
    host_pids: list[int] = field(default_factory=list)
    processes: list[GuestProcess] = field(default_factory=list)


@dataclass
class AttachNetworkRequest:
    """Carry the network of ``netns`` into the running VM (what hooks configured)."""

    netns: str


@dataclass
class CheckpointRequest:
    """Save the whole sandbox (cocoon.service.snapshot) into ``image_path``."""

    container_id: str
    image_path: str
    leave_running: bool = False


@dataclass
class CheckpointResponse:
    stats: dict[str, Any] = field(default_factory=dict)  # sizes and times


@dataclass
class MigrateRequest:
    """Move the running sandbox live to ``to`` (HOST:PORT, a ``restore --listen``)."""

    container_id: str
    to: str


@dataclass
class RestoreMemberRequest:
    """A member of a restored pod (saved as ``saved_id``) claims its records as
    ``container_id`` (cocoon.service.snapshot.restore_member)."""

    container_id: str
    bundle: str
    saved_id: str


METHODS: dict[str, tuple[type, type]] = {
    "Create": (CreateRequest, CreateResponse),
    # A container of another CLI invocation into this sandbox (cocoon.service.membership).
    "Join": (CreateRequest, CreateResponse),
    "Start": (ContainerRef, Empty),
    "State": (ContainerRef, ContainerStatus),
    "Kill": (KillRequest, Empty),
    "Wait": (ContainerRef, WaitResponse),
    "Delete": (DeleteRequest, Empty),
    "Shutdown": (Empty, Empty),
    "RegisterProcess": (RegisterProcessRequest, Empty),
    "Exec": (ExecRequest, Empty),
    "Resize": (ResizeRequest, Empty),
    "Pause": (ContainerRef, Empty),
    "Resume": (ContainerRef, Empty),
    "Update": (UpdateRequest, Empty),
    "Ps": (ContainerRef, PsResponse),
    "Stats": (ContainerRef, agent.StatsResponse),
    "AttachNetwork": (AttachNetworkRequest, Empty),
    "Checkpoint": (CheckpointRequest, CheckpointResponse),
    # A restored sandbox's service: wait for the load, then the container is running.
    "Restored": (ContainerRef, CreateResponse),
    # Live migration's source (cocoon.service.migrate): figures like a checkpoint's.
    "Migrate": (MigrateRequest, CheckpointResponse),
    # A member of a restored pod joins it (its records from the checkpoint's).
    "RestoreMember": (RestoreMemberRequest, CreateResponse),
}
