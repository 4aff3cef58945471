from __future__ import annotations

import pytest

from cocoon.cli.events import parse_duration, stats_event
from cocoon.errors import InvalidArgument
from cocoon.wire.agent import StatsResponse


@pytest.mark.parametrize(("text", "secs"), [("5s", 5), ("500ms", 0.5), ("1m30s", 90), ("2h", 7200)])
def test_durations(text: str, secs: float) -> None:
    assert parse_duration(text) == pytest.approx(secs)


@pytest.mark.parametrize("text", ["", "5", "s", "-1s", "0s", "5x", "1s junk"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_duration(text)


def test_stats_event_uses_runc_field_names_and_units() -> None:
    st = StatsResponse(
        cpu_usage_usec=3,
        cpu_user_usec=2,
        cpu_system_usec=1,
        memory_current=10,
        memory_max=20,
        pids_current=4,
        io_stat={"254:0": {"rbytes": 7}},
    )
    ev = stats_event("c", st)
    assert ev["type"] == "stats" and ev["id"] == "c"
    assert ev["data"]["cpu"]["usage"] == {"total": 3000, "percpu": [], "kernel": 1000, "user": 2000}
    assert ev["data"]["memory"]["usage"]["limit"] == 20
    assert ev["data"]["pids"] == {"current": 4, "limit": 0}
    assert {"major": 254, "minor": 0, "op": "Read", "value": 7} in (
        ev["data"]["blkio"]["ioServiceBytesRecursive"]
    )
