"""Host process helpers shared by the service's children (QEMU, virtiofsd) and cleanup."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None]:
    """A preexec_fn: the child gets SIGKILL when the service that started it dies."""
    import ctypes

    _prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl  # resolved before fork

    def preexec() -> None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    return preexec


def cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read()
    except OSError:
        return b""


def alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive for our purposes.
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def kill_recorded(pid: int, marker: str, timeout: float = 5.0) -> bool:
    """SIGKILL ``pid`` only if its command line still mentions ``marker`` (no PID reuse).

    Returns True if the process is gone afterwards.
    """
    if not alive(pid):
        return True
    if marker.encode() not in cmdline(pid):
        return True  # the PID now belongs to someone else
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    return not alive(pid)


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
