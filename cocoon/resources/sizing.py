"""vCPU and memory sizing of a sandbox VM: Kata's formulas as pure functions.

Sources (see shared/facts/kata.md 1d): runtime-go ``CalculateCPUsF``,
``CalculateSandboxSizing``, ``CalculateContainerSizing``,
``calculateSandboxCPUs``/``calculateSandboxMemory`` and ``updateResources``.

- CPUs = quota/period as a float; quota < 0 (unconstrained) or no period -> 0.
- Sandbox (pod) workload from the CRI annotations containerd puts on the
  pause container; when the quota is < 0 and shares > 0 (static CPU manager)
  the CPUs are ceil(shares/1024).
- Container workload from ``linux.resources``: quota/period, the cpuset size
  (used when no quota is set anywhere), memory.limit plus hugepage limits.
- Static mode: ``vcpus = default_vcpus + ceil(workload)``, ``memory =
  default_memory + workload MiB``, max vCPUs forced to vcpus; no hotplug.
- Dynamic mode: boot at the defaults, then on every container change
  ``vcpus = ceil(default_vcpus + sum of running CPUs)`` and ``memory =
  default_memory + sum of running limits``, each capped at its maximum.

Memory sums are in bytes and converted to MiB (rounded down) at the end, as
runtime-go does. Everything here is plain data in, plain data out; bad input
raises InvalidArgument naming the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cocoon.errors import InvalidArgument

if TYPE_CHECKING:
    from cocoon.config.schema import Config

MIB = 1 << 20
MIN_MEMORY_MIB = 128  # what the guest needs to boot (same as the schema's floor)
MAX_VCPUS = 1024  # more is absurd (KVM's x86 limit)
MAX_MEMORY_BYTES = 1 << 50  # 1 PiB: more is absurd
# cgroup "no limit" values some engines write instead of leaving the field out.
UNLIMITED_MEMORY = (1 << 63) - 4096  # PAGE_COUNTER_MAX * 4096, cgroup v1's "max"
MIN_PERIOD, MAX_PERIOD = 1000, 1_000_000  # the kernel's cpu.max period range (us)
DEFAULT_CPU_PERIOD = 100_000  # the kernel's cfs_period_us default (us)
MAX_SHARES = 262144

SANDBOX_CPU_QUOTA = "io.kubernetes.cri.sandbox-cpu-quota"
SANDBOX_CPU_PERIOD = "io.kubernetes.cri.sandbox-cpu-period"
SANDBOX_CPU_SHARES = "io.kubernetes.cri.sandbox-cpu-shares"
SANDBOX_MEMORY = "io.kubernetes.cri.sandbox-memory"
CONTAINER_TYPE = "io.kubernetes.cri.container-type"
CRIO_CONTAINER_TYPE = "io.kubernetes.cri-o.ContainerType"


@dataclass(frozen=True)
class Workload:
    """What one container (or a whole pod) asks for.

    ``cpus`` is the quota/period sum; ``cpuset_cpus`` the number of CPUs in its
    cpuset (counted only when no quota is set anywhere); ``memory_bytes`` the
    memory limit plus hugepage limits (0 = none).
    """

    cpus: float = 0.0
    memory_bytes: int = 0
    cpuset_cpus: int = 0

    @property
    def memory_mib(self) -> int:
        return mib_from_bytes(self.memory_bytes)

    @property
    def effective_cpus(self) -> float:
        """CPUs, or the cpuset size when there is no quota (runtime-go)."""
        return self.cpus if self.cpus > 0 else float(self.cpuset_cpus)


@dataclass(frozen=True)
class SandboxSize:
    """A VM size: what to boot or resize to, and the hotplug ceilings."""

    vcpus: int
    memory_mib: int
    max_vcpus: int
    max_memory_mib: int


# --- formulas ----------------------------------------------------------------


def cpus_from_quota(quota: int | None, period: int | None) -> float:
    """quota/period; 0 when the quota is unset or < 0 (unconstrained) or the period is 0."""
    if period is not None and period < 0:
        raise InvalidArgument(f"cpu period {period}: must not be negative")
    if quota is None or period is None or quota < 0 or period == 0:
        return 0.0
    return quota / period


def mib_from_bytes(n: int | None) -> int:
    """Bytes to MiB, rounded down; None or negative -> 0."""
    if n is None or n <= 0:
        return 0
    return n // MIB


def round_up_vcpus(cpus: float) -> int:
    """ceil, tolerant of float noise (1/3 + 1/3 + 1/3 is 1, not 2)."""
    return math.ceil(round(cpus, 9))


def count_cpuset(cpus: str, field: str = "cpuset") -> int:
    """Number of CPUs in a cpuset list such as ``"0-3,6"``; "" -> 0."""
    total = 0
    seen: set[int] = set()
    for part in (p.strip() for p in cpus.split(",")):
        if not part:
            continue
        lo, dash, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi) if dash else int(lo)
        except ValueError:
            raise InvalidArgument(f"{field}: {cpus!r} is not a CPU list like 0-3,6") from None
        if first < 0 or last < first or last >= 65536:
            raise InvalidArgument(f"{field}: bad CPU range {part!r} in {cpus!r}")
        new = set(range(first, last + 1)) - seen
        seen |= new
        total += len(new)
    return total


# --- reading the inputs ------------------------------------------------------


def _int_field(value: Any, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{field}: expected an integer, got {value!r}")
    return int(value)


def _check_cpu(quota: int | None, period: int | None, where: str) -> float:
    """Validated quota/period -> CPUs."""
    if period is not None and period != 0 and not MIN_PERIOD <= period <= MAX_PERIOD:
        raise InvalidArgument(
            f"{where}period: {period} is outside {MIN_PERIOD}..{MAX_PERIOD} microseconds"
        )
    if quota is not None and quota < -1:
        raise InvalidArgument(f"{where}quota: {quota} is negative (only -1 means unlimited)")
    if quota is not None and quota > 0 and not period:
        raise InvalidArgument(f"{where}quota: {quota} without {where}period")
    cpus = cpus_from_quota(quota, period)
    if cpus > MAX_VCPUS:
        raise InvalidArgument(
            f"{where}quota: {quota}/{period} is {cpus:g} CPUs, more than {MAX_VCPUS}"
        )
    return cpus


def _check_memory(value: int | None, field: str) -> int:
    """Validated memory bytes; -1, 0 and cgroup's "max" values mean no limit (0)."""
    if value is None or value in (-1, 0) or value >= UNLIMITED_MEMORY:
        return 0
    if value < 0:
        raise InvalidArgument(f"{field}: {value} is negative (only -1 means unlimited)")
    if value > MAX_MEMORY_BYTES:
        raise InvalidArgument(f"{field}: {value} bytes is more than 1 PiB")
    return value


