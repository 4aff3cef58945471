from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from cocoon.config.schema import DEFAULTS
from cocoon.errors import InvalidArgument
from cocoon.resources import sizing as sz
from cocoon.resources.sizing import SandboxSize, Workload

MIB = 1 << 20
QUOTA, PERIOD, SHARES, MEMORY = (
    sz.SANDBOX_CPU_QUOTA,
    sz.SANDBOX_CPU_PERIOD,
    sz.SANDBOX_CPU_SHARES,
    sz.SANDBOX_MEMORY,
)


def spec(**resources: Any) -> dict[str, Any]:
    return {"ociVersion": "1.2.0", "linux": {"resources": resources}}


# --- the formulas ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quota", "period", "cpus"),
    [
        (150000, 100000, 1.5),
        (50000, 100000, 0.5),
        (220000, 100000, 2.2),
        (-1, 100000, 0.0),
        (None, 100000, 0.0),
        (100000, 0, 0.0),
        (100000, None, 0.0),
        (0, 100000, 0.0),
        (-1, 0, 0.0),
    ],
)
def test_cpus_from_quota(quota: int | None, period: int | None, cpus: float) -> None:
    assert sz.cpus_from_quota(quota, period) == pytest.approx(cpus)


def test_cpus_from_quota_negative_period() -> None:
    with pytest.raises(InvalidArgument):
        sz.cpus_from_quota(100000, -1)


@pytest.mark.parametrize(
    ("n", "mib"),
    [(None, 0), (-1, 0), (0, 0), (1, 0), (MIB - 1, 0), (MIB, 1), (1048576, 1), (805306368, 768)],
)
def test_mib_from_bytes(n: int | None, mib: int) -> None:
    assert sz.mib_from_bytes(n) == mib


@pytest.mark.parametrize(
    ("cpus", "n"),
    [
        (0.0, 0),
        (0.1, 1),
        (1.0, 1),
        (2.2, 3),
        (2.5, 3),
        (1 / 3 + 1 / 3 + 1 / 3, 1),
        (0.1 + 0.2 + 0.7, 1),
    ],
)
def test_round_up_vcpus(cpus: float, n: int) -> None:
    assert sz.round_up_vcpus(cpus) == n


@pytest.mark.parametrize(
    ("text", "n"), [("", 0), ("0", 1), ("0-3", 4), ("0-3,6", 5), ("0-1,1-2", 3), (" 2 , 4-5 ", 3)]
)
def test_count_cpuset(text: str, n: int) -> None:
    assert sz.count_cpuset(text) == n


@pytest.mark.parametrize("text", ["a", "3-1", "-1", "0-", "1-x", "0-99999"])
def test_bad_cpuset(text: str) -> None:
    with pytest.raises(InvalidArgument, match="cpuset"):
        sz.count_cpuset(text)


# --- sandbox annotations ------------------------------------------------------------


@pytest.mark.parametrize(
    ("ann", "cpus", "mib"),
    [
        # CalculateSandboxSizing's code comment: 2.2 CPUs -> 3 vCPUs, 1 MiB
        ({PERIOD: "100000", QUOTA: "220000", MEMORY: "1048576"}, 2.2, 1),
        # the worked example's pause container
        ({PERIOD: "100000", QUOTA: "200000", MEMORY: "805306368"}, 2.0, 768),
        # static CPU manager: quota -1, shares decide
        ({PERIOD: "100000", QUOTA: "-1", SHARES: "2048"}, 2.0, 0),
        ({PERIOD: "100000", QUOTA: "-1", SHARES: "1500"}, 2.0, 0),
        ({PERIOD: "100000", QUOTA: "-1", SHARES: "2"}, 1.0, 0),
        ({PERIOD: "100000", QUOTA: "-1", SHARES: "0"}, 0.0, 0),
        ({PERIOD: "100000", QUOTA: "-1"}, 0.0, 0),
        # BestEffort: quota 0 or absent, shares 2 -> 0 (no fallback)
        ({PERIOD: "100000", QUOTA: "0", SHARES: "2"}, 0.0, 0),
        ({SHARES: "2"}, 0.0, 0),
        # shares only matter when the quota is < 0
        ({PERIOD: "100000", QUOTA: "50000", SHARES: "4096"}, 0.5, 0),
        # CRI-O: nothing
        ({}, 0.0, 0),
        ({MEMORY: " 268435456 "}, 0.0, 256),
        ({MEMORY: "0"}, 0.0, 0),
        ({PERIOD: "100000"}, 0.0, 0),
    ],
)
def test_sandbox_workload(ann: dict[str, str], cpus: float, mib: int) -> None:
    w = sz.sandbox_workload(ann)
    assert w.cpus == pytest.approx(cpus)
    assert w.memory_mib == mib


