from __future__ import annotations

import os
import stat
from pathlib import Path

from cocoon.storage.share import COCOON_DIR_MODE, make_cocoon_dir


def test_cocoon_dirs_are_traversable_by_a_mapped_root_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        make_cocoon_dir(tmp_path / "mounts")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "mounts").stat().st_mode)
    assert mode == COCOON_DIR_MODE == 0o711  # search for others, never read or write
    (tmp_path / "mounts").chmod(0o700)
    make_cocoon_dir(tmp_path / "mounts")  # an existing one is re-moded
    assert stat.S_IMODE((tmp_path / "mounts").stat().st_mode) == 0o711
