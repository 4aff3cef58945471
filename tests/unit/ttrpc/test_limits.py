"""ttRPC's 4 MiB message limit: an error that says what was too large, never a hang
or an internal sentence, for requests and replies, async and blocking clients."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from cocoon.ttrpc import sync
from cocoon.ttrpc.client import Client
from cocoon.ttrpc.framing import MAX_PAYLOAD
from cocoon.ttrpc.server import Server
from cocoon.ttrpc.status import Code, RPCError
from cocoon.ttrpc.transport import connect_unix

BIG = b"x" * (MAX_PAYLOAD + 1)


def _server() -> Server:
    server = Server()

    async def echo(payload: bytes) -> bytes:
        return payload

    async def huge(payload: bytes) -> bytes:
        return BIG

    server.register("t.S", "Echo", echo)
    server.register("t.S", "Huge", huge)
    return server


def _is_size_error(exc: RPCError, what: str) -> None:
    assert exc.code == Code.RESOURCE_EXHAUSTED
    assert what in exc.message and "4 MiB" in exc.message, exc.message


def test_async_client(tmp_path: Path) -> None:
    async def main() -> None:
        sock = tmp_path / "s.sock"
        listener = await _server().listen_unix(str(sock))
        client = Client(await connect_unix(str(sock)), "test")
        with pytest.raises(RPCError) as err:
            await client.call("t.S", "Echo", BIG, timeout=5)
        _is_size_error(err.value, "Echo: the request")
        with pytest.raises(RPCError) as err:
            await client.call("t.S", "Huge", b"", timeout=5)
        _is_size_error(err.value, "Huge: the reply")
        assert await client.call("t.S", "Echo", b"still fine", timeout=5) == b"still fine"
        await client.close()
        listener.close()

    asyncio.run(main())


def test_blocking_client(tmp_path: Path) -> None:
    sock = tmp_path / "s.sock"
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    async def serve() -> None:
        await _server().listen_unix(str(sock))
        ready.set()

    tasks: list[asyncio.Task[None]] = []

    def run() -> None:
        tasks.append(loop.create_task(serve()))
        loop.run_forever()
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(5)
    try:
        with pytest.raises(RPCError) as err:
            sync.call(str(sock), "t.S", "Echo", BIG, 5)
        _is_size_error(err.value, "Echo: the request")
        with pytest.raises(RPCError) as err:
            sync.call(str(sock), "t.S", "Huge", b"", 5)
        _is_size_error(err.value, "Huge: the reply")
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