def test_calculate_sandbox_sizing_comment_case() -> None:
    w = sz.sandbox_workload({PERIOD: "100000", QUOTA: "220000", MEMORY: "1048576"})
    assert sz.round_up_vcpus(w.cpus) == 3
    assert w.memory_mib == 1


@pytest.mark.parametrize(
    ("ann", "message"),
    [
        ({QUOTA: "two"}, f"annotation {QUOTA}: expected an integer"),
        ({QUOTA: "200000"}, f"annotation {QUOTA}: 200000 without annotation {PERIOD}"),
        ({QUOTA: "200000", PERIOD: "0"}, "without"),
        ({QUOTA: "-5", PERIOD: "100000"}, f"annotation {QUOTA}: -5 is negative"),
        ({QUOTA: "100000", PERIOD: "-100000"}, f"annotation {PERIOD}: -100000 is negative"),
        ({QUOTA: "100000", PERIOD: "10"}, f"annotation {PERIOD}: 10 is outside"),
        ({QUOTA: "100000000000", PERIOD: "100000"}, "more than 1024"),
        ({SHARES: "-2"}, f"annotation {SHARES}"),
        ({SHARES: "999999"}, f"annotation {SHARES}"),
        ({MEMORY: "-1"}, f"annotation {MEMORY}: -1 is negative"),
        ({MEMORY: "1.5G"}, f"annotation {MEMORY}: expected an integer"),
        ({MEMORY: str(1 << 60)}, f"annotation {MEMORY}: {1 << 60} bytes is more than 1 PiB"),
    ],
)
def test_bad_sandbox_annotations(ann: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        sz.sandbox_workload(ann)
    assert message in str(err.value)


# --- container resources ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("resources", "workload"),
    [
        ({}, Workload()),
        (
            {"cpu": {"quota": 150000, "period": 100000}, "memory": {"limit": 512 * MIB}},
            Workload(1.5, 512 * MIB),
        ),
        ({"cpu": {"quota": -1, "period": 100000, "cpus": "0-3"}}, Workload(0.0, 0, 4)),
        ({"cpu": {"cpus": "2"}}, Workload(0.0, 0, 1)),
        ({"cpu": {"quota": 50000, "period": 100000, "cpus": "0-1"}}, Workload(0.5, 0, 2)),
        ({"cpu": {"shares": 1024}}, Workload()),
        ({"memory": {"limit": -1}}, Workload()),
        ({"memory": {"limit": 0}}, Workload()),
        ({"memory": {"limit": 9223372036854771712}}, Workload()),
        ({"memory": {"limit": (1 << 63) - 1}}, Workload()),
        (
            {
                "memory": {"limit": 256 * MIB},
                "hugepageLimits": [
                    {"pageSize": "2MB", "limit": 64 * MIB},
                    {"pageSize": "1GB", "limit": 1024 * MIB},
                ],
            },
            Workload(0.0, (256 + 64 + 1024) * MIB),
        ),
        ({"hugepageLimits": []}, Workload()),
        (None, Workload()),
    ],
)
def test_resources_workload(resources: dict[str, Any] | None, workload: Workload) -> None:
    assert sz.resources_workload(resources) == workload
    if resources is not None:
        assert sz.container_workload(spec(**resources)) == workload


