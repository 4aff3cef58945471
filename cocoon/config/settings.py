"""Sandbox settings with defaults (the TOML file and annotations come later).

Environment overrides exist for tests and operators; engines such as conmon
do not pass the environment through, so they are never the only way.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from typing import Any

from cocoon.errors import InvalidArgument

SHARED_FS_KINDS = ("9p", "virtiofs")


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
    agent_timeout: float = 60.0
    # Host memory the VMM needs beyond guest RAM (TCG's code buffer is most of
    # it: ~100 MB measured per VM, plus QEMU itself), added to the host
    # cgroup's limit.
    host_overhead_mib: int = 384

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Settings:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def _int(name: str, value: str) -> int:
    try:
        out = int(value)
    except ValueError:
        raise InvalidArgument(f"{name}={value!r} is not an integer") from None
    if out <= 0:
        raise InvalidArgument(f"{name}={value!r} must be positive")
    return out


def from_environment(env: dict[str, str] | None = None) -> Settings:
    """Defaults overridden by ``COCOON_*`` variables; raises InvalidArgument on bad values."""
    env = dict(os.environ) if env is None else env
    kw: dict[str, Any] = {}
    if "COCOON_SHARED_FS" in env:
        kind = env["COCOON_SHARED_FS"]
        if kind not in SHARED_FS_KINDS:
            raise InvalidArgument(f"COCOON_SHARED_FS={kind!r}: expected one of {SHARED_FS_KINDS}")
        kw["shared_fs"] = kind
    if "COCOON_MACHINE" in env:
        if env["COCOON_MACHINE"] not in ("pc", "microvm"):
            raise InvalidArgument(f"COCOON_MACHINE={env['COCOON_MACHINE']!r}: expected pc|microvm")
        kw["machine"] = env["COCOON_MACHINE"]
    if "COCOON_MEMORY_MIB" in env:
        kw["memory_mib"] = _int("COCOON_MEMORY_MIB", env["COCOON_MEMORY_MIB"])
    if "COCOON_VCPUS" in env:
        kw["vcpus"] = _int("COCOON_VCPUS", env["COCOON_VCPUS"])
    if "COCOON_AGENT_TIMEOUT" in env:
        kw["agent_timeout"] = float(_int("COCOON_AGENT_TIMEOUT", env["COCOON_AGENT_TIMEOUT"]))
    if "COCOON_QEMU" in env:
        kw["qemu"] = env["COCOON_QEMU"]
    settings = Settings(**kw)
    if not os.path.isabs(settings.qemu):
        found = shutil.which(settings.qemu)
        if not found:
            raise InvalidArgument(f"QEMU binary {settings.qemu!r} not found")
        settings = Settings(**{**settings.to_dict(), "qemu": found})
    return settings
