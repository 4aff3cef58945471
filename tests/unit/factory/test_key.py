from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from cocoon.factory.key import Shape, can_grow, fingerprints, template_argv, template_key
from cocoon.hypervisor.cmdline import VMPlan


def key(plan: VMPlan) -> str:
    return template_key(plan, fingerprints(plan))


def test_per_sandbox_paths_do_not_change_the_key(plan: VMPlan, tmp_path: Path) -> None:
    other = replace(
        plan,
        qmp_socket=tmp_path / "other" / "q",
        agent_socket=tmp_path / "other" / "a",
        console_log=tmp_path / "other" / "c",
        share=replace(plan.share, path=tmp_path / "other" / "shared") if plan.share else None,
    )
    assert key(plan) == key(other)
    argv = template_argv(plan)
    assert str(tmp_path / "sb") not in " ".join(argv)
    assert any("share=on" in a for a in argv) and "-incoming" not in argv


def test_what_the_vm_is_changes_the_key(plan: VMPlan) -> None:
    base = key(plan)
    for change in (
        {"vcpus": 2},
        {"memory_mib": 512},
        {"machine": "microvm"},
        {"extra_kernel_params": ("quiet",)},
        {"max_memory_mib": 4096},
        {"accel": "kvm"},
        {"tsc_khz": 2100000},
    ):
        assert key(replace(plan, **change)) != base, change  # type: ignore[arg-type]


def test_another_host_tsc_gives_another_template(plan: VMPlan) -> None:
    """A template made on a 2500 MHz host is never cloned on a 2100 MHz one."""
    here = replace(plan, tsc_khz=2100000)
    there = replace(plan, tsc_khz=2500000)
    assert key(here) != key(there)
    assert any("tsc_early_khz=2100000" in a for a in template_argv(here))


def test_the_debug_console_is_part_of_the_template(plan: VMPlan, tmp_path: Path) -> None:
    a = replace(plan, debug_socket=tmp_path / "vm1" / "debug.sock")
    b = replace(plan, debug_socket=tmp_path / "vm2" / "debug.sock")
    assert key(a) == key(b) != key(plan)
    assert str(tmp_path / "vm1") not in " ".join(template_argv(a))


def test_rebuilt_assets_change_the_key(plan: VMPlan) -> None:
    before = key(plan)
    plan.image.write_bytes(b"a rebuilt image")
    assert key(plan) != before


def test_a_touched_file_changes_the_key(plan: VMPlan) -> None:
    before = key(plan)
    st = os.stat(plan.kernel)
    os.utime(plan.kernel, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert key(plan) != before


def test_growing_needs_hotplug_room(plan: VMPlan) -> None:
    one = Shape(1, 256)
    assert can_grow(plan, one, Shape(2, 512))
    assert can_grow(plan, one, one)
    assert not can_grow(plan, one, Shape(3, 256))  # beyond max_vcpus
    assert not can_grow(plan, Shape(2, 256), Shape(1, 256))  # never shrinks
    assert not can_grow(plan, one, Shape(1, 4096))  # beyond max_memory
    static = replace(plan, max_vcpus=0, max_memory_mib=0, memory_slots=0)
    assert not can_grow(static, one, Shape(2, 256))
    assert not can_grow(static, one, Shape(1, 512))
    assert not can_grow(replace(plan, machine="microvm"), one, Shape(2, 256))