def _annotation_int(annotations: Mapping[str, str], name: str) -> int | None:
    text = annotations.get(name)
    if text is None or not text.strip():
        return None
    try:
        return int(text.strip(), 10)
    except ValueError:
        raise InvalidArgument(f"annotation {name}: expected an integer, got {text!r}") from None


def sandbox_workload(annotations: Mapping[str, str]) -> Workload:
    """The pod's total from containerd's ``io.kubernetes.cri.sandbox-*`` annotations.

    Absent annotations count as 0 (CRI-O sends none). Quota < 0 with shares
    > 0 -> ceil(shares/1024) CPUs.
    """
    quota = _annotation_int(annotations, SANDBOX_CPU_QUOTA)
    period = _annotation_int(annotations, SANDBOX_CPU_PERIOD)
    shares = _annotation_int(annotations, SANDBOX_CPU_SHARES)
    memory = _annotation_int(annotations, SANDBOX_MEMORY)
    if period is not None and period < 0:
        raise InvalidArgument(f"annotation {SANDBOX_CPU_PERIOD}: {period} is negative")
    cpus = _check_cpu(quota, period, "annotation io.kubernetes.cri.sandbox-cpu-")
    if shares is not None and not 0 <= shares <= MAX_SHARES:
        raise InvalidArgument(
            f"annotation {SANDBOX_CPU_SHARES}: {shares} is outside 0..{MAX_SHARES}"
        )
    if quota is not None and quota < 0 and shares:
        cpus = float(math.ceil(shares / 1024))
    if memory is not None and memory < 0:
        raise InvalidArgument(f"annotation {SANDBOX_MEMORY}: {memory} is negative")
    return Workload(cpus=cpus, memory_bytes=_check_memory(memory, f"annotation {SANDBOX_MEMORY}"))


