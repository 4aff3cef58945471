"""A uid of its own for each QEMU: a lease on one uid of a range no user has.

QEMU keeps the capabilities that serving the share needs whatever its uid
(cocoon.hypervisor.jail), so the uid is what separates sandboxes from each
other and from root's processes: a compromised QEMU cannot signal or ptrace
another sandbox's QEMU, nor any root process. A lease is an ``flock`` on
``/run/cocoon-uids/<uid>``, held by the QEMU's parent for the VM's life and
released by the kernel when that process exits, however it exits.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from pathlib import Path

from cocoon.errors import CocoonError

LEASE_DIR = Path("/run/cocoon-uids")
UID_BASE = 0x5C000000  # 1543503872: far above login users and subordinate id ranges
UID_COUNT = 1 << 16


class UidLease:
    def __init__(self, uid: int, fd: int) -> None:
        self.uid = uid
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1


def lease(key: str, lease_dir: Path = LEASE_DIR) -> UidLease:
    """Lease a free uid, trying first the one ``key`` hashes to; raise CocoonError."""
    lease_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    start = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big")
    for i in range(UID_COUNT):
        uid = UID_BASE + (start + i) % UID_COUNT
        fd = os.open(lease_dir / str(uid), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return UidLease(uid, fd)
    raise CocoonError(f"no free uid in {UID_BASE}..{UID_BASE + UID_COUNT - 1}")
