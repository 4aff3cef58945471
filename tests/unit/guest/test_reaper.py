"""The guest's reaper runs here too: it is plain Python, only PID 1 in the VM."""

from __future__ import annotations

import asyncio
import os
import signal

from cocoon.guest.reaper import Reaper, status_to_code


def test_status_codes() -> None:
    assert status_to_code(7 << 8) == 7
    assert status_to_code(signal.SIGKILL) == 128 + 9


def test_spawn_wait_and_capture() -> None:
    async def main() -> None:
        reaper = Reaper()
        code, out = await reaper.run(["/bin/sh", "-c", "echo out; echo err >&2; exit 3"])
        assert code == 3 and "out" in out and "err" in out
        pid = reaper.spawn(["/bin/sh", "-c", "kill -9 $$"])
        assert await reaper.wait(pid) == 137
        # A child that exits before anyone waits is remembered.
        pid = reaper.spawn(["/bin/true"])
        await asyncio.sleep(0.3)
        assert await reaper.wait(pid) == 0

    asyncio.run(main())
    assert os.getpid() > 0
