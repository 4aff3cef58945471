"""The guest's clock parameters from the host's TSC (no real kernel log needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cocoon.hypervisor import hostclock as hc

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
cpu MHz\t\t: 2100.000
flags\t\t: fpu tsc constant_tsc nonstop_tsc tsc_known_freq rdtscp

processor\t: 1
cpu MHz\t\t: 800.000
flags\t\t: fpu tsc constant_tsc nonstop_tsc tsc_known_freq rdtscp
"""


@pytest.mark.parametrize(
    ("log", "khz"),
    [
        ("[    0.000063] tsc: Detected 2100.000 MHz processor", 2100000),
        ("tsc: Detected 2596.120 MHz processor", 2596120),
        ("tsc: Detected 2596.1 MHz processor", 2596100),
        (
            "tsc: Detected 2500.000 MHz processor\n"
            "tsc: Refined TSC clocksource calibration: 2499.998 MHz",
            2499998,
        ),
        ("clocksource: Switched to clocksource tsc", None),
        ("", None),
    ],
)
def test_tsc_frequency_from_the_kernel_log(log: str, khz: int | None) -> None:
    assert hc.tsc_khz_from_log(log) == khz


def test_cpuinfo_counts_only_with_a_constant_known_tsc() -> None:
    assert hc.tsc_khz_from_cpuinfo(CPUINFO) == 2100000  # the first CPU's figure
    assert hc.tsc_khz_from_cpuinfo(CPUINFO.replace("tsc_known_freq", "")) is None
    assert hc.tsc_khz_from_cpuinfo(CPUINFO.replace("constant_tsc", "")) is None
    assert hc.tsc_khz_from_cpuinfo("cpu MHz : fast\nflags : constant_tsc tsc_known_freq") is None


@pytest.mark.parametrize(
    ("khz", "params"),
    [
        (2500000, ("tsc_early_khz=2500000", "lpj=10000000")),  # the old fixed figures
        (2100000, ("tsc_early_khz=2100000", "lpj=8400000")),
        (2596120, ("tsc_early_khz=2596120", "lpj=10384480")),
        (0, ()),
    ],
)
def test_kernel_params_follow_the_tsc(khz: int, params: tuple[str, ...]) -> None:
    assert hc.kernel_params(khz) == params


def test_the_detection_is_cached_for_this_host_boot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    boot = tmp_path / "boot_id"
    boot.write_text("boot-1\n")
    monkeypatch.setattr(hc, "BOOT_ID", boot)
    calls: list[int] = []

    def detect() -> int:
        calls.append(1)
        return 2100000

    monkeypatch.setattr(hc, "detect_tsc_khz", detect)
    cache = tmp_path / "run" / "host-clock.json"
    assert hc.host_tsc_khz(cache) == 2100000
    assert hc.host_tsc_khz(cache) == 2100000
    assert len(calls) == 1
    assert json.loads(cache.read_text()) == {"boot_id": "boot-1", "tsc_khz": 2100000}
    boot.write_text("boot-2\n")  # the host rebooted (maybe onto other hardware)
    assert hc.host_tsc_khz(cache) == 2100000
    assert len(calls) == 2


def test_kmsg_records_are_read_until_the_end(tmp_path: Path) -> None:
    log = tmp_path / "kmsg"
    log.write_bytes(b"6,1,63,-;tsc: Detected 2100.000 MHz processor\n")
    assert hc.tsc_khz_from_log(hc._read_kmsg(str(log))) == 2100000
    assert hc._read_kmsg(str(tmp_path / "missing")) == ""
