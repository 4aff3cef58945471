"""The plan for linux.devices in a VM (cocoon.storage.devices)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cocoon.errors import InvalidArgument
from cocoon.storage import devices

HOST = {("c", 1, 3), ("c", 1, 5), ("b", 7, 0), ("b", 7, 1), ("c", 4, 64), ("b", 254, 0)}


def _paths(major: int, minor: int) -> Path | None:
    return Path(f"/dev/blk{major}_{minor}") if major in (7, 254) else None


def _spec(
    devs: list[dict[str, Any]],
    rules: list[dict[str, Any]] | None = None,
    caps: list[str] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"linux": {"devices": devs}}
    if rules is not None:
        spec["linux"]["resources"] = {"devices": rules}
    if caps is not None:
        spec["process"] = {"capabilities": {"bounding": caps}}
    return spec


def test_a_host_block_device_is_planned_as_a_disk_with_its_permissions() -> None:
    spec = _spec(
        [
            {"path": "/dev/xvda", "type": "b", "major": 7, "minor": 0},
            {"path": "/dev/ro", "type": "b", "major": 7, "minor": 1},
        ],
        [
            {"allow": False, "access": "rwm"},
            {"allow": True, "type": "b", "major": 7, "minor": 0, "access": "rwm"},
            {"allow": True, "type": "b", "major": 7, "minor": 1, "access": "r"},
        ],
    )
    plan = devices.plan(spec, 3, HOST, _paths)
    assert [(b.host_path, b.readonly, b.serial, b.node) for b in plan.blocks] == [
        (Path("/dev/blk7_0"), False, "cocoon-d3", "dev3"),
        (Path("/dev/blk7_1"), True, "cocoon-d4", "dev4"),
    ]
    assert plan.linux["devices"] == spec["linux"]["devices"] and not plan.guest_devices


def test_guest_served_character_devices_are_kept() -> None:
    devs = [
        {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229},
        {"path": "/dev/net/tun", "type": "c", "major": 10, "minor": 200},
        {"path": "/dev/null", "type": "c", "major": 1, "minor": 3},
    ]
    plan = devices.plan(_spec(devs), 0, HOST, _paths)
    assert plan.blocks == [] and plan.linux["devices"] == devs


@pytest.mark.parametrize(
    ("dev", "message"),
    [
        ({"path": "/dev/ttyS0", "type": "c", "major": 4, "minor": 64}, "character device 4:64"),
        ({"path": "/dev/kvm", "type": "c", "major": 10, "minor": 232}, "cannot be passed"),
        ({"path": "/dev/sdz", "type": "b", "major": 8, "minor": 0}, "no block device 8:0"),
        ({"path": "/dev/x", "type": "b", "major": -1, "minor": 0}, "major must be"),
        ({"path": "/dev/x", "type": "q", "major": 1, "minor": 0}, "unknown device type"),
    ],
)
def test_what_a_vm_cannot_pass_is_refused_in_one_line(dev: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message) as err:
        devices.plan(_spec([dev]), 0, HOST, _paths)
    assert "\n" not in str(err.value) and dev["path"] in str(err.value)


def test_a_privileged_spec_gets_no_host_device() -> None:
    every = [
        {"path": f"/dev/h{i}", "type": t, "major": a, "minor": b}
        for i, (t, a, b) in enumerate(sorted(HOST))
    ]
    caps = sorted(devices.PRIVILEGED_CAPS)
    plan = devices.plan(_spec(every, caps=caps), 0, HOST, _paths)
    assert plan.blocks == [] and plan.linux["devices"] == [] and plan.guest_devices
    # Not privileged (caps missing): the host character device is refused.
    with pytest.raises(InvalidArgument, match="character device 4:64"):
        devices.plan(_spec(every, caps=["CAP_CHOWN"]), 0, HOST, _paths)


def test_explicit_devices_with_all_caps_are_not_taken_for_privileged() -> None:
    one = [{"path": "/dev/xvda", "type": "b", "major": 7, "minor": 0}]
    plan = devices.plan(_spec(one, caps=sorted(devices.PRIVILEGED_CAPS)), 0, HOST, _paths)
    assert len(plan.blocks) == 1 and not plan.guest_devices


def test_host_block_path_reads_devname(tmp_path: Path) -> None:
    (tmp_path / "7:3").mkdir()
    (tmp_path / "7:3" / "uevent").write_text("MAJOR=7\nMINOR=3\nDEVNAME=loop3\nDEVTYPE=disk\n")
    (tmp_path / "7:4").mkdir()
    (tmp_path / "7:4" / "uevent").write_text("DEVNAME=../etc/passwd\n")
    assert devices.host_block_path(7, 3, str(tmp_path)) == Path("/dev/loop3")
    assert devices.host_block_path(7, 4, str(tmp_path)) is None
    assert devices.host_block_path(7, 5, str(tmp_path)) is None


def test_privileged_without_host_devices_gets_the_guests() -> None:
    caps = sorted(devices.PRIVILEGED_CAPS)
    allow_all = [{"allow": True, "access": "rwm"}]
    assert devices.plan(_spec([], allow_all, caps), 0, HOST, _paths).guest_devices
    # Every capability but the default device rules: not privileged.
    rules = [
        {"allow": False, "access": "rwm"},
        {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
    ]
    assert not devices.plan(_spec([], rules, caps), 0, HOST, _paths).guest_devices
    assert not devices.plan(_spec([], allow_all, ["CAP_CHOWN"]), 0, HOST, _paths).guest_devices
