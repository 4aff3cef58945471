"""Containers and their processes in the guest, created and run by crun.

State machine per container: CREATED (crun create done, init waiting at its
exec fifo) → RUNNING (crun start) → STOPPED (init reaped). An exec'd process
is supervised by a foreground ``crun exec`` (the exec'd process itself is
reparented inside the container's PID namespace, out of the agent's reach).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import fcntl
import itertools
import json
import logging
import os
import shutil
import signal
import socket
import struct
import termios
import time
from dataclasses import dataclass, field
from typing import Any

from cocoon.guest import disks, network
from cocoon.guest.reaper import Reaper
from cocoon.ttrpc.status import Code, RPCError

log = logging.getLogger("cocoon.guest")

CRUN = "/usr/bin/crun"
CRUN_ROOT = "/run/crun"
# What the containers of a pod share (Kubernetes: network, IPC, UTS), by OCI type → /proc/PID/ns.
POD_NAMESPACES = {"network": "net", "ipc": "ipc", "uts": "uts"}
# What they may share besides, when their spec names the pod's (the PID namespace).
POD_SHAREABLE = {"pid": "pid"}
BUNDLES = "/run/cocoon/bundles"
# Console sockets, named by a counter: unix socket paths are limited to 108 bytes, and
# Kubernetes' container and exec ids are 64 characters each.
CONSOLES = "/run/cocoon/consoles"
CONSOLE_WAIT = 15.0  # for crun to send a console's pty master
CGROUP_PARENT = "/cocoon"
FILES = "/run/cocoon/files"  # file binds carried by value (the agent's FILES_ROOT)


class State(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


def _error(code: int, msg: str) -> RPCError:
    return RPCError(code, msg)


@dataclass
class Process:
    """One process: the container's init or an exec. Holds our ends of its stdio."""

    exec_id: str
    terminal: bool
    stdin_fd: int | None = None
    stdout_fd: int | None = None
    stderr_fd: int | None = None
    pid: int = 0  # the process itself (signals go here)
    waiter_pid: int = 0  # the PID we reap (init: the same; exec: crun exec)
    exit_code: int | None = None
    exited_at_ns: int = 0
    exited: asyncio.Event = field(default_factory=asyncio.Event)

    def close_fds(self) -> None:
        fds = {self.stdin_fd, self.stdout_fd, self.stderr_fd} - {None}
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)  # type: ignore[arg-type]
        self.stdin_fd = self.stdout_fd = self.stderr_fd = None


@dataclass
class Container:
    id: str
    bundle: str
    init: Process
    state: State = State.CREATED
    execs: dict[str, Process] = field(default_factory=dict)
    # The name crun, the cgroup and the guest paths know it by: its first ID, kept
    # when a restore gives it another (RenameContainer).
    crun_id: str = ""

    def __post_init__(self) -> None:
        self.crun_id = self.crun_id or self.id

    def process(self, exec_id: str) -> Process:
        if not exec_id:
            return self.init
        proc = self.execs.get(exec_id)
        if proc is None:
            raise _error(Code.NOT_FOUND, f"exec {exec_id!r} not found in container {self.id!r}")
        return proc


