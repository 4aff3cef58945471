from __future__ import annotations

import copy

from cocoon.oci.guestcg import guest_resources
from cocoon.oci.spec import vm_compatibility


def test_v1_only_settings_are_dropped_with_one_warning_each() -> None:
    res = {
        "memory": {"limit": 100, "kernel": 50, "kernelTCP": 10},
        "blockIO": {
            "weight": 500,
            "leafWeight": 300,
            "weightDevice": [
                {"major": 8, "minor": 0, "weight": 200, "leafWeight": 100},
                {"major": 8, "minor": 16, "leafWeight": 100},
            ],
        },
        "network": {"classID": 1},
        "cpu": {"shares": 512},
    }
    before = copy.deepcopy(res)
    out, warnings = guest_resources(res)
    assert res == before  # pure
    assert out == {
        "memory": {"limit": 100},
        "blockIO": {"weight": 500, "weightDevice": [{"major": 8, "minor": 0, "weight": 200}]},
        "cpu": {"shares": 512},
    }
    fields = [w.split(" is ignored")[0] for w in warnings]
    assert fields == [
        "linux.resources.memory.kernel",
        "linux.resources.memory.kernelTCP",
        "linux.resources.blockIO.leafWeight",
        "linux.resources.blockIO.weightDevice[0].leafWeight",
        "linux.resources.blockIO.weightDevice[1].leafWeight",
        "linux.resources.network",
    ]


def test_what_v2_expresses_is_left_for_crun() -> None:
    res = {"memory": {"limit": 1}, "hugepageLimits": [{"pageSize": "2MB", "limit": 2097152}]}
    assert guest_resources(res) == (res, [])
    assert guest_resources(None) == (None, [])
    assert guest_resources({"blockIO": {"weightDevice": [{"leafWeight": 1}]}})[0] == {"blockIO": {}}


def test_create_warns_about_what_it_drops() -> None:
    spec = {"linux": {"resources": {"memory": {"kernel": 1}}}}
    errors, warnings = vm_compatibility(spec)
    assert errors == [] and len(warnings) == 1 and "memory.kernel" in warnings[0]
