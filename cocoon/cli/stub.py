"""The per-process stub: the host PID an engine reaps for a guest process.

containerd's runc shim and conmon are child subreapers: they learn a
container's exit status only by reaping the PID in ``--pid-file``. So
``create`` (and ``exec --detach``) leaves this process behind, reparented to the
caller by a double fork. It hands its stdio to the sandbox service (or, with a
terminal, creates a host pty, sends the master over ``--console-socket`` and
hands over the slave), forwards the signals it receives to the guest process,
turns window-size changes into resizes, and exits with the guest process's
status (128+N for signal N).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import os
import signal
import socket
import struct
import sys
import termios
import tty

from cocoon.errors import CocoonError, InvalidArgument
from cocoon.service.persist import SandboxPaths

FORWARDED = tuple(
    s
    for s in signal.Signals
    if s
    not in (
        signal.SIGKILL,
        signal.SIGSTOP,
        signal.SIGCHLD,
        signal.SIGWINCH,
        signal.SIGPIPE,
        signal.SIGTTIN,
        signal.SIGTTOU,
        signal.SIGTSTP,
        signal.SIGCONT,
    )
)
LOST_STATUS = 255


def check_console_socket(path: str) -> None:
    """Refuse early, with a clear line, a --console-socket that is not a socket."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise InvalidArgument(f"--console-socket {path}", exc) from exc
    if not stat.S_ISSOCK(mode):
        raise InvalidArgument(f"--console-socket {path} is not a unix socket")


def send_console(path: str, master: int) -> None:
    """Send the pty master over the console socket (SCM_RIGHTS), as runc does."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(path)
        fds = array.array("i", [master])
        sock.sendmsg([b"/dev/ptmx"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])


def winsize(fd: int) -> tuple[int, int]:
    rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    return rows, cols


def open_terminal(console_socket: str) -> int:
    """A host pty: master to the engine, raw slave kept (the guest pty does the tty work)."""
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        send_console(console_socket, master)
    finally:
        os.close(master)
    return slave


def spawn(
    paths: SandboxPaths,
    cid: str,
    exec_id: str,
    console_socket: str | None,
    log: str | None,
    log_format: str,
    new_netns: bool = False,
    netns_path: str = "",
) -> int:
    """Double-fork the stub; return its PID once it holds and has handed over the stdio.

    Raises CocoonError with the stub's reason if it could not set up.
    """
    r, w = os.pipe()
    first = os.fork()
    if first == 0:  # intermediate: a new session, then the stub, then exit
        try:
            from cocoon.cli.lock import close_inherited

            close_inherited()
            os.close(r)
            os.setsid()
            # The stub is PID 1 of a PID namespace of its own: an engine that looks
            # at "the container's" processes through it (podman top) sees the stub,
            # not the whole host.
            _unshare(CLONE_NEWPID)
            pid = os.fork()
            if pid == 0:
                if new_netns:
                    # Hooks get the stub's PID and some configure its network
                    # namespace (docker's libnetwork-setkey): never the host's.
                    _unshare(CLONE_NEWNET)
                elif netns_path:
                    # The pod's namespace, as a runc container's PID would be in
                    # it: /proc/<pid>/ns/net names the network the VM carries.
                    _setns(netns_path, CLONE_NEWNET)
                _stub_main(paths, cid, exec_id, console_socket, w, log, log_format)
            os.write(w, f"pid {pid}\n".encode())
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(first, 0)
    with os.fdopen(r, "rb") as fh:
        lines = fh.read().decode(errors="replace").splitlines()
    pid = next((int(ln.split()[1]) for ln in lines if ln.startswith("pid ")), 0)
    if "ok" not in lines:
        err = next((ln[6:] for ln in lines if ln.startswith("error:")), "the stub failed")
        raise CocoonError(err)
    return pid


CLONE_NEWNET = 0x40000000
CLONE_NEWPID = 0x20000000


def register(paths: SandboxPaths, exec_id: str, pid: int) -> None:
    """Tell the service which host PID stands for the process; it joins the VMM's cgroup."""
    from cocoon.service import quick

    quick.call(
        paths,
        "RegisterProcess",
        container_id=paths.id,
        exec_id=exec_id,
        host_pid=pid,
        join_cgroup=True,
    )


