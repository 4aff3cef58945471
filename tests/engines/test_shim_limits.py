"""The shim front door: a pod's host cgroup limits, and containers in a user namespace."""

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


def test_container_with_mapped_root_runs_through_the_shim(shim_containerd: ShimContainerd) -> None:
    """``ctr run --uidmap``: containerd chowns the snapshot to the range; inside, it is root's."""
    c = shim_containerd
    cid = f"un{uuid.uuid4().hex[:8]}"
    maps = ("--uidmap", "0:100000:65536", "--gidmap", "0:100000:65536")
    script = "id; cat /proc/self/uid_map; ls -ln / | grep -E ' (bin|etc)$'"
    p = check(c.ctr("run", "--rm", "--runtime", RT, *maps, IMG, cid, "sh", "-c", script))
    lines = p.stdout.splitlines()
    assert lines[0].startswith("uid=0(root) gid=0(root)"), p.stdout
    assert lines[1].split() == ["0", "100000", "65536"], p.stdout
    assert [(f[2], f[3], f[-1]) for f in map(str.split, lines[2:4])] == [
        ("0", "0", "bin"),
        ("0", "0", "etc"),
    ], p.stdout
