"""The blocking one-call client against the asyncio server."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from cocoon.service import quick
from cocoon.ttrpc import sync
from cocoon.ttrpc.server import Server
from cocoon.ttrpc.status import Code, ConnectionLost, RPCError
from cocoon.wire import service as wire_service


def test_quick_client_names_the_real_service() -> None:
    assert quick.SERVICE == wire_service.SERVICE


def test_sync_call_against_the_async_server(tmp_path: Path) -> None:
    sock = tmp_path / "s.sock"
    ready = threading.Event()
    loop = asyncio.new_event_loop()

    async def serve() -> None:
        server = Server()

        async def echo(payload: bytes) -> bytes:
            return payload.upper()

        async def fail(payload: bytes) -> bytes:
            raise RPCError(Code.NOT_FOUND, "nope")

        server.register("t.S", "Echo", echo)
        server.register("t.S", "Fail", fail)
        await server.listen_unix(str(sock))
        ready.set()

    tasks: list[asyncio.Task[None]] = []

    def run() -> None:
        tasks.append(loop.create_task(serve()))
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(5)
    assert sync.call(str(sock), "t.S", "Echo", b"abc", 5) == b"ABC"
    with pytest.raises(RPCError) as err:
        sync.call(str(sock), "t.S", "Fail", b"", 5)
    assert err.value.code == Code.NOT_FOUND
    with pytest.raises(ConnectionLost):
        sync.call(str(tmp_path / "absent.sock"), "t.S", "Echo", b"", 5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
