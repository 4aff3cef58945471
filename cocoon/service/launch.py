"""Starting a sandbox service, and cleaning up after one that is gone."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

from cocoon.errors import CocoonError
from cocoon.procutil import kill_recorded, wait_gone
from cocoon.service import persist
from cocoon.service.persist import SandboxPaths

START_TIMEOUT = 30.0


def spawn_service(paths: SandboxPaths, debug: bool = False) -> subprocess.Popen[bytes]:
    """Start the service daemon for ``paths`` and wait until it listens.

    Raises CocoonError with the service's own reason if it fails to start.
    """
    argv = [sys.executable, "-m", "cocoon.cli.main"]
    if debug:
        argv.append("--debug")
    argv += ["_service", "--sandbox-dir", str(paths.dir), "--ready-fd"]
    return spawn_ready(argv, paths.service_log)


def spawn_ready(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start a daemon (``argv`` + the fd it reports on) and wait for its ``ok`` line.

    The daemon gets its own session and logs to ``log_path``. Raises CocoonError
    with the daemon's own reason if it fails to start.
    """
    r, w = os.pipe()
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(
            [*argv, str(w)],
            pass_fds=(w,),
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=logf,
            start_new_session=True,
            close_fds=True,
        )
    os.close(w)
    try:
        line = _read_line(r, START_TIMEOUT)
    finally:
        os.close(r)
    if line != "ok":
        proc.kill()
        proc.wait()
        raise CocoonError(line.removeprefix("error: ") or "the sandbox service failed to start")
    return proc


def _read_line(fd: int, timeout: float) -> str:
    buf = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "error: the sandbox service did not start in time"
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    return buf.decode(errors="replace").strip()


def force_cleanup(paths: SandboxPaths) -> list[str]:
    """Remove every trace of a sandbox whose service is gone or hung.

    Kills the recorded service, QEMU and virtiofsd PIDs (only if their command
    lines still name this sandbox), then removes the state dir; never follows
    a mount. Returns what could not be removed.
    """
    from cocoon.service.hostcg import remove_recorded

    marker = str(paths.dir)
    cgroup: dict[str, object] = {}
    netns = ""
    try:
        st = persist.load(paths)
        pids = [st.service_pid, st.qemu_pid, st.virtiofsd_pid]
        cgroup = st.cgroup
        netns = st.netns
        if st.sandbox:  # a member: the processes are its sandbox's, not its own
            pids, cgroup, netns = [], {}, ""
    except CocoonError:
        pids = []
    for pid in pids:
        if pid and not kill_recorded(pid, marker):
            raise CocoonError(f"cannot kill process {pid} of sandbox {paths.id}")
    left = remove_recorded(cgroup)
    if netns:
        from cocoon.network.pod import sweep_recorded

        left += sweep_recorded(netns)  # its taps died with QEMU; its redirects did not
    paths.remove_sock_dir()
    return left + persist.remove_tree(paths.dir)


def wait_service_exit(proc: subprocess.Popen[bytes] | None, pid: int, timeout: float) -> bool:
    if proc is not None:
        try:
            proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    return wait_gone(pid, timeout)
