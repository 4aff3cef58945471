from __future__ import annotations

from cocoon.shim.metrics import METRICS_TYPE_URL, pack_metrics, to_metrics
from cocoon.shim.proto import cgroups2_pb2 as cg
from cocoon.wire import agent as w


def test_guest_cgroup_counters_become_containerd_v2_metrics() -> None:
    stats = w.StatsResponse(
        cpu_usage_usec=900,
        cpu_user_usec=600,
        cpu_system_usec=300,
        memory_current=4096,
        memory_max=1 << 20,
        memory_peak=8192,
        memory_stat={"anon": 100, "file": 200, "pgfault": 7, "not_a_field": 1},
        memory_events={"oom": 2, "oom_kill": 1},
        pids_current=3,
        pids_max=100,
        io_stat={"254:0": {"rbytes": 10, "wbytes": 20, "rios": 1, "wios": 2}, "bad": {}},
    )
    m = to_metrics(stats)
    assert (m.cpu.usage_usec, m.cpu.user_usec, m.cpu.system_usec) == (900, 600, 300)
    assert (m.memory.usage, m.memory.usage_limit, m.memory.max_usage) == (4096, 1 << 20, 8192)
    assert (m.memory.anon, m.memory.file, m.memory.pgfault) == (100, 200, 7)
    assert (m.memory_events.oom, m.memory_events.oom_kill) == (2, 1)
    assert (m.pids.current, m.pids.limit) == (3, 100)
    assert [(e.major, e.minor, e.rbytes, e.wios) for e in m.io.usage] == [(254, 0, 10, 2)]


def test_packed_as_containerd_expects() -> None:
    any_msg = pack_metrics(w.StatsResponse(pids_current=1))
    assert any_msg.type_url == METRICS_TYPE_URL == "io.containerd.cgroups.v2.Metrics"
    assert cg.Metrics.FromString(any_msg.value).pids.current == 1
