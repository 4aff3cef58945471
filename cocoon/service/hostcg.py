"""The host-side constraint level: the VMM's cgroup.

The sandbox service joins the cgroup that ``linux.cgroupsPath`` names (or
``cocoon/<id>`` below its own) before it starts QEMU and virtiofsd, so they
are born in it and every page they touch is charged there; the stubs that
engines reap join it too, so engines reading "the container's cgroup" through
that PID see the whole VM. Memory limit = guest memory + the VMM's overhead.
At teardown the service steps back to where it came from and removes what it
created.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
from typing import Any

from cocoon.errors import CocoonError, InvalidArgument
from cocoon.resources import hostcgroup as hc

log = logging.getLogger("cocoon.cgroup")
DEFAULT_PARENT = "cocoon"  # relative: below the runtime's own cgroup, as runc does


def plan_for(spec: dict[str, Any], cid: str, memory_mib: int, overhead_mib: int) -> hc.CgroupPlan:
    """The plan for a container; raises InvalidArgument for a path we cannot honour."""
    linux = spec.get("linux") or {}
    cgroups_path = linux.get("cgroupsPath") or None
    if cgroups_path is not None and not isinstance(cgroups_path, str):
        raise InvalidArgument("linux.cgroupsPath must be a string")
    resources = _object(linux.get("resources"), "linux.resources")
    shares = _object(resources.get("cpu"), "linux.resources.cpu").get("shares")
    weight = _object(resources.get("blockIO"), "linux.resources.blockIO").get("weight")
    plan = hc.plan_from_spec(
        cgroups_path,
        cid,
        memory_mib,
        overhead_mib,
        cpu_shares=shares if isinstance(shares, int) and shares > 0 else None,
        # The pod's share of the host's disks among other pods; skipped (with a
        # warning in the service log) where the host has no blkio/io weight file.
        blkio_weight=weight if isinstance(weight, int) and weight > 0 else None,
        default_parent=DEFAULT_PARENT,
    )
    assert plan is not None  # a default parent always gives a plan
    return plan


def _object(value: Any, field: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"{field} must be an object")
    return value


def _origins(plan: hc.CgroupPlan) -> dict[str, str]:
    """For each leaf, the cgroup this process is in now, in the same hierarchy."""
    layout = hc.detect_layout(hc.CGROUP_ROOT)
    own = hc.parse_proc_cgroup(hc.PROC_SELF_CGROUP.read_text())
    out: dict[str, str] = {}
    for leaf in plan.leaves:
        for h in layout.hierarchies:
            if leaf == h.mount or leaf.startswith(h.mount + "/"):
                key = "" if layout.mode == "v2" else h.controllers[0]
                if key in own:
                    out[leaf] = posixpath.join(h.mount, own[key].lstrip("/"))
                break
    return out


class HostCgroup:
    def __init__(self, plan: hc.CgroupPlan) -> None:
        self.plan = plan
        self.origins: dict[str, str] = {}

    def join(self) -> None:
        """Create the cgroup and move this process (the service) into it."""
        self.origins = _origins(self.plan)
        hc.apply(self.plan, [os.getpid()])
        if self.plan.skipped:
            log.warning("host cgroup limits not available here: %s", ", ".join(self.plan.skipped))

    def set_memory(self, guest_mib: int, overhead_mib: int) -> None:
        """Raise the memory limit for a guest that grows (hotplug)."""
        value = str((guest_mib + overhead_mib) * hc.MIB)
        writes = []
        for w in self.plan.writes:
            if w.path.endswith(("/memory.max", "/memory.limit_in_bytes")):
                fd = os.open(w.path, os.O_WRONLY)
                try:
                    os.write(fd, value.encode())
                finally:
                    os.close(fd)
                w = hc.Write(w.path, value, w.optional)
            writes.append(w)
        self.plan.writes = writes

    def add(self, pid: int) -> None:
        hc.add_pid(self.plan, pid)

    def leave_and_remove(self) -> None:
        """Step back to where the service came from, then remove the cgroup; never raises."""
        for leaf, origin in self.origins.items():
            with contextlib.suppress(OSError):
                fd = os.open(posixpath.join(origin, "cgroup.procs"), os.O_WRONLY)
                try:
                    os.write(fd, str(os.getpid()).encode())
                finally:
                    os.close(fd)
            del leaf
        try:
            hc.remove(self.plan)
        except CocoonError as exc:
            log.error("%s", exc)


def remove_recorded(data: dict[str, Any]) -> list[str]:
    """Remove a cgroup recorded in state.json (after its processes are gone)."""
    if not data:
        return []
    try:
        plan = hc.CgroupPlan.from_dict(data)
        hc.remove(plan)
    except (CocoonError, ValueError, TypeError) as exc:
        return [str(exc)]
    return []
