"""A process's stdio through the FIFOs containerd creates (one path per stream).

Output FIFOs are opened read-write so the open never blocks (containerd may open
its reading end after Create); the relay closes them after the guest's EOF, and
the caller's reader then sees EOF, so no output is lost at exit. The stdin FIFO
is opened for reading in a thread, because that open waits for a writer and the
process must not wait for it to be created.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from dataclasses import dataclass

from cocoon.errors import CocoonError
from cocoon.service.sandbox import Sandbox

log = logging.getLogger("cocoon.shim.stdio")


@dataclass(frozen=True)
class ProcessIO:
    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False


def _open_output(path: str) -> int | None:
    if not path:
        return None
    return os.open(path, os.O_RDWR | os.O_CLOEXEC)


def release_outputs(io: ProcessIO) -> None:
    """Open and close the output FIFOs once, so a reader waiting for output sees EOF."""
    for path in (io.stdout, io.stderr):
        if path:
            with contextlib.suppress(OSError):  # ENXIO: nobody reads it
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC))


def attach(sandbox: Sandbox, cid: str, exec_id: str, io: ProcessIO) -> None:
    """Start relaying the process's streams; raises OSError or CocoonError."""
    stdout = _open_output(io.stdout)
    # A terminal has one output: the pty (stderr is merged into it by the guest).
    stderr = None if io.terminal else _open_output(io.stderr)
    try:
        sandbox.attach_stdio(cid, exec_id, None, stdout, stderr)
    except BaseException:
        for fd in (stdout, stderr):
            if fd is not None:
                os.close(fd)
        raise
    if io.stdin:
        loop = asyncio.get_running_loop()
        threading.Thread(
            target=_open_stdin, args=(loop, sandbox, cid, exec_id, io.stdin), daemon=True
        ).start()


def _open_stdin(
    loop: asyncio.AbstractEventLoop, sandbox: Sandbox, cid: str, exec_id: str, path: str
) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # waits for containerd's writer
    except OSError as exc:
        log.warning("stdin of %s/%s: %s", cid, exec_id or "init", exc)
        return

    def hand_over() -> None:
        try:
            sandbox.attach_stdin(cid, exec_id, fd)
        except CocoonError as exc:
            log.info("stdin of %s/%s not attached: %s", cid, exec_id or "init", exc)
            with contextlib.suppress(OSError):
                os.close(fd)

    loop.call_soon_threadsafe(hand_over)
