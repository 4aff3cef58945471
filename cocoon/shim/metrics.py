"""The guest cgroup v2 counters as containerd's ``io.containerd.cgroups.v2.Metrics``."""

from __future__ import annotations

from google.protobuf import any_pb2

from cocoon.shim.proto import cgroups2_pb2 as cg
from cocoon.wire import agent as w

METRICS_TYPE_URL = "io.containerd.cgroups.v2.Metrics"
_MEMORY_STAT_FIELDS = [
    f.name for f in cg.MemoryStat.DESCRIPTOR.fields if f.name not in ("usage", "usage_limit")
]


def to_metrics(stats: w.StatsResponse) -> cg.Metrics:
    mem = cg.MemoryStat(
        usage=stats.memory_current,
        usage_limit=stats.memory_max,
        max_usage=stats.memory_peak,
        **{
            k: v
            for k, v in stats.memory_stat.items()
            if k in _MEMORY_STAT_FIELDS and k != "max_usage" and v >= 0
        },
    )
    io = []
    for dev, counters in sorted(stats.io_stat.items()):
        major, _, minor = dev.partition(":")
        if not (major.isdigit() and minor.isdigit()):
            continue
        io.append(
            cg.IOEntry(
                major=int(major),
                minor=int(minor),
                rbytes=counters.get("rbytes", 0),
                wbytes=counters.get("wbytes", 0),
                rios=counters.get("rios", 0),
                wios=counters.get("wios", 0),
            )
        )
    events = stats.memory_events
    return cg.Metrics(
        pids=cg.PidsStat(current=stats.pids_current, limit=stats.pids_max),
        cpu=cg.CPUStat(
            usage_usec=stats.cpu_usage_usec,
            user_usec=stats.cpu_user_usec,
            system_usec=stats.cpu_system_usec,
            nr_throttled=stats.cpu_nr_throttled,
            throttled_usec=stats.cpu_throttled_usec,
        ),
        memory=mem,
        io=cg.IOStat(usage=io),
        memory_events=cg.MemoryEvents(
            low=events.get("low", 0),
            high=events.get("high", 0),
            max=events.get("max", 0),
            oom=events.get("oom", 0),
            oom_kill=events.get("oom_kill", 0),
        ),
    )


def pack_metrics(stats: w.StatsResponse) -> any_pb2.Any:
    return any_pb2.Any(type_url=METRICS_TYPE_URL, value=to_metrics(stats).SerializeToString())
