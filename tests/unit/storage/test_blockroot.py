"""The block rootfs plan and files (cocoon.storage.blockroot)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cocoon.errors import InvalidArgument
from cocoon.storage import blockroot


def test_plan_names_disks_by_index_not_by_the_long_id(tmp_path: Path) -> None:
    cid = "a" * 64
    p = blockroot.plan(tmp_path, cid, 7)
    assert (p.image.serial, p.scratch.serial) == ("cocoon-r7", "cocoon-s7")
    assert len(p.image.serial) <= 20 and p.image.readonly and not p.scratch.readonly
    assert p.image.path == tmp_path / "7.erofs" and p.scratch.path == tmp_path / "7.scratch"
    assert p.guest_rootfs == f"/run/cocoon/block/{cid}/rootfs"


def test_scratch_is_sparse_and_removed(tmp_path: Path) -> None:
    p = blockroot.plan(tmp_path / "disks", "c", 0)
    blockroot.create_scratch(p.scratch.path, 1 << 30)
    st = p.scratch.path.stat()
    assert st.st_size == 1 << 30 and st.st_blocks == 0 and st.st_mode & 0o777 == 0o600
    blockroot.remove_files(p)
    blockroot.remove_files(p)  # twice: nothing left, no error
    assert not p.scratch.path.exists()


def test_mkfs_keeps_the_bundles_metadata() -> None:
    argv = blockroot.mkfs_argv(Path("/s/0.erofs"), "/s/0.src")
    assert argv[0] == "mkfs.erofs" and "--preserve-mtime" in argv
    assert not any(a.startswith(("-z", "--all-root", "--force-")) for a in argv)


def test_block_mode_needs_pci() -> None:
    blockroot.check_mode("block", "pc")
    blockroot.check_mode("share", "microvm")
    with pytest.raises(InvalidArgument, match="needs machine_type = pc"):
        blockroot.check_mode("block", "microvm")