def _console_listener(path: str) -> socket.socket:
    """Listen on a console socket; crun sends the pty master over it."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    srv.bind(path)
    srv.listen(1)
    return srv


def _take_master(srv: socket.socket) -> int:
    conn, _ = srv.accept()
    with conn:
        conn.settimeout(10)
        _, fds, _, _ = socket.recv_fds(conn, 4096, 1)
    if not fds:
        raise RuntimeError("crun sent no console fd")
    return fds[0]


class ContainerManager:
    def __init__(self, reaper: Reaper) -> None:
        self.reaper = reaper
        self.containers: dict[str, Container] = {}
        self.loop = asyncio.get_running_loop()
        self._consoles = itertools.count()
        os.makedirs(BUNDLES, exist_ok=True)
        os.makedirs(CONSOLES, exist_ok=True)
        os.makedirs(CRUN_ROOT, exist_ok=True)

    def get(self, cid: str) -> Container:
        ctr = self.containers.get(cid)
        if ctr is None:
            raise _error(Code.NOT_FOUND, f"container {cid!r} not found")
        return ctr

    def _crun(self, *args: str) -> list[str]:
        return [CRUN, "--root", CRUN_ROOT, *args]

    async def _crun_ok(self, *args: str) -> None:
        code, out = await self.reaper.run(self._crun(*args))
        if code != 0:
            raise _error(Code.INTERNAL, f"crun {args[0]} failed: {_last_line(out)}")

    def _stdio(self, proc: Process, want_stdin: bool) -> tuple[int | None, int, int]:
        """Make pipes; keep our ends in proc, return the child's ends."""
        child_in = None
        if want_stdin:
            r, w = os.pipe2(os.O_CLOEXEC)
            proc.stdin_fd, child_in = w, r
        r1, w1 = os.pipe2(os.O_CLOEXEC)
        r2, w2 = os.pipe2(os.O_CLOEXEC)
        proc.stdout_fd, proc.stderr_fd = r1, r2
        for fd in (r1, r2):
            os.set_blocking(fd, False)
        return child_in, w1, w2

    def _watch_exit(self, ctr: Container, proc: Process) -> None:
        fut = self.reaper.wait(proc.waiter_pid)

        def done(f: asyncio.Future[int]) -> None:
            proc.exit_code = f.result()
            proc.exited_at_ns = time.time_ns()
            proc.exited.set()
            if proc is ctr.init:
                ctr.state = State.STOPPED
            log.info("container %s exec %r exited with %d", ctr.id, proc.exec_id, proc.exit_code)

        fut.add_done_callback(done)

    async def create(
        self,
        cid: str,
        spec: dict[str, Any],
        rootfs: str,
        stdin: bool,
        terminal: bool,
        pod_sandbox: str = "",
        pod_namespaces: list[str] | tuple[str, ...] = (),
        pod_exact: bool = False,
        block_rootfs: tuple[str, str] | None = None,
        block_devices: dict[str, tuple[int, int]] | None = None,
        guest_devices: bool = False,
    ) -> None:
        """``block_rootfs``: the (image, scratch) disk serials the rootfs is made of;
        ``block_devices``: serial → host major:minor of each host block device;
        ``guest_devices``: a privileged container gets every guest device."""
        if cid in self.containers:
            raise _error(Code.ALREADY_EXISTS, f"container {cid!r} already exists")
        if pod_sandbox:
            spec = self._join_pod(spec, pod_sandbox, pod_namespaces, pod_exact)
        if block_devices or guest_devices:
            spec = await self._guest_devices(spec, block_devices or {}, guest_devices)
        if block_rootfs is not None:
            rootfs = await disks.mount_block_rootfs(self.reaper, cid, *block_rootfs)
        try:
            await self._create(cid, spec, rootfs, stdin, terminal)
        except BaseException:
            if block_rootfs is not None:
                disks.unmount_block_rootfs(cid)
            raise

    @staticmethod
    async def _guest_devices(
        spec: dict[str, Any], blocks: dict[str, tuple[int, int]], every: bool
    ) -> dict[str, Any]:
        numbers = {}
        for serial, host in blocks.items():
            numbers[host] = disks.dev_numbers(await disks.wait_disk(serial))
        linux = disks.renumber(spec.get("linux") or {}, numbers)
        if every:
            linux["devices"] = [*(linux.get("devices") or []), *disks.guest_devices()]
        return {**spec, "linux": linux}

    async def _create(
        self, cid: str, spec: dict[str, Any], rootfs: str, stdin: bool, terminal: bool
    ) -> None:
        if not os.path.isdir(rootfs):
            raise _error(Code.INVALID_ARGUMENT, f"rootfs {rootfs} is not a directory in the guest")
        bundle = os.path.join(BUNDLES, cid)
        os.makedirs(bundle)
        spec = dict(spec)
        spec["root"] = {**spec.get("root", {}), "path": rootfs}
        spec.setdefault("process", {})["terminal"] = terminal
        linux = spec.setdefault("linux", {})
        linux["cgroupsPath"] = f"{CGROUP_PARENT}/{cid}"
        spec.pop("hooks", None)
        try:
            network.apply_net_sysctls(linux)
        except OSError as exc:
            raise _error(Code.INVALID_ARGUMENT, f"sysctl: {exc}") from exc
        with open(os.path.join(bundle, "config.json"), "w", encoding="utf-8") as fh:
            json.dump(spec, fh)
        init = Process(exec_id="", terminal=terminal)
        ctr = Container(cid, bundle, init)
        pid_file = os.path.join(bundle, "init.pid")
        args = [
            "--log",
            f"file:{bundle}/crun.log",
            "create",
            "--bundle",
            bundle,
            "--pid-file",
            pid_file,
        ]
        try:
            if terminal:
                await self._spawn_with_console(init, args, cid, bundle)
            else:
                child_in, w1, w2 = self._stdio(init, stdin)
                try:
                    pid = self.reaper.spawn(
                        [*self._crun(*args), cid], stdin=child_in, stdout=w1, stderr=w2
                    )
                finally:
                    for fd in (child_in, w1, w2):
                        if fd is not None:
                            os.close(fd)
                code = await self.reaper.wait(pid)
                if code != 0:
                    raise _error(Code.INTERNAL, f"crun create failed: {_crun_log(bundle)}")
            with open(pid_file, encoding="utf-8") as fh:
                init.pid = init.waiter_pid = int(fh.read().strip())
        except BaseException:
            init.close_fds()
            with contextlib.suppress(Exception):
                await self.reaper.run(self._crun("delete", "--force", cid))
            shutil.rmtree(bundle, ignore_errors=True)
            raise
        self.containers[cid] = ctr
        self._watch_exit(ctr, init)

    def _join_pod(
        self,
        spec: dict[str, Any],
        sandbox_cid: str,
        extra: list[str] | tuple[str, ...] = (),
        exact: bool = False,
    ) -> dict[str, Any]:
        """The spec with its IPC, UTS and network namespaces those of the pod's sandbox,
        and the ``extra`` ones (OCI types: "pid") too; with ``exact``, only ``extra``
        (ipc, uts, pid: the network is the VM's, or the spec's own new one)."""
        sandbox = self.get(sandbox_cid)
        if sandbox.state == State.STOPPED or not sandbox.init.pid:
            raise _error(Code.FAILED_PRECONDITION, f"pod sandbox {sandbox_cid!r} is not running")
        unknown = set(extra) - set(POD_SHAREABLE) - set(POD_NAMESPACES)
        if unknown:
            raise _error(Code.INVALID_ARGUMENT, f"cannot share the pod's {sorted(unknown)}")
        if exact:
            named = {**POD_NAMESPACES, **POD_SHAREABLE}
            joined = {k: named[k] for k in extra if k != "network"}
        else:
            shared = {k: POD_SHAREABLE[k] for k in extra if k in POD_SHAREABLE}
            joined = {**POD_NAMESPACES, **shared}
        pid = sandbox.init.pid
        linux = dict(spec.get("linux") or {})
        namespaces = [ns for ns in linux.get("namespaces") or [] if ns.get("type") not in joined]
        for kind, name in joined.items():
            namespaces.append({"type": kind, "path": f"/proc/{pid}/ns/{name}"})
        linux["namespaces"] = namespaces
        return {**spec, "linux": linux}

    def _console_path(self) -> str:
        return os.path.join(CONSOLES, f"{next(self._consoles)}.sock")

    async def _spawn_with_console(
        self, proc: Process, args: list[str], cid: str, bundle: str
    ) -> None:
        sock_path = self._console_path()
        srv = _console_listener(sock_path)
        try:
            pid = self.reaper.spawn([*self._crun(*args, "--console-socket", sock_path), cid])
            accept = self.loop.run_in_executor(None, _blocking_accept, srv)
            code = await self.reaper.wait(pid)
            if code != 0:
                accept.cancel()
                raise _error(Code.INTERNAL, f"crun failed: {_crun_log(bundle)}")
            master = await asyncio.wait_for(accept, 10)
        finally:
            srv.close()
            with contextlib.suppress(OSError):
                os.unlink(sock_path)
        os.set_blocking(master, False)
        proc.stdout_fd = master
        proc.stdin_fd = os.dup(master)

    async def start(self, cid: str) -> None:
        ctr = self.get(cid)
        if ctr.state != State.CREATED:
            raise _error(Code.FAILED_PRECONDITION, f"container {cid!r} is {ctr.state.value}")
        await self._crun_ok("start", ctr.crun_id)
        if ctr.state == State.CREATED:
            ctr.state = State.RUNNING

    async def exec(
        self, cid: str, exec_id: str, process: dict[str, Any], stdin: bool, terminal: bool
    ) -> None:
        ctr = self.get(cid)
        if ctr.state != State.RUNNING:
            raise _error(Code.FAILED_PRECONDITION, f"container {cid!r} is {ctr.state.value}")
        if not exec_id or exec_id in ctr.execs:
            raise _error(Code.ALREADY_EXISTS, f"exec id {exec_id!r} is empty or in use")
        process = dict(process)
        process["terminal"] = terminal
        proc_file = os.path.join(ctr.bundle, f"exec-{exec_id}.json")
        pid_file = os.path.join(ctr.bundle, f"exec-{exec_id}.pid")
        with open(proc_file, "w", encoding="utf-8") as fh:
            json.dump(process, fh)
        proc = Process(exec_id=exec_id, terminal=terminal)
        log_file = os.path.join(ctr.bundle, f"exec-{exec_id}.log")
        args = ["--log", f"file:{log_file}", "exec", "--process", proc_file]
        args += ["--pid-file", pid_file]
        if terminal:
            sock_path = self._console_path()
            srv = _console_listener(sock_path)
            try:
                proc.waiter_pid = self.reaper.spawn(
                    [*self._crun(*args, "--console-socket", sock_path), ctr.crun_id]
                )
                self._watch_exit(ctr, proc)
                master = await self._console_or_exit(srv, proc, log_file)
            finally:
                srv.close()
                with contextlib.suppress(OSError):
                    os.unlink(sock_path)
            os.set_blocking(master, False)
            proc.stdout_fd, proc.stdin_fd = master, os.dup(master)
        else:
            child_in, w1, w2 = self._stdio(proc, stdin)
            try:
                proc.waiter_pid = self.reaper.spawn(
                    [*self._crun(*args), ctr.crun_id], stdin=child_in, stdout=w1, stderr=w2
                )
            finally:
                for fd in (child_in, w1, w2):
                    if fd is not None:
                        os.close(fd)
            self._watch_exit(ctr, proc)
        ctr.execs[exec_id] = proc
        # The exec'd PID (for signals) appears once crun has forked it.
        for _ in range(500):
            if proc.exited.is_set():
                break
            try:
                with open(pid_file, encoding="utf-8") as fh:
                    proc.pid = int(fh.read().strip() or 0)
                if proc.pid:
                    break
            except (FileNotFoundError, ValueError):
                pass
            await asyncio.sleep(0.01)

    async def _console_or_exit(self, srv: socket.socket, proc: Process, log_file: str) -> int:
        """The pty master crun sends, or an error at once if crun ends without one
        (its exec failed: the caller's start fails, nothing waits for a timeout)."""
        accept = self.loop.run_in_executor(None, _blocking_accept, srv)
        exited = asyncio.ensure_future(proc.exited.wait())
        try:
            await asyncio.wait(
                {accept, exited}, timeout=CONSOLE_WAIT, return_when="FIRST_COMPLETED"
            )
            if not accept.done() and exited.done():
                # A fast process may end right after crun sent its console.
                await asyncio.wait({accept}, timeout=1)
        finally:
            exited.cancel()
        if accept.done():
            return accept.result()
        with contextlib.suppress(OSError):
            srv.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        accept.add_done_callback(_close_console)
        if proc.exited.is_set():
            why = _crun_log_file(log_file)
            raise _error(Code.INTERNAL, f"crun exec failed: {why}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.waiter_pid, signal.SIGKILL)
        raise _error(Code.DEADLINE_EXCEEDED, "crun exec sent no console in time")

    async def pause(self, cid: str) -> None:
        ctr = self.get(cid)
        if ctr.state != State.RUNNING:
            raise _error(Code.FAILED_PRECONDITION, f"container {cid!r} is {ctr.state.value}")
        await self._crun_ok("pause", ctr.crun_id)
        ctr.state = State.PAUSED

    async def resume(self, cid: str) -> None:
        ctr = self.get(cid)
        if ctr.state != State.PAUSED:
            raise _error(Code.FAILED_PRECONDITION, f"container {cid!r} is not paused")
        await self._crun_ok("resume", ctr.crun_id)
        if ctr.state == State.PAUSED:
            ctr.state = State.RUNNING

    async def update(self, cid: str, resources: dict[str, Any]) -> None:
        ctr = self.get(cid)
        if ctr.state == State.STOPPED:
            raise _error(Code.FAILED_PRECONDITION, f"container {cid!r} is stopped")
        path = os.path.join(ctr.bundle, "resources.json")
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(resources, fh)
        await self._crun_ok("update", "--resources", path, ctr.crun_id)

    def cgroup_dir(self, cid: str) -> str:
        return f"/sys/fs/cgroup{CGROUP_PARENT}/{self.get(cid).crun_id}"

    async def signal(self, cid: str, exec_id: str, sig: int, all_procs: bool) -> None:
        ctr = self.get(cid)
        proc = ctr.process(exec_id)
        if proc.exited.is_set():
            raise _error(Code.NOT_FOUND, f"process {exec_id or 'init'} of {cid!r} is not running")
        if all_procs and not exec_id:
            await self._crun_ok("kill", "--all", ctr.crun_id, str(sig))
            return
        pid = proc.pid or proc.waiter_pid
        try:
            os.kill(pid, sig)
        except ProcessLookupError as exc:
            raise _error(Code.NOT_FOUND, f"process {pid} is gone") from exc

    async def wait(self, cid: str, exec_id: str) -> tuple[int, int]:
        proc = self.get(cid).process(exec_id)
        await proc.exited.wait()
        assert proc.exit_code is not None
        return proc.exit_code, proc.exited_at_ns

    async def _readable(self, fd: int) -> None:
        fut: asyncio.Future[None] = self.loop.create_future()
        self.loop.add_reader(fd, lambda: fut.done() or fut.set_result(None))
        try:
            await fut
        finally:
            self.loop.remove_reader(fd)

    async def read(self, cid: str, exec_id: str, which: str, max_len: int) -> tuple[bytes, bool]:
        proc = self.get(cid).process(exec_id)
        fd = proc.stdout_fd if which == "stdout" else proc.stderr_fd
        if fd is None or (proc.terminal and which == "stderr"):
            return b"", True
        while True:
            try:
                data = os.read(fd, max(1, min(max_len, 1 << 20)))
            except BlockingIOError:
                await self._readable(fd)
                continue
            except OSError as exc:
                if exc.errno == errno.EIO:  # pty: the slave side is closed
                    return b"", True
                raise
            return data, not data

    async def write(self, cid: str, exec_id: str, data: bytes) -> int:
        proc = self.get(cid).process(exec_id)
        if proc.stdin_fd is None:
            raise _error(Code.FAILED_PRECONDITION, "stdin is closed or was not requested")
        fd = proc.stdin_fd
        try:
            return await self.loop.run_in_executor(None, _write_all, fd, data)
        except BrokenPipeError:
            return 0

    def close_stdin(self, cid: str, exec_id: str) -> None:
        proc = self.get(cid).process(exec_id)
        if proc.stdin_fd is not None:
            if proc.terminal:
                with contextlib.suppress(OSError):
                    os.write(proc.stdin_fd, b"\x04")  # ^D: end of input on a tty
            else:
                os.close(proc.stdin_fd)
                proc.stdin_fd = None

    def resize(self, cid: str, exec_id: str, rows: int, cols: int) -> None:
        proc = self.get(cid).process(exec_id)
        if proc.terminal and proc.stdout_fd is not None:
            fcntl.ioctl(proc.stdout_fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def processes(self, cid: str) -> list[tuple[int, list[str]]]:
        path = f"{self.cgroup_dir(cid)}/cgroup.procs"
        out = []
        with contextlib.suppress(FileNotFoundError), open(path, encoding="utf-8") as fh:
            for line in fh:
                pid = int(line)
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as cf:
                        args = [a.decode(errors="replace") for a in cf.read().split(b"\0") if a]
                except OSError:
                    continue
                out.append((pid, args))
        return out

    async def remove(self, cid: str) -> None:
        ctr = self.get(cid)
        for proc in (ctr.init, *ctr.execs.values()):
            if not proc.exited.is_set() and proc.waiter_pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid or proc.waiter_pid, signal.SIGKILL)
        code, out = await self.reaper.run(self._crun("delete", "--force", ctr.crun_id))
        if code != 0:
            log.warning("crun delete %s: %s", cid, _last_line(out))
        for proc in (ctr.init, *ctr.execs.values()):
            proc.close_fds()
        shutil.rmtree(ctr.bundle, ignore_errors=True)
        shutil.rmtree(os.path.join(FILES, ctr.crun_id), ignore_errors=True)
        disks.unmount_block_rootfs(ctr.crun_id)  # the host unplugs its disks next
        del self.containers[cid]

    async def forget(self, cid: str, exec_id: str, grace: float = 5.0) -> None:
        """Drop exec ``exec_id`` of ``cid`` (killed first if it still runs), so that its
        id can be used again and its record and files do not pile up."""
        ctr = self.get(cid)
        proc = ctr.process(exec_id)
        if not exec_id:
            raise _error(Code.INVALID_ARGUMENT, "the init process goes with its container")
        if not proc.exited.is_set():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid or proc.waiter_pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.exited.wait(), grace)
        proc.close_fds()
        for suffix in ("json", "pid", "log"):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(ctr.bundle, f"exec-{exec_id}.{suffix}"))
        ctr.execs.pop(exec_id, None)

    def rename(self, old: str, new: str) -> None:
        """Known as ``new`` from now on (a restore under another ID); crun, the cgroup
        and the guest paths keep the first name."""
        ctr = self.get(old)
        if new != old and new in self.containers:
            raise _error(Code.ALREADY_EXISTS, f"container {new!r} already exists")
        del self.containers[old]
        ctr.id = new
        self.containers[new] = ctr

    async def remove_all(self) -> None:
        for cid in list(self.containers):
            with contextlib.suppress(Exception):
                await self.remove(cid)


def _blocking_accept(srv: socket.socket) -> int:
    srv.setblocking(True)
    srv.settimeout(15)
    return _take_master(srv)


def _write_all(fd: int, data: bytes) -> int:
    view = memoryview(data)
    total = 0
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            import select

            select.select([], [fd], [], 1)
            continue
        view = view[n:]
        total += n
    return total


def _last_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def _close_console(fut: asyncio.Future[int]) -> None:
    """A console that came too late: nobody will use it."""
    if not fut.cancelled() and fut.exception() is None:
        with contextlib.suppress(OSError):
            os.close(fut.result())


def _crun_log(bundle: str) -> str:
    return _crun_log_file(os.path.join(bundle, "crun.log"))


def _crun_log_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return "(no crun log)"
    last = _last_line(text)
    with contextlib.suppress(ValueError):
        return str(json.loads(last).get("msg", last))
    return last
