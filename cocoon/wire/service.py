"""The sandbox service's API for the CLI (host only), carried like the agent's.

The shim will serve containerd's Task API from the same service code; this
schema is the CLI's narrower door to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    status: str
    pid: int = 0
    bundle: str = ""
    created: str = ""
    annotations: dict[str, str] = field(default_factory=dict)


METHODS: dict[str, tuple[type, type]] = {
    "Create": (CreateRequest, Empty),
    "Start": (ContainerRef, Empty),
    "State": (ContainerRef, ContainerStatus),
    "Kill": (KillRequest, Empty),
    "Wait": (ContainerRef, WaitResponse),
    "Delete": (DeleteRequest, Empty),
    "Shutdown": (Empty, Empty),
}
