from __future__ import annotations

import pytest

from cocoon.cli.common import parse_signal
from cocoon.errors import InvalidArgument


@pytest.mark.parametrize(("value", "num"), [("9", 9), ("KILL", 9), ("SIGTERM", 15), ("hup", 1)])
def test_signals(value: str, num: int) -> None:
    assert parse_signal(value) == num


@pytest.mark.parametrize("value", ["SIGNOPE", "0", "99", "-1", ""])
def test_bad_signals(value: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_signal(value)
