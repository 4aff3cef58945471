"""Which of a spec's limits the VMM's host cgroup gets, as plain data.

A VM is one unit on the host, so only limits that mean the same for the whole VM
land there (the container's own copy of every limit is applied by crun in the
guest):

- CPU quota/period and cpuset: they bound the vCPU threads (and QEMU's own), i.e.
  how much host CPU the VM gets, which is what they mean. A quota below
  :data:`MIN_HOST_CPUS` is raised to it (with a note): below that a TCG guest's
  agent misses its deadlines and the container could not even be created.
- hugetlb limits, as given: guest RAM is ordinary host memory (already counted in
  the memory limit), so the VMM takes no host huge pages, and the limit keeps it so.
- Device rules: the spec's rules, then the devices the VMM itself opens
  (:data:`VMM_DEVICES`), so a VMM can open no host device its container could
  not, plus what it needs to run.
- CPU shares and the block-I/O weight: the pod's share against other pods.

Not on the host: pids (the host counts QEMU's threads, not guest tasks), memory
(the VMM's limit is guest memory + overhead, set elsewhere), network classes and
kernel memory (v1-only; the guest ignores them too).

A pod (a CRI sandbox spec): the CPU quota/period are the pod's totals from the
``io.kubernetes.cri.sandbox-cpu-*`` annotations (what kubelet puts on the pod's
cgroup); cpuset, hugetlb and devices come from the sandbox spec itself.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cocoon.errors import InvalidArgument
from cocoon.resources import sizing

MIN_HOST_CPUS = 0.25
UNLIMITED_QUOTA = -1  # HostLimits.cpu_quota: write "no limit" (v1 -1, v2 "max")
DEFAULT_PERIOD = sizing.DEFAULT_CPU_PERIOD
PAGE_SIZE = re.compile(r"^[1-9][0-9]*[KMG]B$")


@dataclass(frozen=True)
class DeviceRule:
    """One device cgroup rule: allow or deny ``access`` to type ``kind`` major:minor."""

    allow: bool
    kind: str = "a"  # "a" (all), "c", "b"
    major: int | None = None  # None: any
    minor: int | None = None
    access: str = "rwm"

    def v1_line(self) -> str:
        if self.kind == "a":
            return "a"
        major = "*" if self.major is None else str(self.major)
        minor = "*" if self.minor is None else str(self.minor)
        return f"{self.kind} {major}:{minor} {self.access}"


def _char(major: int, minor: int | None) -> DeviceRule:
    return DeviceRule(True, "c", major, minor, "rwm")


# What the service, QEMU, virtiofsd and the stubs open: null zero full random
# urandom, tty console ptmx, the ptys, tun (pod NICs), kvm, vhost-net, vhost-vsock.
VMM_DEVICES = (
    *(_char(1, n) for n in (3, 5, 7, 8, 9)),
    *(_char(5, n) for n in (0, 1, 2)),
    _char(136, None),
    *(_char(10, n) for n in (200, 232, 238, 241)),
)


@dataclass(frozen=True)
class HostLimits:
    """The limits the VMM's cgroup gets (None/empty: leave that controller alone)."""

    cpu_shares: int | None = None
    blkio_weight: int | None = None
    cpu_quota: int | None = None  # microseconds per period
    cpu_period: int | None = None
    cpuset_cpus: str | None = None
    cpuset_mems: str | None = None
    hugetlb: tuple[tuple[str, int], ...] = ()  # (page size such as "2MB", bytes)
    devices: tuple[DeviceRule, ...] | None = None
    notes: tuple[str, ...] = ()


def _positive(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _devices(rules: Any) -> tuple[DeviceRule, ...] | None:
    if not rules:
        return None
    if not isinstance(rules, list):
        raise InvalidArgument("linux.resources.devices: expected a list")
    out = []
    for i, r in enumerate(rules):
        where = f"linux.resources.devices[{i}]"
        if not isinstance(r, Mapping) or not isinstance(r.get("allow"), bool):
            raise InvalidArgument(f"{where}: needs a boolean allow")
        kind = r.get("type") or "a"
        access = r.get("access") or "rwm"
        if kind not in ("a", "c", "b"):
            raise InvalidArgument(f"{where}.type: {kind!r} is not a, c or b")
        if not isinstance(access, str) or not access or set(access) - set("rwm"):
            raise InvalidArgument(f"{where}.access: {access!r} is not a subset of rwm")
        numbers = []
        for key in ("major", "minor"):
            n = r.get(key)
            if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < -1):
                raise InvalidArgument(f"{where}.{key}: {n!r} is not a device number")
            numbers.append(None if n is None or n == -1 else n)
        out.append(DeviceRule(r["allow"], kind, numbers[0], numbers[1], access))
    return (*out, *VMM_DEVICES)


