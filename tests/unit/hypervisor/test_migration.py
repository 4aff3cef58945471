from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from cocoon.errors import CocoonError, Unavailable
from cocoon.hypervisor import migration as mig
from cocoon.hypervisor.qemu import QemuVM


def test_capabilities_and_parameters_as_data() -> None:
    t = mig.Tuning()
    assert mig.source_capabilities(t) == [
        {"capability": "events", "state": True},
        {"capability": "pause-before-switchover", "state": True},
        {"capability": "x-ignore-shared", "state": False},  # a template clone's is on
    ]
    # The destination sets nothing that changes the stream's format.
    assert mig.destination_capabilities(t) == [{"capability": "events", "state": True}]
    # Far above QEMU's default 32 MiB/s: the link is the service's own.
    assert mig.source_parameters(t) == {"max-bandwidth": 10 << 30, "downtime-limit": 300}
    t2 = mig.Tuning(max_bandwidth=1 << 20, downtime_limit_ms=50, pause_before_switchover=False)
    assert mig.source_parameters(t2) == {"max-bandwidth": 1 << 20, "downtime-limit": 50}
    assert {"capability": "pause-before-switchover", "state": False} in mig.source_capabilities(t2)


@pytest.mark.parametrize(
    "kw", [{"mirror_copy_mode": "sync"}, {"max_bandwidth": 0}, {"downtime_limit_ms": -1}]
)
def test_bad_tuning_is_refused(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        mig.Tuning(**kw)


def test_nbd_and_mirror_arguments() -> None:
    # QEMU 7.2's nbd-server-start takes a SocketAddressLegacy ("Parameter 'addr.data'
    # is missing" for the flat form); blockdev-add's nbd server is a flat SocketAddress.
    assert mig.nbd_server_addr("nbd-listen") == {"type": "fd", "data": {"str": "nbd-listen"}}
    assert mig.export_args("rootscr0") == {
        "device": "rootscr0",
        "name": "rootscr0",
        "writable": True,
    }
    assert mig.client_args("rootscr0") == {
        "driver": "nbd",
        "node-name": "mig-rootscr0",
        "server": {"type": "fd", "str": "nbd-rootscr0"},
        "export": "rootscr0",
    }
    args = mig.mirror_args("rootscr0", mig.Tuning(mirror_copy_mode="write-blocking"))
    assert args == {
        "job-id": "mirror-rootscr0",
        "device": "rootscr0",
        "target": "mig-rootscr0",
        "sync": "full",
        "copy-mode": "write-blocking",
        "auto-dismiss": False,
    }
    assert "target-is-zero" not in args  # blockdev-mirror in 7.2: "unexpected"


def test_stats_from_query_migrate() -> None:
    info = {
        "status": "completed",
        "total-time": 470,
        "downtime": 20,
        "setup-time": 2,
        "ram": {"transferred": 84 << 20, "total": 256 << 20, "dirty-sync-count": 3},
    }
    s = mig.stats_from(info)
    assert (s.status, s.qemu_total_ms, s.downtime_ms, s.setup_ms) == ("completed", 470, 20, 2)
    assert (s.transferred, s.ram_total, s.dirty_sync_count) == (84 << 20, 256 << 20, 3)
    assert mig.stats_from({}).status == ""


class FakeVM:
    """QMP as a script: the migration runs through the given states."""

    def __init__(self, states: list[str], fail: str = "") -> None:
        self.states = states
        self.fail = fail
        self.calls: list[tuple[str, Any]] = []
        self.exited = asyncio.Event()
        self.exit_code = None
        self.running = True
        self.jobs: dict[str, dict[str, Any]] = {}
        self.passed: list[str] = []

    def _tail_log(self) -> str:
        return ""

    async def status(self) -> str:
        return "running" if self.running else "paused"

    async def _pass_fd(self, fd: int, name: str) -> None:
        self.passed.append(name)

    async def execute(self, cmd: str, args: dict[str, Any] | None = None) -> Any:
        self.calls.append((cmd, args))
        if cmd == self.fail:
            raise Unavailable(f"QMP {cmd} failed")
        if cmd == "query-migrate":
            status = self.states.pop(0) if len(self.states) > 1 else self.states[0]
            if status == "pre-switchover":
                self.running = False
            info: dict[str, Any] = {"status": status}
            if status == "completed":
                info.update({"total-time": 5, "downtime": 1, "ram": {"transferred": 9}})
            return info
        if cmd == "migrate_cancel":
            self.states = ["cancelled"]
        if cmd == "blockdev-mirror":
            job_id = args["job-id"]  # type: ignore[index]
            self.jobs[job_id] = {
                "device": job_id,
                "ready": True,
                "len": 8,
                "offset": 8,
                "job-status": "ready",
            }
        if cmd == "block-job-cancel":
            job = self.jobs.get(args["device"])  # type: ignore[index]
            if job is not None:
                job["job-status"] = "concluded"
        if cmd == "job-dismiss":
            self.jobs.pop(args["id"], None)  # type: ignore[index]
        if cmd == "query-block-jobs":
            return [dict(j) for j in self.jobs.values()]
        if cmd == "query-jobs":
            return [{"id": k, "status": j["job-status"]} for k, j in self.jobs.items()]
        if cmd == "cont":
            self.running = True
        return {}


def _names(vm: FakeVM) -> list[str]:
    return [c for c, _ in vm.calls if not c.startswith("query-")]


def test_migrate_out_completes_the_mirror_at_the_switchover() -> None:
    vm = FakeVM(["active", "pre-switchover", "device", "completed"])

    async def go() -> mig.MigrationStats:
        fake = cast(QemuVM, vm)
        nodes = await mig.mirror_disks(fake, [("rootscr0", 5)])
        return await mig.migrate_out(fake, 6, nodes)

    stats = asyncio.run(go())
    assert vm.passed == ["nbd-rootscr0", "migrate-out"]
    assert _names(vm) == [
        "blockdev-add",
        "blockdev-mirror",
        "migrate-set-capabilities",
        "migrate-set-parameters",
        "migrate",
        "block-job-cancel",  # soft: the target is a copy, the source keeps its disk
        "job-dismiss",
        "migrate-continue",
        "block-job-cancel",  # drop_mirrors after success: the job is gone already
        "job-dismiss",
        "blockdev-del",
    ]
    assert ("block-job-cancel", {"device": "mirror-rootscr0"}) in vm.calls
    assert stats.status == "completed" and stats.disk_bytes == {"rootscr0": 8}


def test_a_failure_at_the_switchover_leaves_the_source_running() -> None:
    vm = FakeVM(["active", "pre-switchover"], fail="migrate-continue")

    async def go() -> None:
        fake = cast(QemuVM, vm)
        nodes = await mig.mirror_disks(fake, [("rootscr0", 5)])
        await mig.migrate_out(fake, 6, nodes)

    with pytest.raises(CocoonError, match="migrate-continue"):
        asyncio.run(go())
    names = _names(vm)
    after = names[names.index("migrate-continue") :]
    assert after[:2] == ["migrate-continue", "migrate_cancel"]
    assert "blockdev-del" in after and after[-1] == "cont"
    assert vm.running


def test_a_failed_migration_raises_with_qemus_reason() -> None:
    vm = FakeVM(["active", "failed"])

    async def go() -> None:
        await mig.migrate_out(cast(QemuVM, vm), 6)

    with pytest.raises(CocoonError, match="the live migration failed"):
        asyncio.run(go())
    assert "migrate_cancel" in _names(vm) and "cont" not in _names(vm)  # it never paused


def test_mirrored_disks_need_the_pause_before_switchover() -> None:
    vm = FakeVM(["active"])
    no_pause = mig.Tuning(pause_before_switchover=False)
    with pytest.raises(ValueError):
        asyncio.run(mig.migrate_out(cast(QemuVM, vm), 6, ["rootscr0"], no_pause))
