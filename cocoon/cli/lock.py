"""One lock per container ID, so concurrent verbs on a container serialise.

Lock files live in ``<root>/.locks/`` (outside the state dir, which ``delete``
removes). The fds are close-on-exec and are closed in forked stubs, so a stub
never holds a verb's lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

_held: list[int] = []


@contextlib.contextmanager
def container_lock(root: Path, cid: str, must_exist: bool = True) -> Iterator[None]:
    """Hold the lock of ``cid``; raises NotFound first if it must exist and does not."""
    if must_exist and not (root / cid).is_dir():
        from cocoon.errors import NotFound

        raise NotFound(f"container {cid!r} does not exist")
    locks = root / ".locks"
    locks.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(locks / cid, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    _held.append(fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        _held.remove(fd)
        os.close(fd)


def drop_if_unused(root: Path, cid: str) -> None:
    """After a failed create: no container of that ID exists, so drop its lock file."""
    if not (root / cid).exists():
        remove_lock(root, cid)


def remove_lock(root: Path, cid: str) -> None:
    """Drop the lock file of a deleted container (call while holding it)."""
    with contextlib.suppress(OSError):
        (root / ".locks" / cid).unlink()


def close_inherited() -> None:
    """In a forked child: let go of the parent's locks."""
    for fd in list(_held):
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()
