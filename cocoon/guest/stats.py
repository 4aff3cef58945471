"""Container statistics from the guest's cgroup v2 files.

OOM kills show as ``memory.events`` ``oom_kill`` counts; the host turns a rising
count into an OOM event, so the guest runs no watcher of its own.
"""

from __future__ import annotations

import contextlib

from cocoon.wire import agent as w


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError:
        return ""


def _keyed(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            with contextlib.suppress(ValueError):
                out[parts[0]] = int(parts[1])
    return out


def _limit(text: str) -> int:
    text = text.strip()
    return 0 if text in ("", "max") else int(text)


def read_stats(cgroup: str) -> w.StatsResponse:
    cpu = _keyed(_read(f"{cgroup}/cpu.stat"))
    io: dict[str, dict[str, int]] = {}
    for line in _read(f"{cgroup}/io.stat").splitlines():
        dev, *fields = line.split()
        io[dev] = {k: int(v) for k, v in (f.split("=", 1) for f in fields if "=" in f)}
    current = _read(f"{cgroup}/memory.current").strip()
    pids = _read(f"{cgroup}/pids.current").strip()
    peak = _read(f"{cgroup}/memory.peak").strip()
    return w.StatsResponse(
        cpu_usage_usec=cpu.get("usage_usec", 0),
        cpu_user_usec=cpu.get("user_usec", 0),
        cpu_system_usec=cpu.get("system_usec", 0),
        cpu_throttled_usec=cpu.get("throttled_usec", 0),
        cpu_nr_throttled=cpu.get("nr_throttled", 0),
        memory_current=int(current or 0),
        memory_max=_limit(_read(f"{cgroup}/memory.max")),
        memory_peak=int(peak or 0),
        memory_stat=_keyed(_read(f"{cgroup}/memory.stat")),
        memory_events=_keyed(_read(f"{cgroup}/memory.events")),
        pids_current=int(pids or 0),
        pids_max=_limit(_read(f"{cgroup}/pids.max")),
        io_stat=io,
    )