def _mapping(value: Any, field: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidArgument(f"{field}: expected an object, got {value!r}")
    return value


def overlay_resources(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """``update``'s LinuxResources ``new`` laid over ``old``, as runc does.

    A section given as an object (cpu, memory, blockIO, pids) changes only the keys it
    names; anything else given (hugepageLimits, devices, ...) replaces the old value.
    """
    out = dict(old)
    for key, value in new.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def updated_workload(
    old: Mapping[str, Any], new: Mapping[str, Any]
) -> tuple[dict[str, Any], Workload]:
    """The resources after an ``update`` and the workload they make.

    A quota given alone keeps the period in force (the spec's, else the kernel's
    default), as ``runc update --cpu-quota`` does.
    """
    merged = overlay_resources(old, new)
    counted = merged
    cpu = merged.get("cpu")
    if isinstance(cpu, Mapping) and cpu.get("quota") and not cpu.get("period"):
        counted = {**merged, "cpu": {**cpu, "period": DEFAULT_CPU_PERIOD}}
    return merged, resources_workload(counted, "resources")


def resources_workload(
    resources: Mapping[str, Any] | None, where: str = "linux.resources"
) -> Workload:
    """A container's workload from OCI LinuxResources (a spec's, or an ``update``'s)."""
    res = _mapping(resources, where)
    cpu = _mapping(res.get("cpu"), f"{where}.cpu")
    quota = _int_field(cpu.get("quota"), f"{where}.cpu.quota")
    period = _int_field(cpu.get("period"), f"{where}.cpu.period")
    if period is not None and period < 0:
        raise InvalidArgument(f"{where}.cpu.period: {period} is negative")
    cpus = _check_cpu(quota, period, f"{where}.cpu.")
    cpuset = cpu.get("cpus") or ""
    if not isinstance(cpuset, str):
        raise InvalidArgument(f"{where}.cpu.cpus: expected a string, got {cpuset!r}")
    cpuset_cpus = count_cpuset(cpuset, f"{where}.cpu.cpus")
    mem = _mapping(res.get("memory"), f"{where}.memory")
    limit = _int_field(mem.get("limit"), f"{where}.memory.limit")
    memory = _check_memory(limit, f"{where}.memory.limit")
    pages = res.get("hugepageLimits") or []
    if not isinstance(pages, list):
        raise InvalidArgument(f"{where}.hugepageLimits: expected a list, got {pages!r}")
    for i, page in enumerate(pages):
        name = f"{where}.hugepageLimits[{i}].limit"
        memory += _check_memory(_int_field(_mapping(page, name).get("limit"), name), name)
    if memory > MAX_MEMORY_BYTES:
        raise InvalidArgument(f"{where}.memory.limit: {memory} bytes in all is more than 1 PiB")
    return Workload(cpus=cpus, memory_bytes=memory, cpuset_cpus=cpuset_cpus)


def container_workload(spec: Mapping[str, Any]) -> Workload:
    """A container's workload from its OCI spec's ``linux.resources``."""
    linux = _mapping(spec.get("linux"), "linux")
    return resources_workload(linux.get("resources"))


def is_pod_sandbox(annotations: Mapping[str, str]) -> bool:
    """Whether the spec is a CRI pod sandbox (the pause container)."""
    return "sandbox" in (annotations.get(CONTAINER_TYPE), annotations.get(CRIO_CONTAINER_TYPE))


def boot_workload(spec: Mapping[str, Any]) -> Workload:
    """What static mode sizes for: the pod (sandbox annotations) or the lone container."""
    annotations = spec.get("annotations") or {}
    if is_pod_sandbox(annotations):
        return sandbox_workload(annotations)
    return container_workload(spec)


# --- sizes -------------------------------------------------------------------


def _check_defaults(default_vcpus: int, default_memory_mib: int) -> None:
    if not 1 <= default_vcpus <= MAX_VCPUS:
        raise InvalidArgument(f"default_vcpus: {default_vcpus} is outside 1..{MAX_VCPUS}")
    if default_memory_mib < MIN_MEMORY_MIB:
        raise InvalidArgument(
            f"default_memory: {default_memory_mib} MiB is less than the {MIN_MEMORY_MIB} MiB "
            "the guest needs to boot"
        )


def max_limits(
    default_maxvcpus: int, default_maxmemory: int, host_cpus: int, host_memory_mib: int
) -> tuple[int, int]:
    """The hotplug ceilings (vCPUs, MiB): 0 or more than the host -> the host's."""
    if host_cpus < 1 or host_memory_mib < 1:
        raise InvalidArgument(f"host size {host_cpus} CPUs / {host_memory_mib} MiB is not valid")
    if default_maxvcpus < 0:
        raise InvalidArgument(f"default_maxvcpus: {default_maxvcpus} is negative")
    if default_maxmemory < 0:
        raise InvalidArgument(f"default_maxmemory: {default_maxmemory} is negative")
    vcpus = min(default_maxvcpus or host_cpus, host_cpus, MAX_VCPUS)
    memory = min(default_maxmemory or host_memory_mib, host_memory_mib)
    return vcpus, memory


def static_size(default_vcpus: int, default_memory_mib: int, workload: Workload) -> SandboxSize:
    """runtime-go static mode: defaults plus the workload, max vCPUs forced to the vCPUs."""
    _check_defaults(default_vcpus, default_memory_mib)
    vcpus = default_vcpus + round_up_vcpus(workload.effective_cpus)
    if vcpus > MAX_VCPUS:
        raise InvalidArgument(f"workload: {vcpus} vCPUs is more than {MAX_VCPUS}")
    memory = default_memory_mib + workload.memory_mib
    return SandboxSize(vcpus=vcpus, memory_mib=memory, max_vcpus=vcpus, max_memory_mib=memory)


def total_workload(containers: Sequence[Workload]) -> Workload:
    """The sum over running containers, with runtime-go's cpuset fallback applied."""
    cpus = math.fsum(c.cpus for c in containers)
    cpuset = sum(c.cpuset_cpus for c in containers)
    memory = sum(c.memory_bytes for c in containers)
    if cpus == 0 and cpuset > 0:
        cpus = float(cpuset)
    return Workload(cpus=cpus, memory_bytes=memory)


def dynamic_size(
    default_vcpus: int,
    default_memory_mib: int,
    containers: Sequence[Workload],
    max_vcpus: int,
    max_memory_mib: int,
) -> SandboxSize:
    """runtime-go dynamic mode: the size for the running ``containers``, capped at the maxima.

    ``max_vcpus``/``max_memory_mib`` are resolved ceilings (see ``max_limits``).
    """
    _check_defaults(default_vcpus, default_memory_mib)
    if default_vcpus > max_vcpus:
        raise InvalidArgument(f"default_vcpus: {default_vcpus} is more than maxvcpus {max_vcpus}")
    if default_memory_mib > max_memory_mib:
        raise InvalidArgument(
            f"default_memory: {default_memory_mib} MiB is more than maxmemory {max_memory_mib} MiB"
        )
    total = total_workload(containers)
    vcpus = round_up_vcpus(default_vcpus + total.cpus)
    memory = mib_from_bytes(default_memory_mib * MIB + total.memory_bytes)
    return SandboxSize(
        vcpus=min(vcpus, max_vcpus),
        memory_mib=min(memory, max_memory_mib),
        max_vcpus=max_vcpus,
        max_memory_mib=max_memory_mib,
    )


def next_size(current: SandboxSize, wanted: SandboxSize) -> SandboxSize:
    """What to resize to: vCPUs follow ``wanted``, memory never shrinks (as in Kata)."""
    return SandboxSize(
        vcpus=wanted.vcpus,
        memory_mib=max(current.memory_mib, wanted.memory_mib),
        max_vcpus=current.max_vcpus,
        max_memory_mib=current.max_memory_mib,
    )


def hotplug_capable(machine_type: str) -> bool:
    """Whether QEMU can hot-plug vCPUs and DIMMs on this machine (microvm cannot)."""
    return machine_type == "pc"


def boot_size(
    config: Config, spec: Mapping[str, Any], host_cpus: int, host_memory_mib: int
) -> SandboxSize:
    """The size to boot a sandbox at, per the configured mode.

    Static: defaults plus the pod's (or lone container's) workload, never
    resized. Dynamic: the defaults, with the ceilings for later hotplug.
    """
    hv = config.hypervisor
    if config.runtime.static_sandbox_resource_mgmt:
        return static_size(hv.default_vcpus, hv.default_memory, boot_workload(spec))
    max_vcpus, max_memory = max_limits(
        hv.default_maxvcpus, hv.default_maxmemory, host_cpus, host_memory_mib
    )
    return dynamic_size(hv.default_vcpus, hv.default_memory, [], max_vcpus, max_memory)