def _hugetlb(pages: Any) -> tuple[tuple[str, int], ...]:
    if not pages:
        return ()
    if not isinstance(pages, list):
        raise InvalidArgument("linux.resources.hugepageLimits: expected a list")
    out = []
    for i, p in enumerate(pages):
        where = f"linux.resources.hugepageLimits[{i}]"
        size = p.get("pageSize") if isinstance(p, Mapping) else None
        limit = p.get("limit") if isinstance(p, Mapping) else None
        if not isinstance(size, str) or not PAGE_SIZE.match(size):
            raise InvalidArgument(f"{where}.pageSize: {size!r} is not a size such as 2MB")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise InvalidArgument(f"{where}.limit: {limit!r} is not a byte count")
        out.append((size, limit))
    return tuple(out)


def _cpuset(value: Any, where: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidArgument(f"{where}: expected a string, got {value!r}")
    sizing.count_cpuset(value, where)  # validates the list syntax
    return value


def updated_spec(spec: Mapping[str, Any], resources: Mapping[str, Any]) -> dict[str, Any]:
    """``spec`` with ``update``'s LinuxResources laid over ``linux.resources``."""
    linux = dict(spec.get("linux") or {})
    linux["resources"] = sizing.overlay_resources(linux.get("resources") or {}, resources)
    return {**spec, "linux": linux}


def shared_vm_cpu(members: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The ``cpu`` section for the host cgroup of a VM several CLI containers share.

    As the kubelet sizes a pod's cgroup: the sum of the members' quotas when every
    one has a quota, else no quota (one unlimited member makes the VM unlimited).
    """
    total = 0.0
    for res in members:
        cpu = res.get("cpu") if isinstance(res, Mapping) else None
        if not isinstance(cpu, Mapping):
            return {"quota": UNLIMITED_QUOTA, "period": DEFAULT_PERIOD}
        quota = cpu.get("quota")
        if not isinstance(quota, int) or isinstance(quota, bool) or quota <= 0:
            return {"quota": UNLIMITED_QUOTA, "period": DEFAULT_PERIOD}
        period = _positive(cpu.get("period")) or DEFAULT_PERIOD
        total += quota / period
    return {"quota": math.ceil(total * DEFAULT_PERIOD), "period": DEFAULT_PERIOD}


def from_spec(spec: Mapping[str, Any], lift: bool = False) -> HostLimits:
    """The host limits for the sandbox whose first (or pod sandbox) spec is ``spec``.

    A quota of -1 leaves the controller alone at create (engines write it for "no
    limit"); with ``lift`` (an update) it is written, lifting the limit in force.
    """
    linux = sizing._mapping(spec.get("linux"), "linux")
    res = sizing._mapping(linux.get("resources"), "linux.resources")
    cpu = sizing._mapping(res.get("cpu"), "linux.resources.cpu")
    annotations = spec.get("annotations") or {}
    quota: int | None
    if sizing.is_pod_sandbox(annotations):
        quota = sizing._annotation_int(annotations, sizing.SANDBOX_CPU_QUOTA)
        period = sizing._annotation_int(annotations, sizing.SANDBOX_CPU_PERIOD)
        where = "annotation io.kubernetes.cri.sandbox-cpu-"
    else:
        quota, period, where = cpu.get("quota"), cpu.get("period"), "linux.resources.cpu."
    unlimited = lift and type(quota) is int and quota == -1
    quota, period = _positive(quota), _positive(period)
    notes: list[str] = []
    if unlimited:
        quota, period = UNLIMITED_QUOTA, period or DEFAULT_PERIOD
    elif quota is not None:
        period = period or DEFAULT_PERIOD  # the kernel's, which runc leaves in place
        sizing._check_cpu(quota, period, where)
        floor = math.ceil(period * MIN_HOST_CPUS)
        if quota < floor:
            notes.append(
                f"host cpu quota {quota}/{period} raised to {floor}/{period}: the VM "
                f"needs at least {MIN_HOST_CPUS:g} CPU on the host"
            )
            quota = floor
    else:
        period = None
    blkio = sizing._mapping(res.get("blockIO"), "linux.resources.blockIO")
    return HostLimits(
        cpu_shares=_positive(cpu.get("shares")),
        blkio_weight=_positive(blkio.get("weight")),
        cpu_quota=quota,
        cpu_period=period,
        cpuset_cpus=_cpuset(cpu.get("cpus"), "linux.resources.cpu.cpus"),
        cpuset_mems=_cpuset(cpu.get("mems"), "linux.resources.cpu.mems"),
        hugetlb=_hugetlb(res.get("hugepageLimits")),
        devices=_devices(res.get("devices")),
        notes=tuple(notes),
    )
