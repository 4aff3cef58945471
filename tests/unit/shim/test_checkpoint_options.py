"""The shim's reading of containerd's runc CheckpointOptions (exit, image_path)."""

from __future__ import annotations

import pytest

from cocoon.errors import InvalidArgument
from cocoon.shim.task import checkpoint_options

URL = "type.googleapis.com/containerd.runc.v1.CheckpointOptions"


def _string(field: int, text: str) -> bytes:
    data = text.encode()
    return bytes([field << 3 | 2, len(data)]) + data


def test_no_options_leave_the_task_running_and_use_the_path() -> None:
    assert checkpoint_options("", b"") == (False, "")


def test_exit_and_image_path_are_read_other_fields_skipped() -> None:
    value = bytes([1 << 3, 1]) + bytes([2 << 3, 1]) + _string(7, "x") + _string(8, "/img")
    assert checkpoint_options(URL, value) == (True, "/img")


def test_another_type_is_ignored() -> None:
    assert checkpoint_options("type.googleapis.com/other.Options", bytes([8, 1])) == (False, "")


def test_truncated_options_are_refused() -> None:
    with pytest.raises(InvalidArgument):
        checkpoint_options(URL, _string(8, "/img")[:-2])
