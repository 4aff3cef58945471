"""Where a container's limits land: the guest's cgroup v2 and the VMM's host cgroup."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tests.e2e.conftest import Env
from tests.e2e.test_network import create_detached

CGROUPS = "/sys/fs/cgroup"
CGROUP_MOUNT = {
    "destination": "/sys/fs/cgroup",
    "type": "cgroup",
    "source": "cgroup",
    "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
}


def limited_bundle(env: Env, args: list[str], resources: dict[str, Any], **linux: Any) -> Path:
    b = env.bundle(args)
    spec = json.loads((b / "config.json").read_text())
    spec["linux"]["resources"] = resources
    spec["linux"].update(linux)
    spec["mounts"].append(CGROUP_MOUNT)
    spec["linux"]["namespaces"].append({"type": "cgroup"})  # /sys/fs/cgroup is its own
    (b / "config.json").write_text(json.dumps(spec))
    return b


def test_cgroup_v1_only_settings_are_ignored_with_a_warning(env: Env) -> None:
    resources = {
        "memory": {"limit": 64 << 20, "kernel": 32 << 20, "kernelTCP": 8 << 20},
        "blockIO": {"weight": 500, "leafWeight": 300},
        "network": {"classID": 1048577, "priorities": [{"name": "eth0", "priority": 10}]},
        "cpu": {"quota": 10000, "period": 100000},  # below the VM's floor on the host
    }
    b = limited_bundle(env, ["/bin/sh", "-c", "cat /sys/fs/cgroup/memory.max"], resources)
    r = env.run("run", "--bundle", str(b), "cv1")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().split() == [str(64 << 20)]
    err = r.stderr.decode()
    for field in ("memory.kernel", "memory.kernelTCP", "blockIO.leafWeight", "network"):
        assert f"linux.resources.{field} is ignored" in err, err
    # What the host cgroup takes differently is said too, not only logged.
    assert "host cgroup: host cpu quota 10000/100000 raised to 25000/100000" in err, err


def test_hugetlb_limits_of_both_page_sizes_reach_the_guest_cgroup(env: Env) -> None:
    # kubelet writes every size the node has, 0 for those the pod did not ask for.
    resources = {
        "hugepageLimits": [
            {"pageSize": "2MB", "limit": 4 << 20},
            {"pageSize": "1GB", "limit": 0},
        ]
    }
    script = (
        "ls /sys/kernel/mm/hugepages;"
        " cat /sys/fs/cgroup/hugetlb.2MB.max /sys/fs/cgroup/hugetlb.1GB.max"
    )
    b = limited_bundle(env, ["/bin/sh", "-c", script], resources)
    r = env.run("run", "--bundle", str(b), "ch1")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().split() == [
        "hugepages-1048576kB",
        "hugepages-2048kB",
        str(4 << 20),
        "0",
    ]


def test_cpu_quota_cpuset_and_device_rules_land_on_the_vms_host_cgroup(env: Env) -> None:
    parent = f"cocoon-e2e-{os.getpid()}"
    resources = {
        "cpu": {"quota": 50000, "period": 100000, "cpus": "0"},
        "hugepageLimits": [{"pageSize": "2MB", "limit": 4 << 20}],
        "devices": [
            {"allow": False, "access": "rwm"},
            {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
        ],
    }
    b = limited_bundle(env, ["/bin/sleep", "600"], resources, cgroupsPath=f"/{parent}/cq1")
    create_detached(env, b, "cq1")
    cpu, cpuset, devices = (Path(CGROUPS, c, parent, "cq1") for c in ("cpu", "cpuset", "devices"))
    try:
        assert (cpu / "cpu.cfs_quota_us").read_text().split() == ["50000"]
        assert (cpu / "cpu.cfs_period_us").read_text().split() == ["100000"]
        assert (cpuset / "cpuset.cpus").read_text().split() == ["0"]
        # hugetlb is in the hybrid cgroup2 mount on these hosts.
        hugetlb = Path(CGROUPS, "unified", parent, "cq1", "hugetlb.2MB.max")
        assert hugetlb.read_text().split() == [str(4 << 20)]
        allowed = (devices / "devices.list").read_text().splitlines()
        # The container's rules, then what QEMU and the service open themselves.
        assert "c 1:3 rwm" in allowed and "c 10:200 rwm" in allowed, allowed
        assert "a *:* rwm" not in allowed and "b 8:0 rwm" not in allowed, allowed
        state = json.loads((env.root / "cq1" / "state.json").read_text())
        for d in (cpu, cpuset, devices):
            assert str(state["qemu_pid"]) in (d / "cgroup.procs").read_text().split()
        # update reaches the host level too: the VM's quota follows the container's.
        r = env.run("update", "--cpu-quota", "80000", "--cpuset-cpus", "0-1", "cq1")
        assert r.returncode == 0, r.stderr.decode()
        assert (cpu / "cpu.cfs_quota_us").read_text().split() == ["80000"]
        assert (cpuset / "cpuset.cpus").read_text().split() == ["0-1"]
    finally:
        assert env.run("delete", "--force", "cq1").returncode == 0
    for c in ("cpu", "cpuset", "devices", "unified"):
        assert not Path(CGROUPS, c, parent).exists()
