from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cocoon.errors import InvalidArgument
from cocoon.resources import hostcgroup as hc
from cocoon.resources.hostcgroup import Write
from cocoon.resources.hostlimits import VMM_DEVICES, DeviceRule, HostLimits, from_spec, updated_spec
from tests.unit.resources.test_hostcgroup import V1_FILES, make_v1, make_v2


def spec(resources: dict[str, Any], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"linux": {"resources": resources}, "annotations": annotations or {}}


def test_lone_container_limits() -> None:
    limits = from_spec(
        spec(
            {
                "cpu": {
                    "quota": 150000,
                    "period": 100000,
                    "cpus": "0-1",
                    "mems": "0",
                    "shares": 512,
                },
                "hugepageLimits": [
                    {"pageSize": "2MB", "limit": 4194304},
                    {"pageSize": "1GB", "limit": 0},
                ],
                "devices": [
                    {"allow": False, "access": "rwm"},
                    {"allow": True, "type": "c", "major": 1, "minor": 3},
                ],
                "blockIO": {"weight": 300},
                "pids": {"limit": 10},
            }
        )
    )
    assert limits == HostLimits(
        cpu_shares=512,
        blkio_weight=300,
        cpu_quota=150000,
        cpu_period=100000,
        cpuset_cpus="0-1",
        cpuset_mems="0",
        hugetlb=(("2MB", 4194304), ("1GB", 0)),
        devices=(DeviceRule(False), DeviceRule(True, "c", 1, 3), *VMM_DEVICES),
    )
    assert [r.v1_line() for r in limits.devices or ()][:3] == ["a", "c 1:3 rwm", "c 1:3 rwm"]


def test_no_limits_leave_the_controllers_alone() -> None:
    assert from_spec({}) == HostLimits()
    assert from_spec(spec({"cpu": {"quota": -1, "period": 100000}})) == HostLimits()


def test_a_tiny_quota_is_raised_to_the_floor_with_a_note() -> None:
    limits = from_spec(spec({"cpu": {"quota": 1000, "period": 100000}}))
    assert (limits.cpu_quota, limits.cpu_period) == (25000, 100000)
    assert "raised to 25000/100000" in limits.notes[0]
    assert from_spec(spec({"cpu": {"quota": 50000}})).cpu_period == 100000  # kernel default


