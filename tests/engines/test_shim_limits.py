"""The shim front door: a pod's host cgroup gets the pod's CPU totals and device rules."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.engines.conftest import ShimContainerd, check, wait_for

pytestmark = pytest.mark.e2e

IMG = "localhost/busybox:latest"
RT = ShimContainerd.RUNTIME
CGROUPS = Path("/sys/fs/cgroup")


def test_pod_cpu_totals_and_device_rules_land_on_the_pods_host_cgroup(
    shim_containerd: ShimContainerd,
) -> None:
    c = shim_containerd
    pod = f"lim{uuid.uuid4().hex[:8]}"
    # What containerd's CRI puts on a pod's sandbox: the pod's CPU totals.
    ann = [
        "--annotation", "io.kubernetes.cri.container-type=sandbox",
        "--annotation", f"io.kubernetes.cri.sandbox-id={pod}",
        "--annotation", "io.kubernetes.cri.sandbox-cpu-quota=150000",
        "--annotation", "io.kubernetes.cri.sandbox-cpu-period=100000",
    ]  # fmt: skip
    check(c.ctr("run", "-d", "--runtime", RT, *ann, IMG, pod, "sleep", "1000"))
    try:
        # ctr's default cgroupsPath is /<namespace>/<id>.
        cpu = CGROUPS / "cpu" / c.namespace / pod
        assert (cpu / "cpu.cfs_quota_us").read_text().split() == ["150000"]
        assert (cpu / "cpu.cfs_period_us").read_text().split() == ["100000"]
        allowed = (CGROUPS / "devices" / c.namespace / pod / "devices.list").read_text()
        # ctr's default rules (deny all, then the usual character devices) and the VMM's.
        assert "a *:* rwm" not in allowed.splitlines() and "c 10:200 rwm" in allowed, allowed
        p = check(c.ctr("task", "exec", "--exec-id", "e1", pod, "sh", "-c", "echo alive"))
        assert p.stdout.strip() == "alive"
    finally:
        c.ctr("task", "kill", "-s", "SIGKILL", pod)
        wait_for("the pod to stop", lambda: c.tasks().get(pod, (0, ""))[1] == "STOPPED", 60)
        check(c.ctr("task", "delete", pod))
        check(c.ctr("container", "rm", pod))
    assert not (CGROUPS / "cpu" / c.namespace / pod).exists()
