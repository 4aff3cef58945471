"""Relays between host fds (given by the caller) and a guest process's streams.

Host fds can be anything a caller holds: a pipe, a file, a tty, /dev/null. So
they are used with plain blocking I/O in daemon threads (never O_NONBLOCK,
which would change the caller's shared file description), and each relay
reports completion to the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from cocoon.agent.client import AgentClient

log = logging.getLogger("cocoon.stdio")
CHUNK = 65536


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Relays:
    """The stdio relays of one process; ``done`` is set once output is drained."""

    def __init__(self, loop: asyncio.AbstractEventLoop, agent: AgentClient, cid: str, eid: str):
        self.loop = loop
        self.agent = agent
        self.cid = cid
        self.eid = eid
        self.done = asyncio.Event()
        self._outputs = 0

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def _thread(self, target: Callable[..., None], *args: Any) -> None:
        threading.Thread(target=target, args=args, daemon=True, name="stdio").start()

    def start(self, stdin: int | None, stdout: int | None, stderr: int | None) -> None:
        outputs = [
            (name, fd) for name, fd in (("stdout", stdout), ("stderr", stderr)) if fd is not None
        ]
        self._outputs = len(outputs)
        if not outputs:
            self.done.set()
        for name, fd in outputs:
            self._thread(self._pump_out, name, fd)
        if stdin is not None:
            self._thread(self._pump_in, stdin)

    def start_stdin(self, fd: int) -> None:
        """Relay stdin from ``fd`` too, once the caller has it (a FIFO opens late)."""
        self._thread(self._pump_in, fd)

    def _output_finished(self) -> None:
        self._outputs -= 1
        if self._outputs <= 0:
            self.done.set()

    def _pump_out(self, which: str, fd: int) -> None:
        try:
            while True:
                resp = self._call(self.agent.read_stream(which, self.cid, self.eid, CHUNK))
                if resp.data:
                    _write_all(fd, resp.data)
                if resp.eof:
                    break
        except Exception as exc:  # noqa: BLE001 - the relay ends; the cause is logged
            log.info("%s relay of %s/%s ended: %s", which, self.cid, self.eid or "init", exc)
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)
            self.loop.call_soon_threadsafe(self._output_finished)

    def _pump_in(self, fd: int) -> None:
        try:
            while True:
                data = os.read(fd, CHUNK)
                if not data:
                    self._call(self.agent.close_stdin(self.cid, self.eid))
                    break
                while data:
                    n = self._call(self.agent.write_stdin(self.cid, self.eid, data))
                    if n <= 0:
                        return
                    data = data[n:]
        except Exception as exc:  # noqa: BLE001 - the relay ends; the cause is logged
            log.info("stdin relay of %s/%s ended: %s", self.cid, self.eid or "init", exc)
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)
