"""AgentClient's exec ids as the guest knows them (a reused or inherited id gets a suffix)."""

from __future__ import annotations

import asyncio
from typing import Any

from cocoon.agent.client import AgentClient
from cocoon.wire import agent as w
from cocoon.wire import codec


class _Recorder:
    """Stands for the ttRPC client: records (method, decoded request)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def call(self, _service: str, method: str, body: bytes, _timeout: Any) -> bytes:
        types = {"ExecProcess": w.ExecProcessRequest, "SignalProcess": w.SignalProcessRequest}
        self.calls.append((method, codec.decode(types[method], body)))
        return codec.encode(w.Empty())


def _run(steps: Any) -> list[tuple[str, Any]]:
    rec = _Recorder()
    agent = AgentClient(rec)  # type: ignore[arg-type]
    asyncio.run(steps(agent))
    return rec.calls


def _exec(cid: str, eid: str) -> w.ExecProcessRequest:
    return w.ExecProcessRequest(cid, eid, {"args": ["true"]})


def test_a_first_exec_id_reaches_the_guest_as_is() -> None:
    async def steps(agent: AgentClient) -> None:
        await agent.exec_process(_exec("c", "e1"))
        await agent.signal_process("c", "e1", 9)
        assert agent.guest_exec_id("c", "e1") == "e1"
        assert agent.guest_exec_id("c", "") == ""

    calls = _run(steps)
    assert [c[1].exec_id for c in calls] == ["e1", "e1"]


def test_a_reused_exec_id_gets_a_unique_suffix_everywhere() -> None:
    async def steps(agent: AgentClient) -> None:
        await agent.exec_process(_exec("c", "e1"))
        await agent.exec_process(_exec("c", "e1"))  # after containerd deleted the first
        await agent.signal_process("c", "e1", 9)
        await agent.exec_process(_exec("d", "e1"))  # another container: its own ids

    calls = _run(steps)
    first, second, signal, other = (c[1].exec_id for c in calls)
    assert first == "e1" and other == "e1"
    assert second.startswith("e1-") and second != first
    assert signal == second


def test_a_restored_container_never_reuses_the_guest_ids_it_inherited() -> None:
    async def steps(agent: AgentClient) -> None:
        agent.inherit_execs("c")
        await agent.exec_process(_exec("c", "cat0"))
        await agent.exec_process(_exec("c", "cat1"))

    calls = _run(steps)
    ids = [c[1].exec_id for c in calls]
    assert all(i.startswith(("cat0-", "cat1-")) for i in ids), ids
