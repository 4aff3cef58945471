"""Run a command as a child subreaper, like conmon and containerd's shim.

Usage: subreaper.py STATUSFILE PIDFILE -- CMD...  Runs CMD (with our stdio), then
reaps the PID written to PIDFILE (reparented to us by the stub's double fork);
writes ``cmd N`` and ``exit N`` lines to STATUSFILE.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import time

PR_SET_CHILD_SUBREAPER = 36


def main() -> int:
    statusfile, pidfile, _, *cmd = sys.argv[1:]
    out = open(statusfile, "w", buffering=1)  # noqa: SIM115 - lives as long as the process
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    rc = subprocess.call(cmd)
    print(f"cmd {rc}", file=out)
    if rc != 0:
        return 1
    with open(pidfile) as fh:
        pid = int(fh.read())
    while True:
        try:
            got, status = os.waitpid(-1, 0)
        except ChildProcessError:
            print("lost", file=out)
            return 1
        if got == pid:
            code = os.waitstatus_to_exitcode(status)
            print(f"exit {code if code >= 0 else 128 - code}", file=out)
            return 0
        time.sleep(0)


if __name__ == "__main__":
    sys.exit(main())
