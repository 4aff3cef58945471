from __future__ import annotations

import pytest

from cocoon.errors import InvalidArgument
from cocoon.oci.ids import MAX_ID_LEN, validate_exec_id, validate_id


@pytest.mark.parametrize("cid", ["a", "abc-1", "A.b_c", "9x", "x" * MAX_ID_LEN])
def test_valid(cid: str) -> None:
    assert validate_id(cid) == cid


@pytest.mark.parametrize(
    "cid", ["", "-a", ".", "..", "a/b", "../x", "a b", "é", "_x", "a\nb", "x" * 256, "x" * 5000]
)
def test_invalid(cid: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_id(cid)
    assert "\n" not in str(info.value) and len(str(info.value)) < 200


def test_exec_ids_leave_room_for_the_guests_file_names() -> None:
    validate_exec_id("exec-0123abcd")
    with pytest.raises(InvalidArgument, match="exec id"):
        validate_exec_id("e" * (MAX_ID_LEN - 5))
    with pytest.raises(InvalidArgument, match="exec id"):
        validate_exec_id("../../etc")
