"""``[agent] debug_console``: a root shell on the guest's virtio console (/dev/hvc0).

Outside every container: the VM's own root, mounts and processes, for whoever
holds the host end (root on the host, ``cocoon debug-console ID``). The port
exists only when the host asked for it (``cocoon.debug_console=1`` on the
kernel command line); each shell that ends is followed by a new one, after a
line with :data:`DEBUG_EXIT_MARK` and its exit status.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from cocoon.guest.reaper import Reaper
from cocoon.wire.agent import DEBUG_EXIT_MARK

log = logging.getLogger("cocoon.guest")
TTY = "/dev/hvc0"
# dash: no readline, so the terminal stays canonical and Ctrl-D at the start of
# a line is always end of input (bash's readline can swallow one sent early).
SHELLS = ("/bin/sh",)
ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "TERM": "linux",
    "PS1": "cocoon-guest# ",
}


def wanted(cmdline: str) -> bool:
    return "cocoon.debug_console=1" in cmdline.split()


def spawn_shell(tty: str = TTY) -> int:
    """A shell in a new session whose controlling terminal is ``tty``; its PID."""
    shell = next((s for s in SHELLS if os.path.exists(s)), SHELLS[-1])
    return os.posix_spawn(
        shell,
        [shell],
        ENV,
        # After setsid (glibc applies the attributes first), opening the tty
        # without O_NOCTTY makes it the session's controlling terminal.
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, tty, os.O_RDWR, 0),
            (os.POSIX_SPAWN_DUP2, 0, 1),
            (os.POSIX_SPAWN_DUP2, 0, 2),
        ],
        setsid=True,
        setsigdef=(signal.SIGCHLD, signal.SIGPIPE, signal.SIGINT, signal.SIGHUP),
    )


def _say(tty: str, text: bytes) -> None:
    fd = os.open(tty, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        os.write(fd, text)
    except OSError:
        pass
    finally:
        os.close(fd)


async def serve(reaper: Reaper, tty: str = TTY) -> None:
    """Keep a shell on ``tty`` for the VM's life (waits for the device to appear)."""
    for _ in range(1000):
        if os.path.exists(tty):
            break
        await asyncio.sleep(0.01)
    while True:
        try:
            pid = spawn_shell(tty)
        except OSError as exc:
            log.error("debug console: cannot start a shell on %s: %s", tty, exc)
            return
        code = await reaper.wait(pid)
        try:
            _say(tty, b"\r\n" + DEBUG_EXIT_MARK + str(code).encode() + b"]\r\n")
        except OSError as exc:
            log.warning("debug console: %s", exc)
        await asyncio.sleep(0.1)  # a shell that dies at once must not spin
