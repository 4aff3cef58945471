"""Root tree steps that need no mmdebstrap: trim, dirs, agent install, command lines."""

from __future__ import annotations

import stat
from pathlib import Path

from cocoon.assets import rootfs


def touch(root: Path, rel: str, data: bytes = b"x") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_trim_removes_package_managers_and_keeps_runtime(tmp_path: Path) -> None:
    gone = [
        "usr/bin/perl", "usr/bin/perl5.36.0", "usr/share/perl/5.36/strict.pm",
        "usr/bin/apt-get", "var/lib/dpkg/status", "usr/bin/dpkg", "usr/share/zoneinfo/UTC",
        "usr/lib/locale/C.utf8/LC_CTYPE", "usr/lib/python3.11/test/__init__.py",
        "usr/lib/x86_64-linux-gnu/libcrun.a", "var/log/apt/history.log",
    ]  # fmt: skip
    kept = [
        "usr/bin/python3.11", "usr/bin/crun", "usr/bin/ip", "usr/lib/python3.11/os.py",
        "usr/lib/python3.11/__pycache__/os.cpython-311.pyc", "usr/lib/python3.11/asyncio/x.py",
        "usr/lib/x86_64-linux-gnu/libc.so.6", "etc/ld.so.cache", "etc/passwd",
    ]  # fmt: skip
    for rel in gone + kept:
        touch(tmp_path, rel)
    assert rootfs.trim(tmp_path) > 0
    for rel in gone:
        assert not (tmp_path / rel).exists(), rel
    for rel in kept:
        assert (tmp_path / rel).exists(), rel
    assert (tmp_path / "var/log").is_dir()


def test_ensure_dirs(tmp_path: Path) -> None:
    touch(tmp_path, "run/lock/x")
    touch(tmp_path, "tmp/junk")
    rootfs.ensure_dirs(tmp_path)
    for rel in ("run", "tmp", "mnt", "proc", "sys", "dev", "opt/cocoon/lib"):
        assert (tmp_path / rel).is_dir(), rel
    assert list((tmp_path / "run").iterdir()) == []
    assert list((tmp_path / "tmp").iterdir()) == []
    assert stat.S_IMODE((tmp_path / "tmp").stat().st_mode) == 0o1777


def test_install_agent_does_not_write_through_hard_links(tmp_path: Path) -> None:
    base = touch(tmp_path / "base", "opt/cocoon/agent.py", b"old")
    root = tmp_path / "root"
    (root / "opt/cocoon").mkdir(parents=True)
    (root / "opt/cocoon/agent.py").hardlink_to(base)
    rootfs.install_agent(root, [("cocoon/__init__.py", b"v"), ("cocoon/guest/main.py", b"m")])
    assert base.read_bytes() == b"old"
    assert (root / "opt/cocoon/agent.py").read_text().startswith("import sys")
    assert (root / "opt/cocoon/lib/cocoon/guest/main.py").read_bytes() == b"m"
    assert stat.S_IMODE((root / "opt/cocoon/lib/cocoon/guest").stat().st_mode) == 0o755


def test_command_lines() -> None:
    cmd = rootfs.mmdebstrap_command("bookworm", ["python3", "crun", "iproute2"], Path("/t"))
    assert cmd[:3] == ["mmdebstrap", "--variant=minbase", "--include=python3,crun,iproute2"]
    assert "--dpkgopt=path-exclude=/usr/share/doc/*" in cmd
    assert cmd[-2:] == ["bookworm", "/t"]
    mkfs = rootfs.mkfs_erofs_command(Path("/r"), Path("/i"), "u")
    assert "-T0" in mkfs and "--all-root" in mkfs and "-Uu" in mkfs
    assert not any(a.startswith("-z") for a in mkfs)  # uncompressed
    assert mkfs[-2:] == ["/i", "/r"]


def test_python_dirs(tmp_path: Path) -> None:
    (tmp_path / "usr/lib/python3.11").mkdir(parents=True)
    (tmp_path / "usr/lib/python3").mkdir()
    assert rootfs.python_dirs(tmp_path) == ["/usr/lib/python3.11"]
