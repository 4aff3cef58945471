"""A container's ``linux.resources`` made fit for the guest's cgroup v2, as runc would.

crun in the guest runs on a pure cgroup v2 hierarchy and refuses cgroup v1-only
settings ("network limits not supported on cgroupv2"), where runc on a v2 host
ignores them: kernel memory (runc 1.1 ignores ``kernel``/``kernelTCP`` everywhere,
with a warning), the blkio leaf weights and net_cls/net_prio (no v2 controller).
Those are dropped here with a warning, before crun sees the spec. Everything that
v2 can express (weights, throttles, cpu shares, hugetlb, ...) is left for crun,
which converts it itself (e.g. ``blockIO.weight`` 500 -> ``io.weight`` 4950).
"""

from __future__ import annotations

import copy
from typing import Any

WHERE = "linux.resources"
WHY_KERNEL = "kernel memory limits do not exist in cgroup v2 (runc ignores them too)"
WHY_LEAF = "cgroup v2 has no leaf weights (runc ignores them there too)"
WHY_NETWORK = "net_cls/net_prio do not exist in cgroup v2 (runc ignores them there too)"


def guest_resources(resources: Any) -> tuple[Any, list[str]]:
    """(``resources`` without what cgroup v2 cannot express, one warning per dropped field).

    Pure: the input is not changed. Anything that is not an object is returned as
    is (the spec's validation is crun's and sizing's business).
    """
    if not isinstance(resources, dict):
        return resources, []
    out = copy.deepcopy(resources)
    warnings: list[str] = []

    def drop(section: dict[str, Any], key: str, name: str, why: str) -> None:
        if section.pop(key, None) is not None:
            warnings.append(f"{WHERE}.{name} is ignored: {why}")

    memory = out.get("memory")
    if isinstance(memory, dict):
        drop(memory, "kernel", "memory.kernel", WHY_KERNEL)
        drop(memory, "kernelTCP", "memory.kernelTCP", WHY_KERNEL)
    block = out.get("blockIO")
    if isinstance(block, dict):
        drop(block, "leafWeight", "blockIO.leafWeight", WHY_LEAF)
        devices = block.get("weightDevice")
        if isinstance(devices, list):
            for i, dev in enumerate(devices):
                if isinstance(dev, dict):
                    drop(dev, "leafWeight", f"blockIO.weightDevice[{i}].leafWeight", WHY_LEAF)
            # An entry left with neither weight means nothing (crun would write "0").
            block["weightDevice"] = [
                d for d in devices if not isinstance(d, dict) or d.get("weight") is not None
            ]
            if not block["weightDevice"]:
                del block["weightDevice"]
    if out.get("network") is not None:
        drop(out, "network", "network", WHY_NETWORK)
    return out, warnings
