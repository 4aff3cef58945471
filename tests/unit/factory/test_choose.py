from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from cocoon.factory.choose import Choice, choose
from cocoon.factory.key import Shape
from cocoon.factory.store import Store
from cocoon.hypervisor.cmdline import SharePlan, VMPlan
from tests.unit.factory.conftest import fake_template


def pick(store: Store, plan: VMPlan) -> Choice:
    return asyncio.run(choose(store, plan, create=False, boot_timeout=1))


def test_the_exact_template_wins(plan: VMPlan, tmp_path: Path) -> None:
    store = Store(tmp_path / "t")
    fake_template(store, plan, 1, 128)
    exact = fake_template(store, plan)
    got = pick(store, plan)
    assert got.template == exact and not got.warning
    assert got.reason.startswith(f"clone of template {exact.meta.key[:12]}")


def test_the_largest_smaller_template_that_can_grow(plan: VMPlan, tmp_path: Path) -> None:
    store = Store(tmp_path / "t")
    fake_template(store, plan, 1, 128)
    fake_template(store, plan, 1, 256)
    two = fake_template(store, plan, 2, 128)  # vCPUs count first: they are the scarcer
    fake_template(store, plan, 1, 1024)  # too big
    got = pick(store, replace(plan, vcpus=2, memory_mib=512))
    assert got.template == two
    assert "hot-plugged up to 2 vCPU, 512 MiB" in got.reason
    got = pick(store, replace(plan, vcpus=1, memory_mib=512))
    assert got.template is not None and got.template.meta.shape == Shape(1, 256)


def test_no_growth_without_hotplug(plan: VMPlan, tmp_path: Path) -> None:
    static = replace(plan, max_vcpus=0, max_memory_mib=0, memory_slots=0)
    store = Store(tmp_path / "t")
    fake_template(store, static, 1, 256)
    got = pick(store, replace(static, memory_mib=512))
    assert got.template is None and not got.warning
    assert got.reason.startswith("cold boot: no template fits")


def test_a_corrupt_template_means_cold_boot_with_a_warning(plan: VMPlan, tmp_path: Path) -> None:
    store = Store(tmp_path / "t")
    tmpl = fake_template(store, plan)
    with open(tmpl.memory, "r+b") as fh:
        fh.write(b"x")
    got = pick(store, plan)
    assert got.template is None and got.warning
    assert "corrupt" in got.reason and got.reason.endswith("cold boot")
    assert store.all() == []  # removed, so that the next start makes a sound one


def test_stale_templates_are_not_used(plan: VMPlan, tmp_path: Path) -> None:
    store = Store(tmp_path / "t")
    fake_template(store, plan)
    plan.image.write_bytes(b"the assets were rebuilt")
    got = pick(store, plan)
    assert got.template is None and not got.warning


def test_virtio_fs_cannot_be_templated(plan: VMPlan, tmp_path: Path) -> None:
    vfs = replace(plan, share=SharePlan("virtiofs", socket=tmp_path / "v.sock"))
    got = pick(Store(tmp_path / "t"), vfs)
    assert got.template is None and "virtio-fs" in got.reason


def test_free_page_reporting_cannot_be_templated(plan: VMPlan, tmp_path: Path) -> None:
    got = pick(Store(tmp_path / "t"), replace(plan, free_page_reporting=True))
    assert got.template is None and "punches holes" in got.reason


def test_missing_assets_leave_the_error_to_the_cold_boot(plan: VMPlan, tmp_path: Path) -> None:
    plan.kernel.unlink()
    got = pick(Store(tmp_path / "t"), plan)
    assert got.template is None and str(plan.kernel) in got.reason


def test_unreadable_metadata_means_cold_boot_with_a_warning(plan: VMPlan, tmp_path: Path) -> None:
    store = Store(tmp_path / "t")
    tmpl = fake_template(store, plan)
    (tmpl.dir / "meta.json").write_text("{broken")
    got = pick(store, plan)
    assert got.template is None and got.warning and "unreadable metadata" in got.reason
    assert store.all() == []
