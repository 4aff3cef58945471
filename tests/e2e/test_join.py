"""A container whose spec names a running Cocoon container's namespaces joins its VM.

Driven through the CLI as an engine would (``create`` with a subreaper, ``start``,
``exec``, ``ps``, ``pause``, ``kill``, ``update``, ``delete``): the joiner keeps the
runc contract of its own, the VM is the owner's, and the VM outlives the owner's
record until its last container is deleted.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.e2e.conftest import Env
from tests.e2e.test_cli import LOOP, SUBREAPER, _line, wait_status


def _joiner_bundle(
    env: Env, args: list[str], owner_pid: int, limits: dict[str, Any] | None = None
) -> Path:
    b = env.bundle(args)
    spec = json.loads((b / "config.json").read_text())
    spec["linux"].update(limits or {})
    kinds = {"network": "net", "ipc": "ipc"}
    spec["linux"]["namespaces"] = [
        ns for ns in spec["linux"]["namespaces"] if ns["type"] not in kinds
    ] + [{"type": k, "path": f"/proc/{owner_pid}/ns/{v}"} for k, v in kinds.items()]
    (b / "config.json").write_text(json.dumps(spec))
    return b


def _qemu_of(env: Env, cid: str) -> int:
    st = json.loads((env.root / cid / "state.json").read_text())
    return int(st["qemu_pid"])


def _mem_total_kib(env: Env, cid: str) -> int:
    r = env.run("exec", cid, "/bin/grep", "MemTotal", "/proc/meminfo")
    assert r.returncode == 0, r
    return int(r.stdout.split()[1])


def test_a_joiner_lives_in_the_owners_vm_with_its_own_contract(env: Env) -> None:
    owner = env.bundle(["/bin/sh", "-c", "echo owner > /dev/shm/mark; sleep 600"])
    assert env.run("run", "-d", "--bundle", str(owner), "a", capture=False).returncode == 0
    apid = int(wait_status(env, "a", "running")["pid"])  # type: ignore[call-overload]
    qemu = _qemu_of(env, "a")
    mem0 = _mem_total_kib(env, "a")

    # Its memory limit grows the shared VM when it joins (dynamic sizing).
    limits = {"resources": {"memory": {"limit": 256 << 20}}}
    b = _joiner_bundle(env, ["/bin/sh", "-c", LOOP], apid, limits=limits)
    pidfile, status = env.work / "j.pid", env.work / "j.status"
    reaper = subprocess.Popen(
        [
            *SUBREAPER,
            str(status),
            str(pidfile),
            "--",
            *env.argv("create", "--bundle", str(b), "--pid-file", str(pidfile), "j"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert _line(status, 0) == "cmd 0"
        st = wait_status(env, "j", "created")
        jpid = int(pidfile.read_text())
        assert st["pid"] == jpid != apid
        assert st["annotations"]["io.cocoon.sandbox"] == "a"  # type: ignore[index]
        assert env.run("start", "j").returncode == 0
        wait_status(env, "j", "running")
        mem1 = _mem_total_kib(env, "j")
        assert mem1 > mem0 + 200 * 1024, (mem0, mem1)
        # One VM: the owner's records the only QEMU; none was started for j.
        assert json.loads((env.root / "j" / "state.json").read_text())["qemu_pid"] == 0
        assert os.path.exists(f"/proc/{qemu}")
        # IPC is the owner's (its /dev/shm file is not: a mount of its own), and so
        # is the network; PID and UTS are j's own.
        ns = [
            env.run(
                "exec", c, "/bin/sh", "-c", "readlink /proc/self/ns/ipc; readlink /proc/self/ns/pid"
            ).stdout
            for c in ("a", "j")
        ]
        a_ipc, a_pid = ns[0].split()
        j_ipc, j_pid = ns[1].split()
        assert a_ipc == j_ipc and a_pid != j_pid
        r = env.run("exec", "j", "/bin/sh", "-c", "exit 6")
        assert r.returncode == 6
        assert json.loads(env.run("ps", "--format", "json", "j").stdout) == [jpid]
        # pause/resume/update are j's only.
        assert env.run("pause", "j").returncode == 0
        wait_status(env, "j", "paused")
        assert json.loads(env.run("state", "a").stdout)["status"] == "running"
        assert env.run("resume", "j").returncode == 0
        wait_status(env, "j", "running")
        # So does its update.
        res = env.work / "res.json"
        res.write_text(json.dumps({"memory": {"limit": 512 << 20}}))
        assert env.run("update", f"--resources={res}", "j").returncode == 0
        assert _mem_total_kib(env, "a") > mem1 + 200 * 1024
        # The owner goes first: its record is gone, the VM and j stay.
        assert env.run("delete", "--force", "a").returncode == 0
        r = env.run("state", "a")
        assert r.returncode == 1 and b"does not exist" in r.stderr
        assert [c["id"] for c in json.loads(env.run("list", "--format", "json").stdout)] == ["j"]
        assert os.path.exists(f"/proc/{qemu}")
        assert env.run("exec", "j", "/bin/true").returncode == 0
        # j's stub mirrors j's exit status.
        assert env.run("kill", "j", "TERM").returncode == 0
        assert _line(status, 1) == "exit 3"
        wait_status(env, "j", "stopped")
        assert env.run("delete", "j").returncode == 0
        deadline = time.monotonic() + 30
        while os.path.exists(f"/proc/{qemu}") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not os.path.exists(f"/proc/{qemu}")
    finally:
        reaper.kill()
        reaper.wait()


def test_joining_a_non_cocoon_namespace_is_refused(env: Env) -> None:
    """A namespace of another process (here: the test's own IPC namespace via a helper
    in a new one) is one line, and nothing is created."""
    helper = subprocess.Popen(["unshare", "--ipc", "--net", "sleep", "600"])
    try:
        time.sleep(0.5)
        b = _joiner_bundle(env, ["/bin/true"], helper.pid)
        r = env.run("run", "-d", "--bundle", str(b), "x")
        err = [ln for ln in r.stderr.decode().splitlines() if "warning" not in ln]
        assert r.returncode == 1 and len(err) == 1, r
        assert "not Cocoon's" in err[0] and "Cocoon" in err[0].split("not Cocoon's")[1], err
        assert not (env.root / "x").exists()
    finally:
        helper.kill()
        helper.wait()


def test_concurrent_joins_and_deletes_of_one_sandbox(env: Env) -> None:
    """Joins are serialised on the sandbox's lock: all land in the one VM, and deletes
    in parallel leave nothing (the last one stops the VM)."""
    owner = env.bundle(["/bin/sleep", "600"])
    assert env.run("run", "-d", "--bundle", str(owner), "a", capture=False).returncode == 0
    apid = int(wait_status(env, "a", "running")["pid"])  # type: ignore[call-overload]
    qemu = _qemu_of(env, "a")
    bundles = {f"j{i}": _joiner_bundle(env, ["/bin/sleep", "600"], apid) for i in range(3)}
    procs = [
        subprocess.Popen(
            env.argv("run", "-d", "--bundle", str(b), cid),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for cid, b in bundles.items()
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0]
    for cid in bundles:
        wait_status(env, cid, "running")
        assert json.loads((env.root / cid / "state.json").read_text())["sandbox"] == "a"
    assert _qemu_of(env, "a") == qemu
    procs = [
        subprocess.Popen(
            env.argv("delete", "--force", cid),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for cid in ["a", *bundles]
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0, 0]
    deadline = time.monotonic() + 30
    while os.path.exists(f"/proc/{qemu}") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not os.path.exists(f"/proc/{qemu}")
