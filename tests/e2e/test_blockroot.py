"""The block-device rootfs (rootfs_mode = block): an erofs image + a guest-formatted scratch disk."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.e2e.conftest import Env

BLOCK = {"COCOON_ROOTFS_MODE": "block"}


def _tree(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under ``root`` with its mode, size and mtime (not following symlinks)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def test_block_rootfs_takes_the_writes_off_the_host(env: Env) -> None:
    b = env.bundle(["/bin/sleep", "1000"])
    spec = json.loads((b / "config.json").read_text())
    spec["root"]["readonly"] = False
    (b / "config.json").write_text(json.dumps(spec))
    before = _tree(b / "rootfs")
    # The detached stub keeps its stdio: not a pipe the test waits on.
    r = env.run("run", "--detach", "--bundle", str(b), "cb", env=BLOCK, capture=False)
    assert r.returncode == 0, (env.work / "out.log").read_text()
    try:
        script = (
            "dd if=/dev/zero of=/big bs=1M count=100 2>/dev/null && ls -l /big && "
            "echo changed > /etc/hostname.x && grep ' / ' /proc/mounts"
        )
        r = env.run("exec", "cb", "/bin/sh", "-c", script)
        assert r.returncode == 0, r.stderr.decode()
        out = r.stdout.decode()
        assert " 104857600 " in out, out
        assert out.splitlines()[-1].startswith("overlay / overlay "), out
        disks = env.root / "cb" / "disks"
        assert sorted(p.name for p in disks.iterdir()) == ["0.erofs", "0.scratch"]
        # The writes are in the guest's scratch fs, not the bundle's rootfs.
        assert _tree(b / "rootfs") == before
        assert not (b / "rootfs" / "big").exists()
        # What the host's scratch file holds is sparse beyond the guest's writes.
        assert (disks / "0.scratch").stat().st_blocks * 512 < 1 << 30
    finally:
        r = env.run("delete", "--force", "cb")
    assert r.returncode == 0, r.stderr.decode()
    assert not (env.root / "cb").exists()
    assert _tree(b / "rootfs") == before


def test_block_rootfs_by_annotation_and_readonly(env: Env) -> None:
    b = env.bundle(["/bin/sh", "-c", "echo x > /x 2>/dev/null && echo wrote; cat /etc/passwd | head -1"])
    spec = json.loads((b / "config.json").read_text())
    spec["root"]["readonly"] = True
    spec.setdefault("annotations", {})["io.cocoon.config.runtime.rootfs_mode"] = "block"
    (b / "config.json").write_text(json.dumps(spec))
    r = env.run("run", "--bundle", str(b), "ca")
    assert r.returncode == 0, r.stderr.decode()
    assert b"wrote" not in r.stdout
    assert r.stdout.startswith(b"root:"), r.stdout
    assert not (b / "rootfs" / "x").exists()