def test_container_without_linux_resources() -> None:
    assert sz.container_workload({"ociVersion": "1.2.0"}) == Workload()
    assert sz.container_workload({"linux": {}}) == Workload()


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        (
            {"cpu": {"quota": 150000}},
            "linux.resources.cpu.quota: 150000 without linux.resources.cpu.period",
        ),
        ({"cpu": {"quota": 150000, "period": 0}}, "linux.resources.cpu.quota: 150000 without"),
        (
            {"cpu": {"quota": "150000", "period": 100000}},
            "linux.resources.cpu.quota: expected an integer",
        ),
        (
            {"cpu": {"quota": True, "period": 100000}},
            "linux.resources.cpu.quota: expected an integer",
        ),
        ({"cpu": {"quota": -2, "period": 100000}}, "linux.resources.cpu.quota: -2 is negative"),
        ({"cpu": {"quota": 100000, "period": -1}}, "linux.resources.cpu.period: -1 is negative"),
        (
            {"cpu": {"quota": 100000, "period": 5_000_000}},
            "linux.resources.cpu.period: 5000000 is outside",
        ),
        (
            {"cpu": {"quota": 10**12, "period": 100000}},
            "linux.resources.cpu.quota: 1000000000000/100000 is 1e+07 CPUs, more than 1024",
        ),
        ({"cpu": {"cpus": "x"}}, "linux.resources.cpu.cpus"),
        ({"cpu": {"cpus": 3}}, "linux.resources.cpu.cpus: expected a string"),
        ({"cpu": 1}, "linux.resources.cpu: expected an object"),
        ({"memory": {"limit": -100}}, "linux.resources.memory.limit: -100 is negative"),
        (
            {"memory": {"limit": 1 << 55}},
            "linux.resources.memory.limit: 36028797018963968 bytes is more than 1 PiB",
        ),
        ({"memory": {"limit": 1.5}}, "linux.resources.memory.limit: expected an integer"),
        ({"hugepageLimits": {"limit": 1}}, "linux.resources.hugepageLimits: expected a list"),
        (
            {"hugepageLimits": [{"pageSize": "2MB", "limit": -5}]},
            "linux.resources.hugepageLimits[0].limit: -5",
        ),
        ({"hugepageLimits": [1]}, "linux.resources.hugepageLimits[0].limit: expected an object"),
    ],
)
def test_bad_container_resources(resources: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        sz.container_workload(spec(**resources))
    assert message in str(err.value)


def test_update_resources_name_their_own_field() -> None:
    with pytest.raises(InvalidArgument, match=r"^resources\.cpu\.quota"):
        sz.resources_workload({"cpu": {"quota": 1000}}, "resources")


# --- static mode ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("defaults", "workload", "size"),
    [
        # the worked example, runtime-go static: 2.0 CPUs, 768 MiB -> 3 vCPUs, 2816 MiB, max 3
        ((1, 2048), Workload(2.0, 768 * MIB), (3, 2816, 3)),
        # CalculateSandboxSizing comment case: 2.2 -> +3
        ((1, 2048), Workload(2.2, 1 * MIB), (4, 2049, 4)),
        # no sizing information: the defaults
        ((1, 256), Workload(), (1, 256, 1)),
        ((2, 512), Workload(0.5), (3, 512, 3)),
        # cpuset only
        ((1, 256), Workload(0.0, 0, 4), (5, 256, 5)),
    ],
)
def test_static_size(
    defaults: tuple[int, int], workload: Workload, size: tuple[int, int, int]
) -> None:
    got = sz.static_size(*defaults, workload)
    assert (got.vcpus, got.memory_mib, got.max_vcpus) == size
    assert got.max_memory_mib == got.memory_mib


