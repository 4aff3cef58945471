"""Fixtures for end-to-end tests: real QEMU, the real guest kernel and agent, crun in the guest.

Every test gets a private runtime root; after the test, nothing of it may be
left: no process whose command line names it, no mount under it, no state dir.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.bundle import make_bundle, make_rootfs

COCOON = [sys.executable, "-m", "cocoon.cli.main"]


def _assets_ready() -> bool:
    from cocoon.assets import locate
    from cocoon.config.paths import assets_dir
    from cocoon.errors import CocoonError

    try:
        locate(assets_dir())
        return True
    except CocoonError:
        return False


@pytest.fixture(scope="session", autouse=True)
def _require_assets() -> None:
    if os.geteuid() != 0:
        pytest.fail("end-to-end tests need root")
    if not _assets_ready():
        pytest.fail("guest assets are not built: run `make setup` (cocoon assets build)")


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_rootfs(tmp_path_factory.mktemp("busybox") / "rootfs")


class Env:
    """A private runtime root plus helpers to run ``cocoon`` against it."""

    def __init__(self, root: Path, work: Path, rootfs: Path) -> None:
        self.root = root
        self.work = work
        self.rootfs = rootfs
        self._n = 0

    def bundle(self, args: list[str], **kw: object) -> Path:
        self._n += 1
        return make_bundle(self.work / f"bundle{self._n}", args, rootfs=self.rootfs, **kw)

    def argv(self, *args: str) -> list[str]:
        return [*COCOON, "--root", str(self.root), *args]

    def run(
        self,
        *args: str,
        input: bytes | None = None,
        timeout: float = 180,
        env: dict[str, str] | None = None,
        capture: bool = True,
    ) -> subprocess.CompletedProcess[bytes]:
        if not capture:
            with open(self.work / "out.log", "ab") as out:
                return subprocess.run(
                    self.argv(*args),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    timeout=timeout,
                    env={**os.environ, **(env or {})},
                )
        return subprocess.run(
            self.argv(*args),
            input=input,
            capture_output=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
            stdin=None if input is not None else subprocess.DEVNULL,
        )

    def leaks(self) -> list[str]:
        """Processes, mounts and state left behind under this root."""
        found: list[str] = []
        marker = str(self.root).encode()
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    cmd = fh.read()
            except OSError:
                continue
            if marker in cmd:
                text = cmd.replace(b"\0", b" ").decode(errors="replace")
                found.append(f"process {pid}: {text}")
        with open("/proc/self/mountinfo", encoding="utf-8") as fh:
            for line in fh:
                if str(self.root) in line.split()[4]:
                    found.append(f"mount {line.split()[4]}")
        if self.root.exists():
            found += [f"state {p}" for p in self.root.iterdir() if p.name != ".locks"]
            locks = self.root / ".locks"
            if locks.exists():
                found += [f"lock {p}" for p in locks.iterdir()]
        return found


@pytest.fixture
def env(busybox_rootfs: Path) -> Iterator[Env]:
    # Short paths: unix socket paths are limited to 108 bytes.
    work = Path(tempfile.mkdtemp(prefix="cc-", dir="/tmp"))
    e = Env(work / "r", work, busybox_rootfs)
    try:
        yield e
        leaks = e.leaks()
        assert not leaks, f"leaked: {leaks}"
    finally:
        _kill_leftovers(e)
        shutil.rmtree(work, ignore_errors=True)


def _kill_leftovers(e: Env) -> None:
    """Stop anything a failed test left, by the PIDs its state recorded."""
    from cocoon.service.launch import force_cleanup
    from cocoon.service.persist import SandboxPaths

    if e.root.exists():
        for d in e.root.iterdir():
            force_cleanup(SandboxPaths(e.root, d.name))