def enter_network_namespace(new: bool, path: str) -> None:
    """Move this process into a new network namespace, or the one at ``path``.

    For the foreground ``run``, which plays the stub's part itself: hooks get
    its PID, and must never find the host's namespace behind it. Call from the
    main thread (``/proc/<pid>/ns/net`` is the main thread's). Raises CocoonError.
    """
    import ctypes

    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    if new:
        rc = libc.unshare(CLONE_NEWNET)
    elif path:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise CocoonError(f"cannot open the network namespace {path}", exc) from exc
        try:
            rc = libc.setns(fd, CLONE_NEWNET)
        finally:
            os.close(fd)
    else:
        return
    if rc != 0:
        err = ctypes.get_errno()
        raise CocoonError(f"cannot enter a network namespace: {os.strerror(err)}")


def _unshare(flag: int) -> None:
    import ctypes

    if ctypes.CDLL("libc.so.6", use_errno=True).unshare(flag) != 0:
        os._exit(1)


def _setns(path: str, flag: int) -> None:
    import ctypes

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        os._exit(1)
    if ctypes.CDLL("libc.so.6", use_errno=True).setns(fd, flag) != 0:
        os._exit(1)
    os.close(fd)


def _stub_main(
    paths: SandboxPaths,
    cid: str,
    exec_id: str,
    console_socket: str | None,
    ready: int,
    log: str | None,
    log_format: str,
) -> None:
    from cocoon.service.client import dup_stdio, send_stdio

    code = LOST_STATUS
    try:
        slave = None
        try:
            if console_socket:
                slave = open_terminal(console_socket)
                fds = {"stdin": os.dup(slave), "stdout": os.dup(slave)}
            else:
                fds = dup_stdio()
            send_stdio(paths, cid, exec_id, fds)
        except (CocoonError, OSError) as exc:
            os.write(ready, f"error: {exc}\n".encode())
            os._exit(1)
        # Hold none of the caller's fds: the service relays into its own copies.
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
        if slave is not None:
            with contextlib.suppress(OSError):
                fcntl.ioctl(slave, termios.TIOCSCTTY, 0)  # SIGWINCH comes to us
        os.write(ready, b"ok\n")
        os.close(ready)
        code = asyncio.run(_supervise(paths, cid, exec_id, slave, log, log_format))
    except BaseException as exc:  # noqa: BLE001 - the stub must exit with a status
        _log_error(log, log_format, f"stub for {cid}/{exec_id or 'init'}: {exc}")
    finally:
        sys.stdout.flush()
        os._exit(code)


async def _supervise(
    paths: SandboxPaths,
    cid: str,
    exec_id: str,
    slave: int | None,
    log: str | None,
    log_format: str,
) -> int:
    from cocoon.service.client import ServiceClient

    client = await ServiceClient.connect(paths)
    loop = asyncio.get_running_loop()

    def forward(sig: int) -> None:
        task = loop.create_task(client.kill(cid, sig, exec_id=exec_id))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    def resize() -> None:
        if slave is None:
            return
        rows, cols = winsize(slave)
        task = loop.create_task(client.resize(cid, exec_id, rows, cols))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    for sig in FORWARDED:
        with contextlib.suppress(OSError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, forward, int(sig))
    loop.add_signal_handler(signal.SIGWINCH, resize)
    resize()
    try:
        resp = await client.wait(cid, exec_id)
    except CocoonError as exc:
        _log_error(log, log_format, f"{cid}: {exc}")
        return LOST_STATUS
    finally:
        await client.close()
    if resp.error:
        _log_error(log, log_format, f"{cid}: {resp.error}")
        return LOST_STATUS
    return resp.status


def _log_error(log: str | None, log_format: str, msg: str) -> None:
    if not log:
        return
    from cocoon.cli.output import Reporter

    with contextlib.suppress(OSError):
        Reporter(log, log_format, False).error(msg)
