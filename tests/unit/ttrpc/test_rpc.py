"""Client and server over a real unix socket."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cocoon.ttrpc.client import Client
from cocoon.ttrpc.server import Server
from cocoon.ttrpc.status import Code, ConnectionLost, RPCError
from cocoon.ttrpc.transport import connect_unix


async def _server(path: Path) -> tuple[Server, asyncio.AbstractServer]:
    server = Server()

    async def echo(payload: bytes) -> bytes:
        return payload[::-1]

    async def slow(payload: bytes) -> bytes:
        await asyncio.sleep(float(payload.decode()))
        return b"late"

    async def fail(payload: bytes) -> bytes:
        raise RPCError(Code.NOT_FOUND, "no such thing")

    async def crash(payload: bytes) -> bytes:
        raise ValueError("boom")

    for name, fn in (("Echo", echo), ("Slow", slow), ("Fail", fail), ("Crash", crash)):
        server.register("test.Svc", name, fn)
    return server, await server.listen_unix(str(path))


def test_calls_errors_and_concurrency(tmp_path: Path) -> None:
    async def main() -> None:
        sock = tmp_path / "s.sock"
        _, listener = await _server(sock)
        client = Client(await connect_unix(str(sock)), "test")
        assert await client.call("test.Svc", "Echo", b"abc") == b"cba"
        # Responses come back by stream id, not in order.
        slow = asyncio.ensure_future(client.call("test.Svc", "Slow", b"0.2"))
        fast = await client.call("test.Svc", "Echo", b"xy")
        assert fast == b"yx" and not slow.done()
        assert await slow == b"late"
        with pytest.raises(RPCError) as err:
            await client.call("test.Svc", "Fail", b"")
        assert err.value.code == Code.NOT_FOUND
        with pytest.raises(RPCError) as err:
            await client.call("test.Svc", "Crash", b"")
        assert err.value.code == Code.UNKNOWN and "boom" in err.value.message
        with pytest.raises(RPCError) as err:
            await client.call("test.Svc", "Nope", b"")
        assert err.value.code == Code.UNIMPLEMENTED
        with pytest.raises(TimeoutError):
            await client.call("test.Svc", "Slow", b"5", timeout=0.1)
        await client.close()
        listener.close()

    asyncio.run(main())


def test_dead_peer_fails_pending_calls(tmp_path: Path) -> None:
    async def main() -> None:
        sock = tmp_path / "d.sock"
        conns: list[asyncio.StreamWriter] = []

        async def on_connect(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            conns.append(w)
            await r.read(100)  # swallow the request, never answer

        listener = await asyncio.start_unix_server(on_connect, str(sock))
        client = Client(await connect_unix(str(sock)), "guest")
        pending = asyncio.ensure_future(client.call("x", "Wait", b"", timeout=None))
        await asyncio.sleep(0.1)
        conns[0].close()
        with pytest.raises(ConnectionLost, match="guest"):
            await asyncio.wait_for(pending, 5)
        with pytest.raises(ConnectionLost):
            await client.call("x", "Later", b"")
        listener.close()

    asyncio.run(main())
