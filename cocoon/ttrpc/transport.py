"""Byte-stream transports for ttRPC: the one small interface every channel implements.

The host reaches the guest agent through QEMU's virtio-serial chardev (a unix
socket); hosts with vsock would add an AF_VSOCK transport here and nothing else
changes. The guest side reads its virtio-serial port device directly.
"""

from __future__ import annotations

import asyncio
import errno
import os
from typing import Protocol


class Transport(Protocol):
    async def read_exactly(self, n: int) -> bytes:
        """Read n bytes; raise ConnectionLost at end of stream."""

    async def write(self, data: bytes) -> None:
        """Write all of data; raise ConnectionLost when the peer is gone."""

    def close(self) -> None:
        """Close; pending reads end with ConnectionLost."""


class StreamTransport:
    """An asyncio stream pair (unix socket, TCP, vsock socket)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def read_exactly(self, n: int) -> bytes:
        from cocoon.ttrpc.status import ConnectionLost

        try:
            return await self.reader.readexactly(n)
        except asyncio.IncompleteReadError as exc:
            raise ConnectionLost("connection closed by peer") from exc
        except OSError as exc:
            raise ConnectionLost(f"connection failed: {exc}") from exc

    async def write(self, data: bytes) -> None:
        from cocoon.ttrpc.status import ConnectionLost

        try:
            self.writer.write(data)
            await self.writer.drain()
        except (OSError, RuntimeError) as exc:
            raise ConnectionLost(f"write failed: {exc}") from exc

    def close(self) -> None:
        self.writer.close()


async def connect_unix(path: str) -> StreamTransport:
    reader, writer = await asyncio.open_unix_connection(path, limit=1 << 22)
    return StreamTransport(reader, writer)


class PortTransport:
    """A virtio-serial port device in the guest (``/dev/vportNpM``).

    The port opens once (a second open gets EBUSY). While no host process is
    connected to the chardev, read() returns 0: that is not end of stream, so
    we back off and retry instead of giving up (the agent is PID 1).
    """

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self._buf = bytearray()
        self._loop = asyncio.get_running_loop()

    async def _wait(self, writer: bool) -> None:
        fut: asyncio.Future[None] = self._loop.create_future()

        def ready() -> None:
            if not fut.done():
                fut.set_result(None)

        if writer:
            self._loop.add_writer(self.fd, ready)
        else:
            self._loop.add_reader(self.fd, ready)
        try:
            await fut
        finally:
            if writer:
                self._loop.remove_writer(self.fd)
            else:
                self._loop.remove_reader(self.fd)

    async def read_exactly(self, n: int) -> bytes:
        backoff = 0.002
        while len(self._buf) < n:
            try:
                chunk = os.read(self.fd, 1 << 20)
            except BlockingIOError:
                await self._wait(writer=False)
                continue
            if not chunk:  # no host connected: not EOF
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 0.05)
                continue
            backoff = 0.002
            self._buf += chunk
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                sent = os.write(self.fd, view)
            except BlockingIOError:
                await self._wait(writer=True)
                continue
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EINTR):
                    await asyncio.sleep(0.002)
                    continue
                raise
            view = view[sent:]

    def drop_partial(self) -> None:
        """Forget buffered bytes of a frame from a host that went away."""
        self._buf.clear()

    def close(self) -> None:
        os.close(self.fd)
