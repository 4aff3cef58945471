from __future__ import annotations

import pytest

from cocoon.errors import InvalidArgument
from cocoon.oci.ids import validate_id


@pytest.mark.parametrize("cid", ["a", "abc-1", "A.b_c", "9x", "x" * 1024])
def test_valid(cid: str) -> None:
    assert validate_id(cid) == cid


@pytest.mark.parametrize("cid", ["", "-a", ".", "..", "a/b", "../x", "a b", "é", "_x", "x" * 1025])
def test_invalid(cid: str) -> None:
    with pytest.raises(InvalidArgument):
        validate_id(cid)
