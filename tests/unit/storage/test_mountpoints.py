from __future__ import annotations

import os
from pathlib import Path

from cocoon.storage import mountpoints


def test_plan_skips_what_guest_local_mounts_hold() -> None:
    mounts = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts"},
        {"destination": "/etc/hosts", "type": "bind", "source": "/run/cocoon/shared/c/m3"},
        {"destination": "/data//x/", "type": "bind", "source": "/run/cocoon/shared/c/m4"},
        {"destination": "/data/x/y", "type": "tmpfs", "source": "tmpfs"},
    ]
    binds = {"/run/cocoon/shared/c/m3": 1, "/run/cocoon/shared/c/m4": 2}
    assert mountpoints.plan(mounts, binds) == [
        ("/proc", None),
        ("/dev", None),
        ("/etc/hosts", 1),
        ("/data/x", 2),
        ("/data/x/y", None),
    ]


def test_ensure_makes_files_and_dirs_and_never_leaves_the_root(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink("/../outside", root / "escape")  # absolute and relative escapes
    os.symlink("../../outside", root / "etc" / "up")
    mountpoints.ensure(root, "/var/run/secrets", is_dir=True)
    mountpoints.ensure(root, "/etc/resolv.conf", is_dir=False)
    mountpoints.ensure(root, "/escape/a", is_dir=True)
    mountpoints.ensure(root, "/etc/up/b", is_dir=False)
    assert (root / "var" / "run" / "secrets").is_dir()
    assert (root / "etc" / "resolv.conf").is_file()
    assert list(outside.iterdir()) == []
    mountpoints.ensure(root, "/etc/resolv.conf", is_dir=False)  # exists: nothing to do
