"""``cocoon events [--stats] [--interval 5s] <id>``: runc's event stream.

Statistics come from the container's cgroup in the guest; an OOM event is
emitted when the guest's ``memory.events`` ``oom_kill`` count rises, checked
every second (or every interval, if shorter) while streaming.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from typing import Any

from cocoon.cli.common import paths_for
from cocoon.cli.output import Reporter
from cocoon.errors import CocoonError, InvalidArgument
from cocoon.service.persist import SandboxPaths
from cocoon.wire.agent import StatsResponse

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Go's duration syntax (``5s``, ``500ms``, ``1m30s``) in seconds."""
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text or total <= 0:
        raise InvalidArgument(f"--interval {text!r} is not a positive duration such as 5s")
    return total


def stats_event(cid: str, st: StatsResponse) -> dict[str, Any]:
    """runc's stats event (go-runc ``events.go`` field names)."""
    return {
        "type": "stats",
        "id": cid,
        "data": {
            "cpu": {
                "usage": {
                    "total": st.cpu_usage_usec * 1000,
                    "percpu": [],
                    "kernel": st.cpu_system_usec * 1000,
                    "user": st.cpu_user_usec * 1000,
                },
                "throttling": {
                    "throttledPeriods": st.cpu_nr_throttled,
                    "throttledTime": st.cpu_throttled_usec * 1000,
                },
            },
            "memory": {
                "usage": {
                    "limit": st.memory_max,
                    "usage": st.memory_current,
                    "max": st.memory_peak,
                    "failcnt": st.memory_events.get("max", 0),
                },
                "raw": st.memory_stat,
            },
            "pids": {"current": st.pids_current, "limit": st.pids_max},
            "blkio": {
                "ioServiceBytesRecursive": [
                    {
                        "major": int(dev.split(":")[0]),
                        "minor": int(dev.split(":")[1]),
                        "op": op,
                        "value": c.get(key, 0),
                    }
                    for dev, c in st.io_stat.items()
                    for op, key in (("Read", "rbytes"), ("Write", "wbytes"))
                ],
            },
            "hugetlb": {},
        },
    }


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    paths = paths_for(args, args.id)
    from cocoon.service import persist

    persist.load(paths)
    interval = parse_duration(args.interval)
    return asyncio.run(_events(paths, args.stats, interval))


async def _events(paths: SandboxPaths, once: bool, interval: float) -> int:
    from cocoon.service.client import ServiceClient

    client = await ServiceClient.connect(paths)
    try:
        st = await client.stats(paths.id)
        if once:
            _emit(stats_event(paths.id, st))
            return 0
        kills = st.memory_events.get("oom_kill", 0)
        _emit(stats_event(paths.id, st))
        tick = min(interval, 1.0)
        elapsed = 0.0
        while True:
            await asyncio.sleep(tick)
            elapsed += tick
            try:
                st = await client.stats(paths.id)
            except CocoonError:
                return 0  # the container stopped or is gone: the stream ends
            now = st.memory_events.get("oom_kill", 0)
            if now > kills:
                _emit({"type": "oom", "id": paths.id, "data": {}})
            kills = now
            if elapsed >= interval:
                elapsed = 0.0
                _emit(stats_event(paths.id, st))
    finally:
        await client.close()


def _emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()
