"""``cocoon spec``: the default config.json, the same one ``runc spec`` writes.

Deliberate differences from runc 1.1.5:

- ``ociVersion`` is ``"1.0.2"`` (runc writes ``"1.0.2-dev"``, a pre-release tag).
- ``terminal`` is a parameter (``runc spec`` always writes ``true``).

``rootless=True`` applies runc's ``specconv.ToRootless``: no network namespace, a user
namespace mapping container root to the caller's euid/egid, ``/sys`` as a read-only
rbind, ``uid=``/``gid=`` mount options dropped, and no ``linux.resources``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cocoon.errors import InvalidArgument

OCI_VERSION = "1.0.2"
DEFAULT_CAPS = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]


def _mounts() -> list[dict[str, Any]]:
    return [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": [
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro"],
        },
        {
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
        },
    ]


def _to_rootless(spec: dict[str, Any], uid: int, gid: int) -> None:
    linux = spec["linux"]
    namespaces = [ns for ns in linux["namespaces"] if ns["type"] not in ("network", "user")]
    namespaces.append({"type": "user"})
    linux["namespaces"] = namespaces
    linux["uidMappings"] = [{"containerID": 0, "hostID": uid, "size": 1}]
    linux["gidMappings"] = [{"containerID": 0, "hostID": gid, "size": 1}]
    mounts: list[dict[str, Any]] = []
    for mount in spec["mounts"]:
        if os.path.normpath(mount["destination"]) == "/sys":
            mounts.append(
                {
                    "destination": "/sys",
                    "type": "none",
                    "source": "/sys",
                    "options": ["rbind", "nosuid", "noexec", "nodev", "ro"],
                }
            )
            continue
        if "options" in mount:
            mount["options"] = [o for o in mount["options"] if not o.startswith(("gid=", "uid="))]
        mounts.append(mount)
    spec["mounts"] = mounts
    del linux["resources"]


def default_spec(
    terminal: bool = True,
    rootless: bool = False,
    *,
    uid: int | None = None,
    gid: int | None = None,
) -> dict[str, Any]:
    """Return a new default spec; ``uid``/``gid`` (rootless only) default to euid/egid."""
    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": terminal,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "TERM=xterm",
            ],
            "cwd": "/",
            "capabilities": {
                "bounding": list(DEFAULT_CAPS),
                "effective": list(DEFAULT_CAPS),
                "permitted": list(DEFAULT_CAPS),
                "ambient": list(DEFAULT_CAPS),
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "runc",
        "mounts": _mounts(),
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [
                {"type": "pid"},
                {"type": "network"},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
            ],
            "maskedPaths": [
                "/proc/acpi",
                "/proc/asound",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/proc/sched_debug",
                "/sys/firmware",
                "/proc/scsi",
            ],
            "readonlyPaths": [
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
                "/proc/sys",
                "/proc/sysrq-trigger",
            ],
        },
    }
    if rootless:
        _to_rootless(
            spec,
            os.geteuid() if uid is None else uid,
            os.getegid() if gid is None else gid,
        )
    return spec


def write_spec(bundle: Path, terminal: bool = True, rootless: bool = False) -> Path:
    """Write ``<bundle>/config.json`` like ``runc spec``; refuse to overwrite one.

    Returns the path written. Raises InvalidArgument when the bundle directory is
    missing or config.json already exists.
    """
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise InvalidArgument(f"bundle {bundle} does not exist or is not a directory")
    config = bundle / "config.json"
    if config.exists() or config.is_symlink():
        raise InvalidArgument("File config.json exists. Remove it first.")
    data = json.dumps(default_spec(terminal, rootless), indent="\t")
    try:
        # O_EXCL: a config.json that appears after the check is not overwritten either.
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    except FileExistsError:
        raise InvalidArgument("File config.json exists. Remove it first.") from None
    except OSError as exc:
        raise InvalidArgument(f"cannot create {config}", exc) from exc
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(data)
    return config
