"""The protocol layer: frames in, frames out, over one transport.

A reader task decodes frames and hands each to a callback; writes are
serialised by a lock so frames never interleave. When the transport ends, the
connection records why and every waiter learns it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from cocoon.ttrpc import framing
from cocoon.ttrpc.status import ConnectionLost
from cocoon.ttrpc.transport import Transport

FrameHandler = Callable[[framing.Frame], Awaitable[None] | None]


class Connection:
    def __init__(self, transport: Transport, on_frame: FrameHandler, name: str = "peer") -> None:
        self.transport = transport
        self.name = name
        self._on_frame = on_frame
        self._write_lock = asyncio.Lock()
        self.closed = asyncio.Event()
        self.close_reason = ""
        self._reader = asyncio.get_running_loop().create_task(self._read_loop())

    async def _read_loop(self) -> None:
        reason = "closed"
        try:
            while True:
                header = await self.transport.read_exactly(framing.HEADER_SIZE)
                length, stream_id, ftype, flags = framing.decode_header(header)
                payload = await self.transport.read_exactly(length) if length else b""
                result = self._on_frame(framing.Frame(stream_id, ftype, flags, payload))
                if result is not None:
                    await result
        except ConnectionLost as exc:
            reason = str(exc)
        except framing.FrameError as exc:
            reason = f"protocol error: {exc}"
        except asyncio.CancelledError:
            reason = "closed"
        except Exception as exc:  # noqa: BLE001 - the reason is reported to waiters
            reason = f"reader failed: {exc!r}"
        finally:
            self._mark_closed(reason)

    def _mark_closed(self, reason: str) -> None:
        if not self.closed.is_set():
            self.close_reason = reason
            self.closed.set()
            with contextlib.suppress(Exception):
                self.transport.close()

    async def send(self, frame: framing.Frame) -> None:
        """Write one frame; raises ConnectionLost if the connection is closed."""
        if self.closed.is_set():
            raise ConnectionLost(f"connection to {self.name} closed: {self.close_reason}")
        data = framing.encode(frame)
        async with self._write_lock:
            await self.transport.write(data)

    async def close(self, reason: str = "closed") -> None:
        self._mark_closed(reason)
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader

    async def wait_closed(self) -> None:
        await self.closed.wait()
