"""virtiofsd, the virtio-fs daemon: one per sandbox, serving the shared directory."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

from cocoon.errors import CocoonError
from cocoon.hypervisor.jail import VIRTIOFSD_CAPS, Jail, preexec

DEFAULT_VIRTIOFSD = "/usr/lib/qemu/virtiofsd"


class Virtiofsd:
    def __init__(self, binary: str, source: Path, socket: Path, log: Path) -> None:
        self.binary = binary
        self.source = source
        self.socket = socket
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    async def start(self, timeout: float = 10.0) -> None:
        """Start the daemon and wait for its socket; raise CocoonError if it fails."""
        argv = [
            self.binary,
            f"--socket-path={self.socket}",
            "-o",
            f"source={self.source}",
            "-o",
            "cache=auto",
            "-o",
            "sandbox=chroot",
            "-o",
            "log_level=warn",
            # No device nodes, no set-id bits kept by its own writes, no file
            # capabilities (the seccomp filter refuses set-id modes: jail.py).
            "-o",
            "modcaps=-mknod:-fsetid:-setfcap",
        ]
        with open(self.log, "ab") as logf:
            try:
                self.proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=logf,
                    stderr=logf,
                    start_new_session=True,
                    preexec_fn=preexec(Jail(VIRTIOFSD_CAPS)),
                )
            except OSError as exc:
                raise CocoonError(f"cannot start {self.binary}", exc) from exc
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.socket.exists():
            if self.proc.returncode is not None or loop.time() > deadline:
                await self.stop()
                raise CocoonError(f"virtiofsd did not start: see {self.log}")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), 3)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()
