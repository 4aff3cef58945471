from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cocoon.hypervisor.jail import NR, RET_ALLOW, RET_ERRNO, run_filter, share_filter

EPERM = RET_ERRNO | errno.EPERM
O_CREAT, O_TMPFILE = 0o100, 0o20200000


@pytest.mark.parametrize(
    ("call", "args", "verdict"),
    [
        ("chmod", [0, 0o755], RET_ALLOW),
        ("chmod", [0, 0o4755], EPERM),
        ("fchmod", [3, 0o2755], EPERM),
        ("fchmodat", [3, 0, 0o6755], EPERM),
        ("fchmodat", [3, 0, 0o1777], RET_ALLOW),  # sticky is harmless
        ("fchmodat2", [3, 0, 0o4700, 0], EPERM),
        ("mkdir", [0, 0o2775], EPERM),
        ("mkdirat", [3, 0, 0o755], RET_ALLOW),
        ("creat", [0, 0o4755], EPERM),
        ("open", [0, O_CREAT, 0o4755], EPERM),
        ("open", [0, 0, 0o4755], RET_ALLOW),  # mode is ignored without O_CREAT
        ("openat", [3, 0, O_CREAT, 0o644], RET_ALLOW),
        ("openat", [3, 0, O_CREAT, 0o6644], EPERM),
        ("openat", [3, 0, O_TMPFILE, 0o4600], EPERM),
        ("mknodat", [3, 0, 0o020644, 0x103], EPERM),  # char device 1:3
        ("mknodat", [3, 0, 0o060644, 0x700], EPERM),  # block device 7:0
        ("mknodat", [3, 0, 0o010644, 0], RET_ALLOW),  # a FIFO
        ("mknod", [0, 0o100644 | 0o4000, 0], EPERM),
        ("mknod", [0, 0o140755, 0], RET_ALLOW),  # a socket
        ("openat2", [3, 0, 0, 24], RET_ERRNO | errno.ENOSYS),
    ],
)
def test_share_filter(call: str, args: list[int], verdict: int) -> None:
    assert run_filter(share_filter(), NR[call], args) == verdict


def test_other_calls_and_x32_calls() -> None:
    prog = share_filter()
    assert run_filter(prog, 0, [0, 0, 0]) == RET_ALLOW  # read
    assert run_filter(prog, 0x40000000 | NR["chmod"], [0, 0o4755]) == EPERM


SPAWN = """
import subprocess, sys, time
from cocoon.hypervisor.jail import FILE_CAPS, Jail, preexec
p = subprocess.Popen(["sleep", "60"], preexec_fn=preexec(Jail(FILE_CAPS, uid=int(sys.argv[1]))))
print(p.pid, flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="changing uid needs root")
@pytest.mark.parametrize("uid", [0, 1543503999])
def test_a_jailed_child_dies_with_its_parent(uid: int) -> None:
    """Changing credentials clears the parent-death signal: it is armed after them."""
    parent = subprocess.Popen(
        [sys.executable, "-c", SPAWN, str(uid)], stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    for _ in range(100):
        try:
            status = Path(f"/proc/{child}/status").read_text()
        except FileNotFoundError:
            return
        if "State:\tZ" in status:
            return
        time.sleep(0.02)
    os.kill(child, signal.SIGKILL)
    raise AssertionError(f"the jailed child {child} outlived its parent")
