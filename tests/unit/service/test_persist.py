from __future__ import annotations

import json
from pathlib import Path

import pytest

from cocoon.errors import NotFound
from cocoon.service import persist


def test_state_round_trip_is_atomic(tmp_path: Path) -> None:
    paths = persist.SandboxPaths(tmp_path, "c1")
    paths.dir.mkdir()
    st = persist.SandboxState("c1", "/b", "now", annotations={"a": "b"})
    persist.save(paths, st)
    assert persist.load(paths) == st
    assert [p.name for p in paths.dir.iterdir()] == ["state.json"]
    # Unknown keys from a newer version are ignored.
    raw = json.loads(paths.state.read_text()) | {"future": 1}
    paths.state.write_text(json.dumps(raw))
    assert persist.load(paths).id == "c1"


def test_missing_state_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        persist.load(persist.SandboxPaths(tmp_path, "nope"))


def test_deep_state_dirs_get_short_socket_dirs(tmp_path: Path) -> None:
    shallow = persist.SandboxPaths(tmp_path, "c")
    assert shallow.sock_dir == shallow.dir
    deep = persist.SandboxPaths(tmp_path / ("x" * 60), "f" * 64)  # docker's ids
    assert deep.sock_dir.parent == persist.SHORT_SOCKET_ROOT
    assert len(str(deep.service_sock)) <= persist.UNIX_PATH_MAX
    assert deep.sock_dir == persist.SandboxPaths(tmp_path / ("x" * 60), "f" * 64).sock_dir
    assert deep.state.parent == deep.dir
    deep.check_socket_lengths()


def test_remove_tree_removes_files_and_dirs(tmp_path: Path) -> None:
    d = tmp_path / "sb"
    (d / "mounts" / "c1" / "rootfs").mkdir(parents=True)
    (d / "state.json").write_text("{}")
    assert persist.remove_tree(d) == []
    assert not d.exists()
