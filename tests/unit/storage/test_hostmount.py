from __future__ import annotations

import os
from pathlib import Path

import pytest

from cocoon.errors import InvalidArgument
from cocoon.storage import hostmount


@pytest.mark.skipif(os.geteuid() != 0, reason="open_tree(OPEN_TREE_CLONE) needs root")
def test_clone_in_this_namespace_and_a_missing_source(tmp_path: Path) -> None:
    fds = hostmount.clone_trees([hostmount.TreeRequest(str(tmp_path), in_host=False)])
    try:
        assert len(fds) == 1 and os.path.samestat(os.fstat(fds[0]), tmp_path.stat())
    finally:
        hostmount.close_all(fds)
    with pytest.raises(InvalidArgument, match="does not exist"):
        hostmount.clone_trees(
            [
                hostmount.TreeRequest(str(tmp_path), in_host=False),
                hostmount.TreeRequest(str(tmp_path / "gone"), in_host=False),
            ]
        )
