"""The store's bound through choose(): a fake build (no VM), a real store on disk."""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from pathlib import Path

import pytest

from cocoon.factory import choose as choose_mod
from cocoon.factory.bound import Bound
from cocoon.factory.choose import Choice, choose
from cocoon.factory.store import Store, Template
from cocoon.hypervisor.cmdline import VMPlan
from tests.unit.factory.conftest import fake_template

BIG = Bound(2, 1 << 40)


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    made: list[str] = []

    async def fake_build(store: Store, plan: VMPlan, boot_timeout: float) -> Template:
        tmpl = fake_template(store, plan, plan.vcpus, plan.memory_mib)
        made.append(tmpl.dir.name)
        return tmpl

    monkeypatch.setattr(choose_mod, "build_template", fake_build)
    return made


def start(store: Store, plan: VMPlan, params: str) -> Choice:
    shaped = replace(plan, extra_kernel_params=(params,), max_vcpus=0, memory_slots=0)
    return asyncio.run(choose(store, shaped, create=True, boot_timeout=1))


def age(store: Store, choice: Choice, t: float) -> None:
    assert choice.template is not None
    os.utime(choice.template.dir, (t, t))


def test_first_use_while_room_then_second_use_evicts_lru(
    plan: VMPlan, tmp_path: Path, builds: list[str]
) -> None:
    store = Store(tmp_path / "t", BIG)
    a = start(store, plan, "a=1")
    b = start(store, plan, "b=1")
    assert "made on first use" in a.reason and "made on first use" in b.reason
    age(store, a, 2000)
    age(store, b, 1000)  # b is the least recently used
    c = start(store, plan, "c=1")  # a one-off shape in a full store: cold boot
    assert c.template is None and not c.warning and "second use" in c.reason
    assert len(builds) == 2 and len(store.all()) == 2
    again = start(store, plan, "c=1")
    assert again.template is not None and "made on its second use" in again.reason
    assert {p.name for p in store.all()} == {a.template.dir.name, again.template.dir.name}  # type: ignore[union-attr]
    assert "least recently used" in (store.root / "factory.log").read_text()


def test_a_use_counts_as_recent(plan: VMPlan, tmp_path: Path, builds: list[str]) -> None:
    store = Store(tmp_path / "t", BIG)
    a, b = start(store, plan, "a=1"), start(store, plan, "b=1")
    age(store, a, 1000)
    age(store, b, 2000)
    assert start(store, plan, "a=1").template == a.template  # a clone: a is now recent
    start(store, plan, "c=1")
    start(store, plan, "c=1")
    assert b.template is not None and not b.template.dir.exists()
    assert a.template is not None and a.template.dir.exists()


def test_twenty_one_off_shapes_stay_bounded(
    plan: VMPlan, tmp_path: Path, builds: list[str]
) -> None:
    store = Store(tmp_path / "t", BIG)
    for i in range(20):
        start(store, plan, f"shape={i}")
    assert len(store.all()) == 2 and len(builds) == 2


def test_the_byte_bound(plan: VMPlan, tmp_path: Path, builds: list[str]) -> None:
    store = Store(tmp_path / "t", Bound(10, 1))  # smaller than any template
    got = start(store, plan, "a=1")
    assert got.template is None and "larger than the store's bound" in got.reason
    assert store.all() == []
