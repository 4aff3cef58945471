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


def plan_for(
    spec: dict[str, Any], cid: str, memory_mib: int, overhead_mib: int, lift: bool = False
) -> hc.CgroupPlan:
    """The plan for a container; raises InvalidArgument for a path or limit we cannot honour.

    Which limits land here, and why: :mod:`cocoon.resources.hostlimits`. The block-I/O
    weight is the pod's share of the host's disks among other pods; it and anything
    else this host lacks is skipped, with a warning in the service log.
    """
    from cocoon.resources.hostlimits import from_spec

    linux = spec.get("linux") or {}
    if not isinstance(linux, dict):
        raise InvalidArgument("linux must be an object")
    cgroups_path = linux.get("cgroupsPath") or None
    if cgroups_path is not None and not isinstance(cgroups_path, str):
        raise InvalidArgument("linux.cgroupsPath must be a string")
    plan = hc.plan_from_spec(
        cgroups_path,
        cid,
        memory_mib,
        overhead_mib,
        limits=from_spec(spec, lift),
        default_parent=DEFAULT_PARENT,
    )
    assert plan is not None  # a default parent always gives a plan
    return plan


def _origins(plan: hc.CgroupPlan) -> dict[str, str]:
    """For each leaf, the cgroup this process is in now, in the same hierarchy."""
    layout = hc.detect_layout(hc.CGROUP_ROOT)
    own = hc.parse_proc_cgroup(hc.PROC_SELF_CGROUP.read_text())
    out: dict[str, str] = {}
    hierarchies = [*layout.hierarchies, *([layout.unified] if layout.unified else [])]
    for leaf in plan.leaves:
        for h in hierarchies:
            if leaf == h.mount or leaf.startswith(h.mount + "/"):
                key = "" if layout.mode == "v2" or h is layout.unified else h.controllers[0]
                if key in own:
                    out[leaf] = posixpath.join(h.mount, own[key].lstrip("/"))
                break
    return out


class HostCgroup:
    def __init__(
        self, plan: hc.CgroupPlan, spec: dict[str, Any] | None = None, sandbox_id: str = ""
    ) -> None:
        self.plan = plan
        self.spec = spec  # the spec the plan came from (for update)
        self.sandbox_id = sandbox_id
        self.origins: dict[str, str] = {}

    def join(self) -> None:
        """Create the cgroup and move this process (the service) into it."""
        self.origins = _origins(self.plan)
        hc.apply(self.plan, [os.getpid()])
        if self.plan.skipped:
            log.warning("host cgroup: %s", "; ".join(self.plan.skipped))

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

    def update_limits(self, resources: dict[str, Any], guest_mib: int) -> None:
        """Carry an ``update`` of the sandbox's container to the VM's host cgroup.

        The limits that land on the host (CPU quota/period and shares, cpuset,
        hugetlb, block-I/O weight) are recomputed from the spec with ``resources``
        laid over it and only the files that change are written.
        """
        if self.spec is None:
            return
        from cocoon.resources.hostlimits import updated_spec

        spec = updated_spec(self.spec, resources)
        new = plan_for(spec, self.sandbox_id, guest_mib, 0, lift=True)
        writes, notes = hc.update_writes(self.plan, new)
        hc.write_all(writes)
        for note in notes:
            log.warning("host cgroup update: %s", note)
        done = {w.path: w for w in writes}
        self.plan.writes = [done.pop(w.path, w) for w in self.plan.writes] + list(done.values())
        self.spec = spec

    def add(self, pid: int) -> None:
        """Move ``pid`` in; one that has already exited (a fast exec's stub, gone
        before its registration arrived) has nothing left to move."""
        try:
            hc.add_pid(self.plan, pid)
        except CocoonError as exc:
            if not isinstance(exc.cause or exc.__cause__, ProcessLookupError):
                raise
            log.info("host PID %d exited before it joined the cgroup", pid)

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
