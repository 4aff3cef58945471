"""Which pod a container belongs to, and where that pod's shim listens.

One shim (and one VM) per pod: containerd runs ``start`` for every container,
and for a pod member ``start`` answers with the address of the shim that the
pod's sandbox container started. The address is a pure function of
(containerd address, namespace, pod id), as containerd's own runc shim does,
so no registry is needed to find it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

# containerd's CRI plugin and CRI-O name a container's role and pod the same way, differently.
CRI_TYPE = "io.kubernetes.cri.container-type"
CRI_SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
CRIO_TYPE = "io.kubernetes.cri-o.ContainerType"
CRIO_SANDBOX_ID = "io.kubernetes.cri-o.SandboxID"

SHIM_ROOT = Path("/run/cocoon-shim")  # sandbox state: <root>/<namespace>/<pod id>
SOCKET_DIR = SHIM_ROOT / "s"  # short, hashed socket names (unix paths are limited to 108 B)


@dataclass(frozen=True)
class PodRole:
    """``pod_id`` is the sandbox container's id; ``is_sandbox`` when this container is it."""

    pod_id: str
    is_sandbox: bool


def pod_role(cid: str, annotations: dict[str, str]) -> PodRole:
    """The container's pod from its CRI annotations; without them, a pod of its own."""
    kind = annotations.get(CRI_TYPE) or annotations.get(CRIO_TYPE) or ""
    sandbox_id = annotations.get(CRI_SANDBOX_ID) or annotations.get(CRIO_SANDBOX_ID) or ""
    if kind == "container" and sandbox_id and sandbox_id != cid:
        return PodRole(sandbox_id, False)
    return PodRole(cid, True)


def socket_path(containerd_address: str, namespace: str, pod_id: str) -> Path:
    """The pod's shim socket: one per (containerd, namespace, pod)."""
    key = f"{containerd_address}\0{namespace}\0{pod_id}".encode()
    return SOCKET_DIR / f"{hashlib.sha256(key).hexdigest()[:32]}.sock"


def state_root(namespace: str) -> Path:
    return SHIM_ROOT / namespace
