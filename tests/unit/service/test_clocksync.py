"""The guest clock's correction, as plain data (no VM)."""

from __future__ import annotations

import asyncio

import pytest

from cocoon.service import clocksync as cs

S = 1_000_000_000


def sample(offset: int, rtt: int, at: int = 100 * S) -> cs.Sample:
    return cs.Sample(at, at + rtt // 2 + offset, at + rtt)


@pytest.mark.parametrize(
    ("offset", "delta", "step"),
    [
        (0, 0, False),
        (1_000_000, 0, False),  # 1 ms: below what a reading can tell
        (-30_000_000, 30_000_000, False),  # 30 ms behind: slewed forward
        (50_000_000, -50_000_000, False),
        (-5 * S, 5 * S, True),  # 5 s behind (a slow clock, a set clock): stepped
        (3600 * S, -3600 * S, True),
    ],
)
def test_small_offsets_are_slewed_and_large_ones_stepped(
    offset: int, delta: int, step: bool
) -> None:
    c = cs.plan_correction([sample(offset, 4_000_000)])
    assert c is not None
    assert (c.offset_ns, c.delta_ns, c.step) == (offset, delta, step)


def test_the_reading_with_the_shortest_round_trip_wins() -> None:
    # A slow reading (its reply waited 300 ms in a queue) looks 150 ms off.
    slow = cs.Sample(0, 10_000_000, 300_000_000)
    fast = cs.Sample(1 * S, 1 * S + 1_000_000 + 20_000_000, 1 * S + 2_000_000)
    c = cs.plan_correction([slow, fast])
    assert c is not None and c.rtt_ns == 2_000_000 and c.offset_ns == 20_000_000


def test_no_correction_from_readings_that_took_too_long() -> None:
    assert cs.plan_correction([sample(5 * S, 2 * S)]) is None
    assert cs.plan_correction([]) is None
    assert cs.plan_correction([cs.Sample(10, 5, 0)]) is None  # the host clock went back


class FakeAgent:
    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.adjusted: list[tuple[int, bool]] = []

    async def read_clock(self, timeout: float = 5.0) -> int:
        import time

        return time.time_ns() + self.offset

    async def adjust_clock(self, delta_ns: int, step: bool, timeout: float = 5.0) -> None:
        self.adjusted.append((delta_ns, step))


def test_a_round_sends_the_guest_a_delta() -> None:
    agent = FakeAgent(-7 * S)
    c = asyncio.run(cs.sync_once(agent))  # type: ignore[arg-type]
    assert c is not None and c.step
    [(delta, step)] = agent.adjusted
    assert step and abs(delta - 7 * S) < 50_000_000
