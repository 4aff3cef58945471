"""Pod members join the pod sandbox container's namespaces (plain spec rewriting)."""

from __future__ import annotations

import pytest

from cocoon.guest.containers import Container, ContainerManager, Process, State
from cocoon.ttrpc.status import RPCError


def _manager_with_sandbox(pid: int, state: State) -> ContainerManager:
    mgr = object.__new__(ContainerManager)
    init = Process(exec_id="", terminal=False)
    init.pid = pid
    sandbox = Container("pod", "/b", init)
    sandbox.state = state
    mgr.containers = {"pod": sandbox}
    return mgr


def test_pod_member_joins_the_sandbox_ipc_uts_and_network() -> None:
    mgr = _manager_with_sandbox(42, State.RUNNING)
    spec = {"linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "mount"}]}}
    out = mgr._join_pod(spec, "pod")["linux"]["namespaces"]
    assert {"type": "pid"} in out and {"type": "mount"} in out
    assert {"type": "ipc", "path": "/proc/42/ns/ipc"} in out
    assert {"type": "uts", "path": "/proc/42/ns/uts"} in out
    assert {"type": "network", "path": "/proc/42/ns/net"} in out
    assert spec["linux"]["namespaces"][1] == {"type": "ipc"}  # the input is not changed


def test_joining_a_stopped_or_unknown_sandbox_fails() -> None:
    with pytest.raises(RPCError, match="not running"):
        _manager_with_sandbox(42, State.STOPPED)._join_pod({}, "pod")
    with pytest.raises(RPCError, match="not found"):
        _manager_with_sandbox(42, State.RUNNING)._join_pod({}, "other")


def test_pod_member_joins_the_sandbox_pid_namespace_when_its_spec_shares_it() -> None:
    mgr = _manager_with_sandbox(42, State.RUNNING)
    spec = {"linux": {"namespaces": [{"type": "mount"}]}}
    out = mgr._join_pod(spec, "pod", ["pid", "ipc"])["linux"]["namespaces"]
    assert {"type": "pid", "path": "/proc/42/ns/pid"} in out
    assert [n["type"] for n in out].count("ipc") == 1
    with pytest.raises(RPCError, match="cannot share"):
        mgr._join_pod(spec, "pod", ["mount"])


def test_console_sockets_are_short_whatever_the_ids() -> None:
    import itertools

    from cocoon.guest.containers import CONSOLES

    mgr = object.__new__(ContainerManager)
    mgr._consoles = itertools.count()
    paths = {mgr._console_path() for _ in range(1000)}
    assert len(paths) == 1000
    assert all(p.startswith(CONSOLES + "/") and len(p.encode()) < 108 for p in paths)


def test_an_exact_join_takes_only_the_named_namespaces() -> None:
    """docker's --network container:A: A's network is the VM's; its IPC and UTS stay
    the joiner's own unless named too (then only those)."""
    mgr = _manager_with_sandbox(42, State.RUNNING)
    spec = {"linux": {"namespaces": [{"type": "ipc"}, {"type": "uts"}, {"type": "network"}]}}
    out = mgr._join_pod(spec, "pod", [], exact=True)["linux"]["namespaces"]
    assert out == spec["linux"]["namespaces"]
    out = mgr._join_pod(spec, "pod", ["pid", "uts"], exact=True)["linux"]["namespaces"]
    assert {"type": "ipc"} in out and {"type": "network"} in out
    assert {"type": "uts", "path": "/proc/42/ns/uts"} in out
    assert {"type": "pid", "path": "/proc/42/ns/pid"} in out


def test_a_forgotten_exec_frees_its_id_and_a_renamed_container_keeps_its_crun_name(
    tmp_path: object,
) -> None:
    import asyncio
    import os
    import subprocess
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    mgr = _manager_with_sandbox(42, State.RUNNING)
    mgr.containers["pod"].bundle = str(tmp_path)
    child = subprocess.Popen(["sleep", "60"])
    proc = Process(exec_id="e1", terminal=False, pid=child.pid, waiter_pid=child.pid)
    r, w = os.pipe()
    proc.stdout_fd = r
    os.close(w)
    mgr.containers["pod"].execs["e1"] = proc
    (tmp_path / "exec-e1.json").write_text("{}")

    async def main() -> None:
        async def reaped() -> None:
            await asyncio.to_thread(child.wait)
            proc.exit_code = -9
            proc.exited.set()

        watcher = asyncio.ensure_future(reaped())
        await mgr.forget("pod", "e1")
        await watcher

    asyncio.run(main())
    assert child.returncode == -9  # it was still running: killed first
    assert "e1" not in mgr.containers["pod"].execs and proc.stdout_fd is None
    assert not (tmp_path / "exec-e1.json").exists()
    with pytest.raises(RPCError, match="init process"):
        asyncio.run(mgr.forget("pod", ""))
    mgr.rename("pod", "pod2")
    assert mgr.get("pod2").crun_id == "pod" and mgr.cgroup_dir("pod2").endswith("/cocoon/pod")
