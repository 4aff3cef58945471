from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from cocoon.factory.key import fingerprints, template_argv, template_key
from cocoon.factory.store import MEMORY, STATE, Store, Template, TemplateMeta
from cocoon.hypervisor.cmdline import SharePlan, VMPlan


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name in ("qemu", "vmlinux", "initrd", "root.erofs"):
        path = tmp_path / "assets" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(name.encode())
        out[name] = path
    return out


@pytest.fixture
def plan(files: dict[str, Path], tmp_path: Path) -> VMPlan:
    """A dynamic pc sandbox: 1 vCPU, 256 MiB, room for 2 vCPUs and 2 GiB."""
    return VMPlan(
        qemu=str(files["qemu"]),
        kernel=files["vmlinux"],
        initrd=files["initrd"],
        image=files["root.erofs"],
        qmp_socket=tmp_path / "sb" / "qmp.sock",
        agent_socket=tmp_path / "sb" / "agent.sock",
        console_log=tmp_path / "sb" / "console.log",
        share=SharePlan("9p", path=tmp_path / "sb" / "shared"),
        max_vcpus=2,
        max_memory_mib=2048,
        memory_slots=4,
    )


def fake_template(store: Store, plan: VMPlan, vcpus: int = 1, memory_mib: int = 256) -> Template:
    """What build_template publishes, without booting anything."""
    sized = replace(plan, vcpus=vcpus, memory_mib=memory_mib)
    files = fingerprints(sized)
    key = template_key(sized, files)
    work = store.new_work_dir(key)
    (work / MEMORY).write_bytes(b"\0" * 4096)
    (work / STATE).write_bytes(b"device state")
    meta = TemplateMeta(
        key=key,
        vcpus=vcpus,
        memory_mib=memory_mib,
        machine=plan.machine,
        argv=template_argv(sized),
        files=files,
        state_sha256="",
        memory_ino=0,
        memory_size=0,
        memory_ctime_ns=0,
    )
    return store.publish(work, meta)
