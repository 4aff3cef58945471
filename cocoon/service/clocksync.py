"""Keep a guest's CLOCK_REALTIME on the host's, as chrony would: a safety net.

The guest kernel is told the host's TSC frequency (cocoon.hypervisor.hostclock),
so its clock runs at the host's rate; this corrects what is left (a TSC figure
slightly off, a guest that was paused or restored, someone who set the guest's
clock) every ``[agent] clock_sync_interval`` seconds.

Each round reads the guest's clock a few times, keeps the reading with the
shortest round trip and takes the host's midpoint of it as the reference
(NTP's offset estimate, error at most half that round trip), then sends the
guest a *delta*: slewed when small (monotonic time never jumps), stepped when
large. The decision is plain data (:func:`plan_correction`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cocoon.agent.client import AgentClient

log = logging.getLogger("cocoon.clock")

SAMPLES = 3
#: Below this the guest is left alone (the estimate is no better than that).
MIN_CORRECTION_NS = 2_000_000
#: Above this the guest's clock is stepped: slewing runs at 0.5 ms per second,
#: so 0.1 s already takes 200 s to catch up.
STEP_THRESHOLD_NS = 100_000_000
#: A reading whose round trip took longer than this says little: skip the round.
MAX_RTT_NS = 500_000_000


@dataclass(frozen=True)
class Sample:
    """One reading: host time before, the guest's time, host time after (ns)."""

    sent: int
    guest: int
    received: int

    @property
    def rtt(self) -> int:
        return self.received - self.sent

    @property
    def offset(self) -> int:
        """How far the guest is ahead of the host (negative: behind)."""
        return self.guest - (self.sent + self.received) // 2


@dataclass(frozen=True)
class Correction:
    offset_ns: int  # the guest's offset that was measured
    delta_ns: int  # what to add to the guest's clock (0: nothing to do)
    step: bool
    rtt_ns: int


def plan_correction(
    samples: list[Sample],
    min_ns: int = MIN_CORRECTION_NS,
    step_ns: int = STEP_THRESHOLD_NS,
    max_rtt_ns: int = MAX_RTT_NS,
) -> Correction | None:
    """What to do to the guest's clock; None when the samples are too poor to say."""
    usable = [s for s in samples if 0 <= s.rtt <= max_rtt_ns]
    if not usable:
        return None
    best = min(usable, key=lambda s: s.rtt)
    offset = best.offset
    if abs(offset) < min_ns:
        return Correction(offset, 0, False, best.rtt)
    return Correction(offset, -offset, abs(offset) > step_ns, best.rtt)


async def measure(agent: AgentClient, samples: int = SAMPLES) -> list[Sample]:
    """``samples`` readings of the guest's clock against the host's."""
    out = []
    for _ in range(samples):
        sent = time.time_ns()
        guest = await agent.read_clock()
        out.append(Sample(sent, guest, time.time_ns()))
    return out


async def sync_once(agent: AgentClient) -> Correction | None:
    """One round: measure, then step or slew the guest. Raises CocoonError, TimeoutError."""
    correction = plan_correction(await measure(agent))
    if correction is None:
        log.info("guest clock: no reading with a short enough round trip; next round")
        return None
    if correction.delta_ns:
        await agent.adjust_clock(correction.delta_ns, correction.step)
    log.log(
        logging.INFO if correction.delta_ns else logging.DEBUG,
        "guest clock offset %+.6fs (rtt %.3fs): %s",
        correction.offset_ns / 1e9,
        correction.rtt_ns / 1e9,
        "stepped" if correction.step else ("slewed" if correction.delta_ns else "kept"),
    )
    return correction
