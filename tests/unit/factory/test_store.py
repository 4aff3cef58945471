from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import pytest

from cocoon.errors import CocoonError
from cocoon.factory.store import Store
from cocoon.hypervisor.cmdline import VMPlan
from tests.unit.factory.conftest import fake_template


def test_published_template_is_sealed_and_sound(plan: VMPlan, tmp_path: Path) -> None:
    store = Store(tmp_path / "t")
    tmpl = fake_template(store, plan)
    assert stat.S_IMODE(os.stat(store.root).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmpl.memory).st_mode) == 0o400
    assert stat.S_IMODE(os.stat(tmpl.state).st_mode) == 0o400
    assert store.problem(tmpl) == ""
    found = store.find(tmpl.meta.key)
    assert found is not None and found.meta == tmpl.meta
    assert [p.name for p in store.all()] == [tmpl.dir.name]  # no work dir left


def test_a_written_ram_file_is_corrupt(plan: VMPlan, tmp_path: Path) -> None:
    store = Store(tmp_path / "t")
    tmpl = fake_template(store, plan)
    with open(tmpl.memory, "r+b") as fh:
        fh.write(b"x")
    assert "RAM file was modified" in store.problem(tmpl)


def test_a_changed_state_file_is_corrupt(plan: VMPlan, tmp_path: Path) -> None:
    store = Store(tmp_path / "t")
    tmpl = fake_template(store, plan)
    os.chmod(tmpl.state, 0o600)
    tmpl.state.write_bytes(b"other state!")
    assert "checksum" in store.problem(tmpl)


def test_rebuilt_assets_make_it_stale(plan: VMPlan, tmp_path: Path) -> None:
    store = Store(tmp_path / "t")
    tmpl = fake_template(store, plan)
    plan.initrd.write_bytes(b"rebuilt")
    assert store.problem(tmpl).startswith(f"stale: {plan.initrd} changed")
    plan.initrd.unlink()
    assert store.problem(tmpl) == f"stale: {plan.initrd} is gone"


def test_unreadable_metadata_is_an_error(plan: VMPlan, tmp_path: Path) -> None:
    store = Store(tmp_path / "t")
    tmpl = fake_template(store, plan)
    (tmpl.dir / "meta.json").write_text("{not json")
    with pytest.raises(CocoonError, match="unreadable metadata"):
        store.find(tmpl.meta.key)
    (tmpl.dir / "meta.json").write_text(json.dumps({"key": 1}))
    with pytest.raises(CocoonError, match="unreadable metadata"):
        store.load(tmpl.dir)


def test_remove_and_leftover_work_dirs(plan: VMPlan, tmp_path: Path) -> None:
    store = Store(tmp_path / "t")
    tmpl = fake_template(store, plan)
    dead = store.root / f".{tmpl.meta.key[:32]}.tmp-999999"
    dead.mkdir()
    work = store.new_work_dir(tmpl.meta.key)
    assert not dead.exists() and work.exists()
    store.remove(tmpl.dir)
    assert store.find(tmpl.meta.key) is None
    assert store.all() == []


def test_the_lock_is_exclusive_and_times_out(tmp_path: Path) -> None:
    store = Store(tmp_path / "t")

    async def main() -> None:
        async with store.locked(1):
            other = Store(tmp_path / "t")
            with pytest.raises(CocoonError, match="stayed locked"):
                async with other.locked(0.1):
                    pass
        async with store.locked(0.1):
            pass

    asyncio.run(main())


def test_prune_removes_only_stale_templates(plan: VMPlan, tmp_path: Path) -> None:
    from dataclasses import replace

    store = Store(tmp_path / "t")
    stale = fake_template(store, plan)
    other_image = tmp_path / "assets" / "other.erofs"
    other_image.write_bytes(b"another image")
    keep = fake_template(store, replace(plan, image=other_image))
    plan.image.write_bytes(b"rebuilt")
    assert store.prune_stale() == [stale.dir.name]
    assert store.all() == [keep.dir]
    assert "removed template" in (store.root / "factory.log").read_text()
