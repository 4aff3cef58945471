"""Guest side of hot-plugged disks (cocoon.guest.disks): found by serial, renumbered."""

from __future__ import annotations

from pathlib import Path

from cocoon.guest import disks


def test_find_by_serial(tmp_path: Path) -> None:
    for name, serial in (("vda", ""), ("vdb", "cocoon-r0"), ("vdc", "cocoon-s0\n")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "serial").write_text(serial)
    (tmp_path / "loop0").mkdir()  # no serial file
    assert disks.find_by_serial("cocoon-s0", str(tmp_path)) == "vdc"
    assert disks.find_by_serial("cocoon-r0", str(tmp_path)) == "vdb"
    assert disks.find_by_serial("cocoon-d9", str(tmp_path)) is None


def test_renumber_rewrites_the_entry_and_its_cgroup_rule() -> None:
    linux = {
        "devices": [
            {"path": "/dev/xvda", "type": "b", "major": 7, "minor": 3},
            {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229},
        ],
        "resources": {
            "devices": [
                {"allow": False, "access": "rwm"},
                {"allow": True, "type": "b", "major": 7, "minor": 3, "access": "rw"},
                {"allow": True, "type": "c", "major": 7, "minor": 3, "access": "rw"},
            ]
        },
    }
    out = disks.renumber(linux, {(7, 3): (254, 32)})
    assert out["devices"][0] == {"path": "/dev/xvda", "type": "b", "major": 254, "minor": 32}
    assert out["devices"][1]["major"] == 10
    rules = out["resources"]["devices"]
    assert (rules[1]["major"], rules[1]["minor"]) == (254, 32)
    assert (rules[2]["major"], rules[2]["minor"]) == (7, 3)  # a char rule: not this disk
    assert linux["devices"][0]["major"] == 7  # the input is not changed
