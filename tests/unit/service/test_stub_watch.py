"""The service watches the host process standing for each guest process (pidfd)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path
from typing import Any

from cocoon.assets import GuestAssets
from cocoon.config.settings import Settings
from cocoon.service.persist import SandboxPaths
from cocoon.service.sandbox import ContainerRecord, Sandbox, SandboxState


class FakeAgent:
    def __init__(self) -> None:
        self.signals: list[tuple[str, str, int, bool]] = []
        self.exits: dict[str, asyncio.Future[int]] = {}

    async def signal_process(self, cid: str, exec_id: str, sig: int, all_procs: bool) -> None:
        self.signals.append((cid, exec_id, sig, all_procs))
        self.exits[exec_id].set_result(128 + sig)

    async def wait_process(self, cid: str, exec_id: str) -> Any:
        fut = self.exits.setdefault(exec_id, asyncio.get_running_loop().create_future())
        status = await fut

        class Resp:
            pass

        resp = Resp()
        resp.status, resp.exited_at_ns = status, 1  # type: ignore[attr-defined]
        return resp


def _sandbox(tmp_path: Path) -> tuple[Sandbox, FakeAgent]:
    p = tmp_path / "x"
    assets = GuestAssets(kernel=p, initrd=p, image=p, key="k", kernel_version="v")
    sb = Sandbox(SandboxPaths(tmp_path, "sb"), Settings(), assets, "tcg")
    agent = FakeAgent()
    sb.agent = agent  # type: ignore[assignment]
    sb.state = SandboxState.READY
    return sb, agent


def test_a_dead_stub_kills_its_guest_process(tmp_path: Path) -> None:
    async def main() -> None:
        sb, agent = _sandbox(tmp_path)
        ctr = ContainerRecord("c", tmp_path, status="running")
        sb.containers["c"] = ctr
        ctr.init = sb._track("c", "")
        ctr.execs["e1"] = sb._track("c", "e1")
        await asyncio.sleep(0)
        init_stub = subprocess.Popen(["sleep", "30"])
        exec_stub = subprocess.Popen(["sleep", "30"])
        sb.register_process("c", "", init_stub.pid, False)
        sb.register_process("c", "e1", exec_stub.pid, False)
        exec_stub.kill()
        exec_stub.wait()
        assert await asyncio.wait_for(sb.wait("c", "e1"), 5) == (137, 1)
        assert agent.signals == [("c", "e1", signal.SIGKILL, False)]  # the exec only
        assert ctr.status == "running"
        init_stub.kill()
        init_stub.wait()
        assert await asyncio.wait_for(sb.wait("c", ""), 5) == (137, 1)
        assert agent.signals[-1] == ("c", "", signal.SIGKILL, True)  # the whole container
        assert ctr.status == "stopped"

    asyncio.run(main())


def test_a_stub_exiting_after_its_process_kills_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        sb, agent = _sandbox(tmp_path)
        ctr = ContainerRecord("c", tmp_path, status="running")
        sb.containers["c"] = ctr
        ctr.init = sb._track("c", "")
        await asyncio.sleep(0)
        stub = subprocess.Popen(["sleep", "30"])
        sb.register_process("c", "", stub.pid, False)
        agent.exits[""].set_result(0)
        assert await asyncio.wait_for(sb.wait("c", ""), 5) == (0, 1)
        assert ctr.init.host_watch == -1  # the pidfd is closed with the process
        stub.kill()
        stub.wait()
        await asyncio.sleep(0.1)
        assert agent.signals == []

    asyncio.run(main())