def test_a_pod_takes_its_cpu_totals_from_the_sandbox_annotations() -> None:
    annotations = {
        "io.kubernetes.cri.container-type": "sandbox",
        "io.kubernetes.cri.sandbox-cpu-quota": "200000",
        "io.kubernetes.cri.sandbox-cpu-period": "100000",
    }
    limits = from_spec(spec({"cpu": {"shares": 2}}, annotations))
    assert (limits.cpu_quota, limits.cpu_period, limits.cpu_shares) == (200000, 100000, 2)


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ({"cpu": {"cpus": "0-"}}, "cpu.cpus"),
        ({"hugepageLimits": [{"pageSize": "2M", "limit": 1}]}, "pageSize"),
        ({"hugepageLimits": [{"pageSize": "2MB", "limit": -1}]}, "limit"),
        ({"devices": [{"allow": True, "type": "x"}]}, "type"),
        ({"devices": [{"allow": True, "access": "rwx"}]}, "access"),
        ({"devices": [{"access": "r"}]}, "allow"),
        ({"cpu": "2"}, "linux.resources.cpu: expected an object"),
        ({"cpu": {"quota": 50000, "period": 10}}, "period"),
    ],
)
def test_bad_limits_are_refused(resources: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        from_spec(spec(resources))


LIMITS = HostLimits(
    cpu_quota=50000,
    cpu_period=100000,
    cpuset_cpus="0",
    hugetlb=(("2MB", 4194304), ("1GB", 0)),
    devices=(DeviceRule(False), DeviceRule(True, "c", 1, 3)),
)


def hugepages(tmp_path: Path, *kb: int) -> Path:
    d = tmp_path / "hugepages"
    for n in kb:
        (d / f"hugepages-{n}kB").mkdir(parents=True)
    return d


def test_hugepage_sizes_are_named_as_hugetlb_files_name_them(tmp_path: Path) -> None:
    assert hc.hugepage_sizes(hugepages(tmp_path, 2048, 1048576, 64)) == ("1GB", "2MB", "64KB")
    assert hc.hugepage_sizes(tmp_path / "none") == ()


def test_v1_plan_with_cpu_quota_cpuset_devices_and_hybrid_hugetlb(tmp_path: Path) -> None:
    files = dict(
        V1_FILES,
        **{"cpu,cpuacct": {"cpu.shares": "", "cpu.cfs_quota_us": "-1", "cpu.cfs_period_us": ""}},
        devices={"devices.allow": "", "devices.deny": ""},
    )
    root = make_v1(tmp_path / "cg", files)
    plan = hc.plan_from_spec(
        "/p/c", "c", 64, 0, root, limits=LIMITS, hugepages_dir=hugepages(tmp_path, 2048)
    )
    assert plan is not None
    r = str(root)
    assert f"{r}/unified/p/c" in plan.leaves and f"{r}/unified/p" in plan.mkdirs
    assert plan.writes[1:] == [
        Write(f"{r}/cpu,cpuacct/p/c/cpu.cfs_period_us", "100000"),
        Write(f"{r}/cpu,cpuacct/p/c/cpu.cfs_quota_us", "50000"),
        Write(f"{r}/cpuset/p/c/cpuset.cpus", "0"),
        Write(f"{r}/devices/p/c/devices.deny", "a"),
        Write(f"{r}/devices/p/c/devices.allow", "c 1:3 rwm"),
        Write(f"{r}/unified/cgroup.subtree_control", "+hugetlb"),
        Write(f"{r}/unified/p/cgroup.subtree_control", "+hugetlb"),
        Write(f"{r}/unified/p/c/hugetlb.2MB.max", "4194304"),
    ]
    assert plan.skipped == ["hugetlb 1GB: the host has no 1GB pages"]


def test_v1_plan_without_hugetlb_anywhere_skips_it(tmp_path: Path) -> None:
    root = make_v1(tmp_path / "cg")
    (root / "unified" / "cgroup.controllers").write_text("\n")
    plan = hc.plan_from_spec("/p/c", "c", 64, 0, root, limits=HostLimits(hugetlb=(("2MB", 1),)))
    assert plan is not None and "hugetlb limits: no hugetlb controller on this host" in plan.skipped
    assert not any("unified" in leaf for leaf in plan.leaves)


def test_v2_plan_with_cpu_quota_cpuset_and_hugetlb(tmp_path: Path) -> None:
    root = make_v2(tmp_path / "cg", "cpuset cpu memory hugetlb")
    sizes = hugepages(tmp_path, 2048, 1048576)
    plan = hc.plan_from_spec("/c", "c", 64, 0, root, limits=LIMITS, hugepages_dir=sizes)
    assert plan is not None
    r = str(root)
    assert plan.writes == [
        Write(f"{r}/cgroup.subtree_control", "+memory +cpu +cpuset +hugetlb"),
        Write(f"{r}/c/memory.max", str(64 << 20)),
        Write(f"{r}/c/cpu.max", "50000 100000"),
        Write(f"{r}/c/cpuset.cpus", "0"),
        Write(f"{r}/c/hugetlb.2MB.max", "4194304"),
        Write(f"{r}/c/hugetlb.1GB.max", "0"),
    ]
    assert plan.skipped == ["device rules: cgroup v2 needs an eBPF program, not applied"]


def test_update_lays_resources_over_the_spec_as_runc_does() -> None:
    old = spec({"cpu": {"quota": 50000, "shares": 512}, "hugepageLimits": [{"pageSize": "2MB"}]})
    new = updated_spec(old, {"cpu": {"quota": 80000}, "hugepageLimits": []})
    assert new["linux"]["resources"] == {
        "cpu": {"quota": 80000, "shares": 512},
        "hugepageLimits": [],
    }
    assert old["linux"]["resources"]["cpu"] == {"quota": 50000, "shares": 512}  # not changed


def test_update_writes_only_what_changed_and_never_memory_or_devices(tmp_path: Path) -> None:
    root = make_v2(tmp_path / "cg", "cpuset cpu memory hugetlb")
    sizes = hugepages(tmp_path, 2048)

    def plan(resources: dict[str, Any]) -> hc.CgroupPlan:
        p = hc.plan_from_spec(
            "/c", "c", 64, 0, root, limits=from_spec(spec(resources)), hugepages_dir=sizes
        )
        assert p is not None
        return p

    old = plan({"cpu": {"quota": 50000, "cpus": "0"}})
    new = plan({"cpu": {"quota": 100000, "cpus": "0"}, "devices": [{"allow": False}]})
    new.writes.append(Write(f"{root}/c/memory.max", "1"))
    new.writes.append(Write(f"{root}/other/cpu.max", "1"))
    writes, notes = hc.update_writes(old, new)
    assert writes == [Write(f"{root}/c/cpu.max", "100000 100000")]
    assert notes == ["cpu.max: no host cgroup of this controller was made at create"]


def test_a_shared_vm_gets_its_members_cpu_total_or_no_quota() -> None:
    from cocoon.resources.hostlimits import shared_vm_cpu

    halves = [
        {"cpu": {"quota": 50000, "period": 100000}},
        {"cpu": {"quota": 25000, "period": 50000}},
    ]
    assert shared_vm_cpu(halves) == {"quota": 100000, "period": 100000}
    assert shared_vm_cpu([*halves, {}]) == {"quota": -1, "period": 100000}
    limits = from_spec(spec({"cpu": shared_vm_cpu([{}])}), lift=True)
    assert (limits.cpu_quota, limits.cpu_period, limits.notes) == (-1, 100000, ())


def test_no_quota_is_written_as_max_on_v2(tmp_path: Path) -> None:
    root = make_v2(tmp_path / "cg", "cpu memory")
    limits = from_spec(spec({"cpu": {"quota": -1}}), lift=True)
    plan = hc.plan_from_spec("/c", "c", 64, 0, root, limits=limits, hugepages_dir=tmp_path)
    assert plan is not None
    assert Write(f"{root}/c/cpu.max", "max 100000") in plan.writes
