"""The agent link's detach: the guest drops its long polls, the host asks them again."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cocoon.agent.client import AgentClient
from cocoon.ttrpc.client import Client
from cocoon.ttrpc.server import Server
from cocoon.ttrpc.transport import connect_unix
from cocoon.wire import agent as w
from cocoon.wire import codec


def test_detach_drops_long_polls_gates_calls_and_asks_again(tmp_path: Path) -> None:
    async def main() -> None:
        server = Server()
        exited = asyncio.Event()
        seen: list[str] = []

        async def wait(payload: bytes) -> bytes:
            seen.append("WaitProcess")
            await exited.wait()
            return codec.encode(w.WaitProcessResponse(7, 1))

        async def check(payload: bytes) -> bytes:
            seen.append("Check")
            return codec.encode(w.CheckResponse("v", "k", 1.0))

        async def detach(payload: bytes) -> bytes:
            dropped = await server.quiesce(frozenset({"WaitProcess"}))
            return codec.encode(w.DetachResponse(dropped, False))

        for name, fn in (("WaitProcess", wait), ("Check", check), ("Detach", detach)):
            server.register(w.SERVICE, name, fn)
        sock = tmp_path / "a.sock"
        listener = await server.listen_unix(str(sock))
        agent = AgentClient(Client(await connect_unix(str(sock)), "guest"))
        waiting = asyncio.ensure_future(agent.wait_process("c1"))
        await asyncio.sleep(0.05)
        assert seen == ["WaitProcess"]

        resp = await agent.detach(release_share=False)
        assert resp.dropped == 1
        # Quiet: new calls wait at the gate, the long poll is not answered and not failed.
        check = asyncio.ensure_future(agent.check())
        await asyncio.sleep(0.1)
        assert not check.done() and not waiting.done()
        assert seen == ["WaitProcess"]

        agent.resume()
        assert (await check).version == "v"
        await asyncio.sleep(0.05)
        assert seen.count("WaitProcess") == 2  # asked again after the resume
        exited.set()
        assert (await waiting).status == 7
        await agent.close()
        listener.close()

    asyncio.run(main())


def test_a_cancelled_call_is_not_asked_again(tmp_path: Path) -> None:
    async def main() -> None:
        server = Server()
        calls = 0

        async def wait(payload: bytes) -> bytes:
            nonlocal calls
            calls += 1
            await asyncio.sleep(10)
            return b"{}"

        server.register(w.SERVICE, "WaitProcess", wait)
        sock = tmp_path / "b.sock"
        listener = await server.listen_unix(str(sock))
        agent = AgentClient(Client(await connect_unix(str(sock)), "guest"))
        task = asyncio.ensure_future(agent.wait_process("c1"))
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert task.cancelled() and calls == 1
        await agent.close()
        listener.close()

    asyncio.run(main())
