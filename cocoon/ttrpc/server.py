"""The ttRPC server: dispatches requests to async handlers, one task per call."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable

from cocoon.ttrpc import framing
from cocoon.ttrpc.connection import Connection
from cocoon.ttrpc.envelope import DecodeError, Request, Response, Status
from cocoon.ttrpc.status import Code, ConnectionLost, MessageTooLarge, RPCError
from cocoon.ttrpc.transport import StreamTransport, Transport

Handler = Callable[[bytes], Awaitable[bytes]]
log = logging.getLogger("cocoon.ttrpc")


class Server:
    def __init__(self) -> None:
        self._handlers: dict[tuple[str, str], Handler] = {}
        # Every call being served: its task → (method, still in its handler).
        self._calls: dict[asyncio.Task[None], tuple[str, bool]] = {}

    def register(self, service: str, method: str, handler: Handler) -> None:
        self._handlers[(service, method)] = handler

    async def _dispatch(self, conn: Connection, frame: framing.Frame) -> None:
        try:
            req = Request.decode(frame.payload)
        except (DecodeError, UnicodeDecodeError) as exc:
            resp = Response(Status(Code.INVALID_ARGUMENT, f"malformed request: {exc}"))
        else:
            handler = self._handlers.get((req.service, req.method))
            if handler is None:
                msg = f"{req.service}.{req.method} is not implemented"
                resp = Response(Status(Code.UNIMPLEMENTED, msg))
            else:
                task = asyncio.current_task()
                if task is not None:
                    self._calls[task] = (req.method, True)
                try:
                    resp = Response(payload=await handler(req.payload))
                except RPCError as exc:
                    resp = Response(Status(exc.code, exc.message))
                except asyncio.CancelledError:
                    return
                except Exception as exc:
                    log.exception("%s.%s failed", req.service, req.method)
                    resp = Response(Status(Code.UNKNOWN, f"{req.method}: {exc}"))
                finally:
                    if task is not None and task in self._calls:
                        self._calls[task] = (req.method, False)  # answering: never cut
        data = resp.encode()
        if len(data) > framing.MAX_PAYLOAD:
            what = f"{req.method}: the reply"
            too_big = MessageTooLarge(what, len(data), framing.MAX_PAYLOAD)
            data = Response(Status(too_big.code, too_big.message)).encode()
        with contextlib.suppress(ConnectionLost):
            await conn.send(framing.Frame(frame.stream_id, framing.FrameType.RESPONSE, 0, data))

    async def quiesce(self, drop: frozenset[str], timeout: float = 10.0) -> int:
        """Cancel the calls of methods ``drop`` still in their handlers (they get no
        answer: their caller asks again) and wait until every other call, but the
        caller's own, has answered. Returns how many were dropped. The link is then
        quiet: nothing half-sent that a snapshot could freeze."""
        me = asyncio.current_task()
        dropped = [t for t, (m, busy) in self._calls.items() if busy and m in drop and t is not me]
        for task in dropped:
            task.cancel()
        others = [t for t in self._calls if t is not me]
        if others:
            await asyncio.wait(others, timeout=timeout)
        return len(dropped)

    async def serve(self, transport: Transport, name: str = "client") -> None:
        """Serve one connection until it closes; cancels its in-flight calls then."""
        tasks: set[asyncio.Task[None]] = set()
        conn: Connection

        def on_frame(frame: framing.Frame) -> None:
            if frame.type != framing.FrameType.REQUEST:
                return
            task = asyncio.get_running_loop().create_task(self._dispatch(conn, frame))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            task.add_done_callback(lambda t: self._calls.pop(t, None))

        conn = Connection(transport, on_frame, name)
        try:
            await conn.wait_closed()
        finally:
            for task in list(tasks):
                task.cancel()

    async def listen_unix(self, path: str, mode: int = 0o600) -> asyncio.AbstractServer:
        """Serve every connection to a unix socket at ``path``."""

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self.serve(StreamTransport(reader, writer))

        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        server = await asyncio.start_unix_server(on_connect, path, limit=1 << 22)
        os.chmod(path, mode)
        return server