@pytest.mark.parametrize(
    ("defaults", "message"),
    [((0, 256), "default_vcpus: 0"), ((1, 64), "default_memory: 64 MiB is less than the 128")],
)
def test_static_size_bad_defaults(defaults: tuple[int, int], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        sz.static_size(*defaults, Workload())


def test_static_size_absurd() -> None:
    with pytest.raises(InvalidArgument, match="more than 1024"):
        sz.static_size(1, 256, Workload(1024.0))


# --- dynamic mode ------------------------------------------------------------------------

A = Workload(cpus=1.5, memory_bytes=512 * MIB)
B = Workload(cpus=0.5, memory_bytes=256 * MIB)


def test_worked_example_dynamic() -> None:
    def size(running: list[Workload]) -> tuple[int, int]:
        got = sz.dynamic_size(1, 2048, running, 8, 16384)
        assert (got.max_vcpus, got.max_memory_mib) == (8, 16384)
        return got.vcpus, got.memory_mib

    boot = size([])
    assert boot == (1, 2048)
    assert size([A]) == (3, 2560)  # 1 + 1.5 = 2.5 -> 3; hotplug 512
    assert size([A, B]) == (3, 2816)  # 3.0 -> 3; hotplug 256
    after_delete = size([A])
    assert after_delete[0] == 3  # still 3 vCPUs: 2.5 rounds up
    # memory is not shrunk in practice
    current = SandboxSize(3, 2816, 8, 16384)
    assert sz.next_size(current, SandboxSize(3, 2560, 8, 16384)) == current


@pytest.mark.parametrize(
    ("containers", "maxima", "size"),
    [
        ([Workload(4.0, 4096 * MIB)], (2, 1024), (2, 1024)),  # capped
        ([Workload(0.0, 0, 2), Workload(0.0, 0, 2)], (8, 4096), (5, 256)),  # cpuset only
        ([Workload(0.5, 0, 4)], (8, 4096), (2, 256)),  # quota wins over cpuset
        ([Workload(1 / 3), Workload(1 / 3), Workload(1 / 3)], (8, 4096), (2, 256)),
        (
            [Workload(0.0, MIB // 2), Workload(0.0, MIB // 2)],
            (8, 4096),
            (1, 257),
        ),  # summed in bytes
    ],
)
def test_dynamic_size(
    containers: list[Workload], maxima: tuple[int, int], size: tuple[int, int]
) -> None:
    got = sz.dynamic_size(1, 256, containers, *maxima)
    assert (got.vcpus, got.memory_mib) == size


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((4, 256, 2, 4096), "default_vcpus: 4 is more than maxvcpus 2"),
        ((1, 2048, 8, 1024), "default_memory: 2048 MiB is more than maxmemory 1024 MiB"),
        ((0, 256, 8, 4096), "default_vcpus"),
        ((1, 100, 8, 4096), "default_memory"),
    ],
)
def test_dynamic_size_errors(args: tuple[int, int, int, int], message: str) -> None:
    vcpus, memory, max_vcpus, max_memory = args
    with pytest.raises(InvalidArgument, match=message):
        sz.dynamic_size(vcpus, memory, [], max_vcpus, max_memory)


@pytest.mark.parametrize(
    ("configured", "host", "limits"),
    [
        ((0, 0), (4, 8192), (4, 8192)),
        ((2, 1024), (4, 8192), (2, 1024)),
        ((16, 65536), (4, 8192), (4, 8192)),
        ((0, 0), (4096, 8192), (1024, 8192)),
    ],
)
def test_max_limits(
    configured: tuple[int, int], host: tuple[int, int], limits: tuple[int, int]
) -> None:
    assert sz.max_limits(*configured, *host) == limits


def test_max_limits_errors() -> None:
    with pytest.raises(InvalidArgument, match="default_maxvcpus"):
        sz.max_limits(-1, 0, 4, 8192)
    with pytest.raises(InvalidArgument, match="host"):
        sz.max_limits(0, 0, 0, 8192)


# --- boot size per mode ------------------------------------------------------------------

POD = {
    "annotations": {
        sz.CONTAINER_TYPE: "sandbox",
        QUOTA: "200000",
        PERIOD: "100000",
        MEMORY: "805306368",
    },
    **spec(cpu={"quota": 10000, "period": 100000}),
}
LONE = spec(cpu={"quota": 150000, "period": 100000}, memory={"limit": 512 * MIB})


def test_boot_size_static_pod_and_lone_container() -> None:
    cfg = replace(
        DEFAULTS,
        hypervisor=replace(DEFAULTS.hypervisor, default_memory=2048),
        runtime=replace(DEFAULTS.runtime, static_sandbox_resource_mgmt=True),
    )
    assert sz.boot_size(cfg, POD, 4, 8192) == SandboxSize(3, 2816, 3, 2816)
    assert sz.boot_size(cfg, LONE, 4, 8192) == SandboxSize(3, 2560, 3, 2560)
    crio = {"annotations": {sz.CRIO_CONTAINER_TYPE: "sandbox"}}
    assert sz.boot_size(cfg, crio, 4, 8192) == SandboxSize(1, 2048, 1, 2048)


def test_boot_size_dynamic_boots_at_defaults() -> None:
    assert sz.boot_size(DEFAULTS, POD, 4, 8192) == SandboxSize(1, 256, 4, 8192)
    assert sz.boot_size(DEFAULTS, LONE, 4, 8192) == SandboxSize(1, 256, 4, 8192)


def test_hotplug_capable() -> None:
    assert sz.hotplug_capable("pc")
    assert not sz.hotplug_capable("microvm")


def test_update_of_a_quota_alone_keeps_the_period_in_force() -> None:
    merged, workload = sz.updated_workload(
        {"cpu": {"quota": 50000, "period": 100000}, "memory": {"limit": 64 << 20}},
        {"cpu": {"quota": 150000}},
    )
    assert merged == {"cpu": {"quota": 150000, "period": 100000}, "memory": {"limit": 64 << 20}}
    assert workload.cpus == 1.5 and workload.memory_bytes == 64 << 20
    _, alone = sz.updated_workload({}, {"cpu": {"quota": 50000}})
    assert alone.cpus == 0.5  # the kernel's default period
