"""Child processes of PID 1: one reaper for all of them.

The agent is PID 1, so every orphaned container process becomes its child.
A single SIGCHLD handler reaps everything with waitpid(-1) and hands each
status to whoever waits for that PID; statuses nobody asked for yet are kept
(a container may exit before anyone calls Wait). Children are started with
posix_spawn, never subprocess.Popen, whose own waitpid would race the reaper.
"""

from __future__ import annotations

import asyncio
import os
import signal


def status_to_code(status: int) -> int:
    """Exit code as a shell reports it: the code, or 128+N for signal N."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


class Reaper:
    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._waiters: dict[int, asyncio.Future[int]] = {}
        self._unclaimed: dict[int, int] = {}
        self._loop.add_signal_handler(signal.SIGCHLD, self._reap)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = status_to_code(status)
            fut = self._waiters.pop(pid, None)
            if fut is not None and not fut.done():
                fut.set_result(code)
            else:
                self._unclaimed[pid] = code
                if len(self._unclaimed) > 4096:  # orphans nobody will ask about
                    self._unclaimed.pop(next(iter(self._unclaimed)))

    def wait(self, pid: int) -> asyncio.Future[int]:
        """A future with the exit code of child ``pid`` (128+N for signal N)."""
        fut = self._waiters.get(pid)
        if fut is None:
            fut = self._loop.create_future()
            if pid in self._unclaimed:
                fut.set_result(self._unclaimed.pop(pid))
            else:
                self._waiters[pid] = fut
        return fut

    def forget(self, pid: int) -> None:
        self._unclaimed.pop(pid, None)

    def spawn(
        self,
        argv: list[str],
        *,
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
        env: dict[str, str] | None = None,
    ) -> int:
        """Start argv with the given fds as 0/1/2 (None: /dev/null); return its PID."""
        actions: list[tuple[int, ...]] = []
        null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
        try:
            for target, fd in ((0, stdin), (1, stdout), (2, stderr)):
                actions.append((os.POSIX_SPAWN_DUP2, null if fd is None else fd, target))
            return os.posix_spawn(
                argv[0],
                argv,
                env if env is not None else dict(os.environ),
                file_actions=actions,
                setsigdef=(signal.SIGCHLD, signal.SIGPIPE),
            )
        finally:
            os.close(null)

    async def run(self, argv: list[str], *, env: dict[str, str] | None = None) -> tuple[int, str]:
        """Run argv to completion; return (exit code, its stderr+stdout text)."""
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            pid = self.spawn(argv, stdout=w, stderr=w, env=env)
        finally:
            os.close(w)
        chunks: list[bytes] = []
        done = self._loop.create_future()

        def readable() -> None:
            data = os.read(r, 65536)
            if data:
                chunks.append(data)
            else:
                self._loop.remove_reader(r)
                done.set_result(None)

        self._loop.add_reader(r, readable)
        try:
            code = await self.wait(pid)
            await done
        finally:
            self._loop.remove_reader(r)
            os.close(r)
        return code, b"".join(chunks).decode(errors="replace").strip()
