"""Where a container's limits land: the guest's cgroup v2 and the VMM's host cgroup."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.e2e.conftest import Env

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
    }
    b = limited_bundle(env, ["/bin/sh", "-c", "cat /sys/fs/cgroup/memory.max"], resources)
    r = env.run("run", "--bundle", str(b), "cv1")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().split() == [str(64 << 20)]
    err = r.stderr.decode()
    for field in ("memory.kernel", "memory.kernelTCP", "blockIO.leafWeight", "network"):
        assert f"linux.resources.{field} is ignored" in err, err


def test_hugetlb_limits_of_both_page_sizes_reach_the_guest_cgroup(env: Env) -> None:
    # kubelet writes every size the node has, 0 for those the pod did not ask for.
    resources = {
        "hugepageLimits": [
            {"pageSize": "2MB", "limit": 4 << 20},
            {"pageSize": "1GB", "limit": 0},
        ]
    }
    script = "ls /sys/kernel/mm/hugepages; cat /sys/fs/cgroup/hugetlb.2MB.max /sys/fs/cgroup/hugetlb.1GB.max"
    b = limited_bundle(env, ["/bin/sh", "-c", script], resources)
    r = env.run("run", "--bundle", str(b), "ch1")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().split() == [
        "hugepages-1048576kB",
        "hugepages-2048kB",
        str(4 << 20),
        "0",
    ]
