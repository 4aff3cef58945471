"""A uid of its own for each QEMU: a lease on one uid of a range no user has.

QEMU keeps the capabilities that serving the share needs whatever its uid
(cocoon.hypervisor.jail), so the uid is what separates sandboxes from each
other and from root's processes: a compromised QEMU cannot signal or ptrace
another sandbox's QEMU, nor any root process. A lease is an ``flock`` on
``/run/cocoon-uids/<uid>``, held by the QEMU's parent for the VM's life: it
ends when that process exits, however it exits (a crash leaves only an empty,
unlocked file that the next lease of that uid reuses).
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
    def __init__(self, uid: int, fd: int, path: Path) -> None:
        self.uid = uid
        self._fd = fd
        self._path = path

    def release(self) -> None:
        """Remove the lock file, then unlock (a waiter re-checks that it locked the
        file that is still there, so no two leases ever share a uid)."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                self._path.unlink()
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1


def lease(key: str, lease_dir: Path = LEASE_DIR) -> UidLease:
    """Lease a free uid, trying first the one ``key`` hashes to; raise CocoonError."""
    lease_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    start = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big")
    for i in range(UID_COUNT):
        uid = UID_BASE + (start + i) % UID_COUNT
        path = lease_dir / str(uid)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if not os.path.samestat(os.fstat(fd), path.stat()):
                raise BlockingIOError  # released (unlinked) meanwhile: not this file
        except (BlockingIOError, FileNotFoundError):
            os.close(fd)
            continue
        return UidLease(uid, fd, path)
    raise CocoonError(f"no free uid in {UID_BASE}..{UID_BASE + UID_COUNT - 1}")
