"""``cocoon debug-console ID``: a root shell in the container's VM, outside the container.

Only for sandboxes created with ``[agent] debug_console = true``: QEMU then
has a virtio console port whose host end is ``debug.sock`` in the sandbox's
socket dir, and the guest keeps a shell on it (cocoon.guest.debugconsole).
This relays our stdin/stdout to it, the terminal in raw mode when stdin is
one; Ctrl-] detaches. When the shell exits (``exit``, or end of our stdin,
sent as Ctrl-D) the verb ends with its exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import selectors
import socket
import sys

from cocoon.cli.common import paths_for
from cocoon.cli.output import Reporter
from cocoon.errors import FailedPrecondition, Unavailable
from cocoon.wire.agent import DEBUG_EXIT_MARK

DETACH = b"\x1d"  # Ctrl-]
EOT = b"\x04"  # Ctrl-D: end of input for the guest shell's terminal
_EXIT = re.compile(re.escape(DEBUG_EXIT_MARK) + rb"(\d+)\]")


class ExitScanner:
    """Finds the guest's "shell exited" line in output that arrives in chunks."""

    def __init__(self) -> None:
        self._tail = b""

    def feed(self, data: bytes) -> tuple[bytes, int | None]:
        """(what to show, the exit status once the line has arrived)."""
        text = self._tail + data
        m = _EXIT.search(text)
        if m:
            return text[: m.start()], int(m.group(1))
        # Hold back what could be the start of the mark.
        keep = len(DEBUG_EXIT_MARK) + 8
        for i in range(max(len(text) - keep, 0), len(text)):
            if DEBUG_EXIT_MARK.startswith(text[i : i + len(DEBUG_EXIT_MARK)]):
                self._tail = text[i:]
                return text[:i], None
        self._tail = b""
        return text, None


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    from cocoon.service import persist

    paths = paths_for(args, args.id)
    st = persist.load(paths)
    if not st.settings.get("debug_console"):
        raise FailedPrecondition(
            f"the debug console of {paths.id} is off: it needs [agent] debug_console = true "
            "when the container is created"
        )
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(str(paths.debug_sock))
    except OSError as exc:
        sock.close()
        raise Unavailable(f"cannot reach the debug console of {paths.id}", exc) from exc
    interactive = os.isatty(0)
    saved = None
    if interactive:
        import termios
        import tty

        saved = termios.tcgetattr(0)
        tty.setraw(0)
        sys.stderr.write(
            f"debug console of {paths.id}: a shell in the VM, outside the container "
            "(Ctrl-] detaches)\r\n"
        )
        sys.stderr.flush()
    try:
        with sock:
            return _relay(sock, interactive)
    finally:
        if saved is not None:
            import termios

            termios.tcsetattr(0, termios.TCSADRAIN, saved)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _relay(sock: socket.socket, interactive: bool) -> int:
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    sel.register(0, selectors.EVENT_READ)
    scanner = ExitScanner()
    last = b"\n"
    if interactive:
        sock.sendall(b"\r")  # a prompt: the shell's first one went to nobody
    while True:
        for key, _ in sel.select():
            if key.fileobj is sock:
                data = sock.recv(65536)
                if not data:
                    raise Unavailable("the debug console closed: the VM is gone")
                shown, status = scanner.feed(data)
                _write_all(1, shown)
                if status is not None:
                    if interactive:
                        _write_all(1, b"\r\n")
                    return status
            else:
                data = os.read(0, 65536)
                if not data:
                    sel.unregister(0)
                    # Ctrl-D at the start of a line: the shell reads end of input.
                    sock.sendall(EOT if last == b"\n" else b"\n" + EOT)
                    continue
                if interactive and DETACH in data:
                    with contextlib.suppress(OSError):
                        sock.sendall(data[: data.index(DETACH)])
                    return 0
                sock.sendall(data)
                last = data[-1:]
