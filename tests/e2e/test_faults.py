"""Faults an engine causes or meets: its reaped process killed, the VM or the service
killed, a VM that dies while booting. Each ends cleanly: state agrees, nothing leaks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from typing import Any

from tests.e2e.conftest import Env

STARTED = "echo started; exec sleep 700"


def _state(env: Env, cid: str) -> dict[str, Any]:
    r = env.run("state", cid)
    assert r.returncode == 0, r.stderr
    st: dict[str, Any] = json.loads(r.stdout)
    return st


def _stopped_within(env: Env, cid: str, seconds: float) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        st = _state(env, cid)
        if st["status"] == "stopped" or time.monotonic() > deadline:
            return st
        time.sleep(0.1)


def _exit_status(env: Env, cid: str) -> int:
    from cocoon.service import quick
    from cocoon.service.persist import SandboxPaths

    return int(quick.call(SandboxPaths(env.root, cid), "State", container_id=cid)["exit_status"])


def _wait_pid_gone(pid: int) -> None:
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)


def test_stub_killed_stops_the_container(env: Env) -> None:
    b = env.bundle(["/bin/sh", "-c", STARTED])
    pidfile = env.work / "pid"
    r = env.run("run", "-d", "--pid-file", str(pidfile), "--bundle", str(b), "cs", capture=False)
    assert r.returncode == 0, (env.work / "out.log").read_text()
    stub = int(pidfile.read_text())
    assert _state(env, "cs")["status"] == "running"
    os.kill(stub, signal.SIGKILL)
    st = _stopped_within(env, "cs", 5)
    assert (st["status"], st["pid"]) == ("stopped", 0), st
    assert _exit_status(env, "cs") == 137  # SIGKILL, as the engine saw its PID die
    r = env.run("delete", "cs")
    assert r.returncode == 0, r.stderr


def test_foreground_run_killed_stops_the_container(env: Env) -> None:
    b = env.bundle(["/bin/sh", "-c", STARTED])
    proc = subprocess.Popen(
        env.argv("run", "--bundle", str(b), "cf"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"started\n"
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    st = _stopped_within(env, "cf", 5)
    assert (st["status"], st["pid"]) == ("stopped", 0), st
    assert env.run("delete", "cf").returncode == 0


def test_exec_stub_killed_kills_the_exec_only(env: Env) -> None:
    b = env.bundle(["/bin/sh", "-c", STARTED])
    r = env.run("run", "-d", "--bundle", str(b), "ce", capture=False)
    assert r.returncode == 0, (env.work / "out.log").read_text()
    pidfile = env.work / "exec.pid"
    r = env.run(
        "exec", "--detach", "--pid-file", str(pidfile), "ce", "/bin/sleep", "601", capture=False
    )
    assert r.returncode == 0
    assert b"sleep 601" in env.run("ps", "ce").stdout
    os.kill(int(pidfile.read_text()), signal.SIGKILL)
    deadline = time.monotonic() + 5
    while b"sleep 601" in env.run("ps", "ce").stdout:
        assert time.monotonic() < deadline, "the exec outlived its stub"
        time.sleep(0.1)
    assert _state(env, "ce")["status"] == "running"
    assert env.run("delete", "--force", "ce").returncode == 0


def test_qemu_killed_and_service_killed_report_stopped_pid_0(env: Env) -> None:
    for cid, victim in (("cq", "qemu_pid"), ("cv", "service_pid")):
        b = env.bundle(["/bin/sh", "-c", STARTED])
        r = env.run("run", "-d", "--bundle", str(b), cid, capture=False)
        assert r.returncode == 0, (env.work / "out.log").read_text()
        assert _state(env, cid)["pid"] > 0
        pid = json.loads((env.root / cid / "state.json").read_text())[victim]
        os.kill(pid, signal.SIGKILL)
        _wait_pid_gone(pid)
        st = _stopped_within(env, cid, 10)
        assert (st["status"], st["pid"]) == ("stopped", 0), (victim, st)
        r = env.run("delete", cid)
        assert r.returncode == 0, (victim, r.stderr)


def test_vm_dying_at_boot_reports_qemus_exit_and_the_console(env: Env) -> None:
    # No init in the initramfs: the guest kernel panics, and QEMU (-no-reboot) exits.
    b = env.bundle(
        ["/bin/true"],
        annotations={"io.katacontainers.config.hypervisor.kernel_params": "rdinit=/nonexistent"},
    )
    r = env.run("run", "--bundle", str(b), "cb", env={"COCOON_ENABLE_TEMPLATE": "false"})
    err = [ln for ln in r.stderr.decode().splitlines() if "warning" not in ln]
    assert r.returncode == 1 and len(err) == 1, err
    assert "connection reset" not in err[0], err
    assert "the VM exited with status 0 while booting" in err[0], err
    assert "console: Kernel panic" in err[0], err  # what the guest said last


def test_the_longest_id_runs_and_one_longer_is_one_line(env: Env) -> None:
    b = env.bundle(["/bin/sh", "-c", "echo ok"])
    longest = "x" * 255
    r = env.run("run", "--bundle", str(b), longest)
    assert (r.returncode, r.stdout) == (0, b"ok\n"), r.stderr
    r = env.run("run", "--bundle", str(b), longest + "x")
    err = [ln for ln in r.stderr.decode().splitlines() if "warning" not in ln]
    assert r.returncode == 1 and len(err) == 1 and "more than 255" in err[0], err


def test_stub_killed_before_start(env: Env) -> None:
    b = env.bundle(["/bin/sh", "-c", STARTED])
    pidfile = env.work / "pid"
    r = env.run("create", "--pid-file", str(pidfile), "--bundle", str(b), "cc", capture=False)
    assert r.returncode == 0, (env.work / "out.log").read_text()
    assert _state(env, "cc")["status"] == "created"
    os.kill(int(pidfile.read_text()), signal.SIGKILL)
    st = _stopped_within(env, "cc", 5)
    assert (st["status"], st["pid"]) == ("stopped", 0), st
    assert env.run("start", "cc").returncode == 1
    assert env.run("delete", "cc").returncode == 0


def test_a_message_over_the_4_mib_limit_is_one_line(env: Env) -> None:
    b = env.bundle(["/bin/sh", "-c", STARTED])
    r = env.run("run", "-d", "--bundle", str(b), "cm", capture=False)
    assert r.returncode == 0, (env.work / "out.log").read_text()
    proc = env.work / "proc.json"
    proc.write_text(
        json.dumps({"args": ["/bin/true"], "cwd": "/", "env": ["X=" + "x" * (5 << 20)]})
    )
    r = env.run("exec", "--process", str(proc), "cm")
    err = [ln for ln in r.stderr.decode().splitlines() if "warning" not in ln]
    assert r.returncode == 1 and len(err) == 1, err
    assert "Exec: the request is" in err[0] and "4 MiB message limit" in err[0], err
    assert _state(env, "cm")["status"] == "running"
    assert env.run("delete", "--force", "cm").returncode == 0
