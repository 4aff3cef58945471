"""The template directory: one subdirectory per template, its metadata and checks.

Layout (root-only: the RAM file holds a whole guest's memory)::

    <root>/                 0700
      .lock                 flock held while a template is created or removed
      .seen/<key[:32]>      shapes refused a template while the store was full
      factory.log           one line per template made or removed, and why
      <key[:32]>/           0700, renamed into place only once complete; its
                            mtime is the template's last use (LRU eviction)
        meta.json           TemplateMeta
        memory              guest RAM (sparse), 0400; clones map it private
        state               device state (x-ignore-shared), 0400

A template is immutable once in place, so readers need no lock. Before use it
is checked (:meth:`Store.problem`): the files it was booted from are unchanged,
the state file's SHA-256 matches and the RAM file's inode, size and ctime are
those recorded when it was saved (ctime cannot be set back, so any write shows).

The store is bounded (count and bytes, :mod:`cocoon.factory.bound`): each use
touches the template's directory, and the least recently used go first.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cocoon.errors import CocoonError
from cocoon.factory.bound import Bound, Entry, trim
from cocoon.factory.key import Shape, fingerprint

DEFAULT_ROOT = Path("/var/lib/cocoon/templates")
META = "meta.json"
MEMORY = "memory"
STATE = "state"
LOG_LIMIT = 1 << 20
SEEN = ".seen"
SEEN_LIMIT = 256  # refused shapes remembered
DEFAULT_BOUND = Bound(8, 2048 << 20)


@dataclass
class TemplateMeta:
    key: str
    vcpus: int
    memory_mib: int
    machine: str
    argv: list[str]  # with placeholder paths (cocoon.factory.key.generic_plan)
    files: list[list[object]]  # fingerprints of qemu, kernel, initrd, image
    state_sha256: str
    memory_ino: int
    memory_size: int
    memory_ctime_ns: int
    created: float = field(default_factory=time.time)
    boot_seconds: float = 0.0
    save_seconds: float = 0.0

    @property
    def shape(self) -> Shape:
        return Shape(self.vcpus, self.memory_mib)


@dataclass(frozen=True)
class Template:
    dir: Path
    meta: TemplateMeta

    @property
    def memory(self) -> Path:
        return self.dir / MEMORY

    @property
    def state(self) -> Path:
        return self.dir / STATE


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def disk_bytes(tdir: Path) -> int:
    """Bytes a template takes on disk (allocated blocks: its RAM file is sparse)."""
    total = 0
    with contextlib.suppress(OSError):
        for p in tdir.iterdir():
            with contextlib.suppress(OSError):
                total += p.stat().st_blocks * 512
    return total


class Store:
    def __init__(self, root: Path, bound: Bound = DEFAULT_BOUND) -> None:
        self.root = root
        self.bound = bound

    def dir_for(self, key: str) -> Path:
        return self.root / key[:32]

    def ensure_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)

    # -- reading ----------------------------------------------------------------
    def load(self, tdir: Path) -> Template:
        """The template in ``tdir``; CocoonError if its metadata is missing or bad."""
        try:
            data = json.loads((tdir / META).read_text())
            return Template(tdir, TemplateMeta(**data))
        except (OSError, ValueError, TypeError) as exc:
            raise CocoonError(f"template {tdir.name}: unreadable metadata", exc) from exc

    def find(self, key: str) -> Template | None:
        tdir = self.dir_for(key)
        if not (tdir / META).exists():
            return None
        tmpl = self.load(tdir)
        return tmpl if tmpl.meta.key == key else None

    def all(self) -> list[Path]:
        """Every template directory (complete or not), oldest first."""
        try:
            dirs = [p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        except FileNotFoundError:
            return []
        return sorted(dirs, key=lambda p: p.stat().st_mtime)

    def entries(self) -> list[Entry]:
        """Every template with its size on disk and its last use (for the bound)."""
        out = []
        for tdir in self.all():
            with contextlib.suppress(OSError):
                out.append(Entry(tdir.name, disk_bytes(tdir), tdir.stat().st_mtime))
        return out

    def touch(self, tdir: Path) -> None:
        """Record a use of the template (its directory's mtime); no lock needed."""
        with contextlib.suppress(OSError):
            os.utime(tdir)

    def seen(self, key: str) -> bool:
        """Whether this shape was refused a template before (see cocoon.factory.bound)."""
        return (self.root / SEEN / key[:32]).exists()

    def remember(self, key: str) -> None:
        """Note a shape refused a template (the store was full); the oldest are forgotten."""
        seen = self.root / SEEN
        with contextlib.suppress(OSError):
            seen.mkdir(mode=0o700, exist_ok=True)
            (seen / key[:32]).touch()
            marks = sorted(seen.iterdir(), key=lambda p: p.stat().st_mtime)
            for old in marks[:-SEEN_LIMIT]:
                old.unlink()

    def forget(self, key: str) -> None:
        with contextlib.suppress(OSError):
            (self.root / SEEN / key[:32]).unlink()

    def evict(self, names: list[str], why: str) -> None:
        """Remove these templates (call under the lock), one log line each."""
        for name in names:
            self.remove(self.root / name)
            self.record(f"removed template {name[:12]}: {why}")

    def enforce(self, keep: str = "") -> list[str]:
        """Evict the least recently used until the store fits its bound (under the lock).

        ``keep`` (the template just made) is never evicted for another; the
        names removed are returned.
        """
        names = trim(self.entries(), self.bound, keep)
        self.evict(names, f"least recently used, over the bound ({self.bound.describe()})")
        return names

    def problem(self, tmpl: Template) -> str:
        """Why ``tmpl`` must not be used ("" when it is sound)."""
        meta = tmpl.meta
        for recorded in meta.files:
            try:
                now = fingerprint(str(recorded[0]))
            except OSError:
                return f"stale: {recorded[0]} is gone"
            if now != recorded:
                return f"stale: {recorded[0]} changed since the template was made"
        try:
            st = os.stat(tmpl.memory)
            if (st.st_ino, st.st_size, st.st_ctime_ns) != (
                meta.memory_ino,
                meta.memory_size,
                meta.memory_ctime_ns,
            ):
                return "corrupt: its RAM file was modified after it was saved"
            if sha256_file(tmpl.state) != meta.state_sha256:
                return "corrupt: its device-state file does not match its checksum"
        except OSError as exc:
            return f"corrupt: {exc.strerror or exc}"
        return ""

    # -- writing ----------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def locked(self, timeout: float) -> AsyncIterator[None]:
        """Hold the store's lock (one creator at a time, across processes)."""
        self.ensure_root()
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if loop.time() > deadline:
                        raise CocoonError(
                            f"the template store {self.root} stayed locked for {timeout:g}s"
                        ) from None
                    await asyncio.sleep(0.05)
            yield
        finally:
            os.close(fd)

    def record(self, event: str) -> None:
        """Append one line to the factory log (what was made or removed, and why)."""
        log_file = self.root / "factory.log"
        with contextlib.suppress(OSError):
            if log_file.stat().st_size > LOG_LIMIT:
                os.replace(log_file, log_file.with_suffix(".log.1"))
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        with contextlib.suppress(OSError), open(log_file, "a", encoding="utf-8") as fh:
            fh.write(f"{stamp} pid {os.getpid()}: {event}\n")

    def new_work_dir(self, key: str) -> Path:
        """A private directory to build in; leftovers of dead builders are removed."""
        self.ensure_root()
        prefix = f".{key[:32]}.tmp-"
        for old in self.root.glob(prefix + "*"):
            shutil.rmtree(old, ignore_errors=True)  # only ever called under the lock
        work = self.root / f"{prefix}{os.getpid()}"
        work.mkdir(mode=0o700)
        return work

    def publish(self, work: Path, meta: TemplateMeta) -> Template:
        """Seal the files read-only, record their identity, move the template into place."""
        os.chmod(work / MEMORY, 0o400)
        os.chmod(work / STATE, 0o400)
        st = os.stat(work / MEMORY)
        meta.memory_ino, meta.memory_size, meta.memory_ctime_ns = (
            st.st_ino,
            st.st_size,
            st.st_ctime_ns,
        )
        meta.state_sha256 = sha256_file(work / STATE)
        (work / META).write_text(json.dumps(asdict(meta), indent=1))
        target = self.dir_for(meta.key)
        if target.exists():
            self.remove(target)
        os.rename(work, target)
        self.touch(target)
        return Template(target, meta)

    def prune_stale(self) -> list[str]:
        """Remove templates whose kernel, initrd, image or QEMU changed: they never match again.

        Called under the lock when a template is made, so asset rebuilds do
        not pile up templates on disk.
        """
        removed = []
        for tdir in self.all():
            try:
                problem = self.problem(self.load(tdir))
            except CocoonError:
                continue
            if problem.startswith("stale"):
                self.remove(tdir)
                self.record(f"removed template {tdir.name[:12]}: {problem}")
                removed.append(tdir.name)
        return removed

    def remove(self, tdir: Path) -> None:
        """Delete a template; clones running from it keep their mapping (the inode lives on)."""
        trash = tdir.with_name(f".{tdir.name}.trash-{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            os.rename(tdir, trash)
            shutil.rmtree(trash, ignore_errors=True)
