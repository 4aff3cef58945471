"""The ttRPC client: unary calls multiplexed by stream id over one connection."""

from __future__ import annotations

import asyncio
import contextlib

from cocoon.ttrpc import framing
from cocoon.ttrpc.connection import Connection
from cocoon.ttrpc.envelope import Request, Response
from cocoon.ttrpc.status import Code, ConnectionLost, MessageTooLarge, RPCError
from cocoon.ttrpc.transport import Transport


class Client:
    """Typed layers (the agent client, the service client) sit on top of this.

    Every pending call fails with ConnectionLost when the transport ends, so a
    dead peer never leaves a caller hanging.
    """

    def __init__(self, transport: Transport, name: str = "peer") -> None:
        self.name = name
        self._pending: dict[int, asyncio.Future[Response]] = {}
        self._next_id = 1
        self.conn = Connection(transport, self._on_frame, name)
        self._watch = asyncio.get_running_loop().create_task(self._fail_pending_on_close())

    def _on_frame(self, frame: framing.Frame) -> None:
        if frame.type != framing.FrameType.RESPONSE:
            return
        fut = self._pending.pop(frame.stream_id, None)
        if fut is None or fut.done():
            return
        try:
            fut.set_result(Response.decode(frame.payload))
        except Exception as exc:  # noqa: BLE001 - a malformed reply fails only its call
            fut.set_exception(RPCError(Code.INTERNAL, f"malformed response: {exc}"))

    async def _fail_pending_on_close(self) -> None:
        await self.conn.wait_closed()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(
                    ConnectionLost(f"connection to {self.name} lost: {self.conn.close_reason}")
                )
        self._pending.clear()

    @property
    def closed(self) -> bool:
        return self.conn.closed.is_set()

    async def call(
        self, service: str, method: str, payload: bytes, timeout: float | None = 30.0
    ) -> bytes:
        """Call service/method; return the response payload.

        Raises RPCError for an error status (MessageTooLarge for a request over
        the 4 MiB limit, checked before sending), TimeoutError after ``timeout``
        seconds (None waits for ever, for long polls), ConnectionLost when the
        connection ends first.
        """
        req = Request(service, method, payload, int(timeout * 1e9) if timeout else 0).encode()
        if len(req) > framing.MAX_PAYLOAD:
            raise MessageTooLarge(f"{method}: the request", len(req), framing.MAX_PAYLOAD)
        stream_id = self._next_id
        self._next_id += 2
        fut: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._pending[stream_id] = fut
        try:
            await self.conn.send(framing.Frame(stream_id, framing.FrameType.REQUEST, 0, req))
            resp = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise TimeoutError(f"{method} on {self.name} timed out after {timeout:g}s") from None
        finally:
            self._pending.pop(stream_id, None)
        if resp.status.code != Code.OK:
            raise RPCError(resp.status.code, resp.status.message)
        return resp.payload

    async def close(self) -> None:
        await self.conn.close()
        self._watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._watch
