"""``cocoon run`` end to end: a real VM per container."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import Env


def test_echo_reaches_stdout_and_kernel_differs(env: Env) -> None:
    b = env.bundle(["/bin/sh", "-c", "echo hello-from-vm; uname -r"])
    r = env.run("run", "--bundle", str(b), "c1")
    assert r.returncode == 0, r.stderr.decode()
    lines = r.stdout.decode().splitlines()
    assert lines[0] == "hello-from-vm"
    assert lines[1] != os.uname().release
    assert b"software emulation" in r.stderr or b"KVM" not in r.stderr


def test_exit_code_and_signal_status(env: Env) -> None:
    r = env.run("run", "--bundle", str(env.bundle(["/bin/sh", "-c", "exit 7"])), "c7")
    assert r.returncode == 7
    # Without its own PID namespace the shell is not a namespace's init, so
    # SIGKILL from itself works: killed by signal 9 reads as 128+9.
    b = env.bundle(["/bin/sh", "-c", "kill -9 $$"])
    spec = json.loads((b / "config.json").read_text())
    spec["linux"]["namespaces"] = [ns for ns in spec["linux"]["namespaces"] if ns["type"] != "pid"]
    (b / "config.json").write_text(json.dumps(spec))
    r = env.run("run", "--bundle", str(b), "c9")
    assert r.returncode == 137


def test_signals_to_cocoon_run_reach_the_container(env: Env) -> None:
    b = env.bundle(
        [
            "/bin/sh",
            "-c",
            "trap 'echo got-term; exit 42' TERM; echo ready; " "while :; do sleep 0.1; done",
        ]
    )
    proc = subprocess.Popen(
        env.argv("run", "--bundle", str(b), "csig"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 42
    assert out == b"got-term\n"


def test_stdin_is_read_by_the_container(env: Env) -> None:
    b = env.bundle(["/bin/sh", "-c", 'while read l; do echo "got:$l"; done; echo done >&2'])
    r = env.run("run", "--bundle", str(b), "cin", input=b"one\ntwo\n")
    assert r.returncode == 0
    assert r.stdout.decode().splitlines() == ["got:one", "got:two"]
    assert b"done" in r.stderr


def test_container_cannot_see_host_processes(env: Env) -> None:
    b = env.bundle(["/bin/sh", "-c", "ls /proc | grep -c '^[0-9]'; echo pid=$$"])
    r = env.run("run", "--bundle", str(b), "cps")
    assert r.returncode == 0
    count, pid = r.stdout.decode().splitlines()[:2]
    assert int(count) <= 3  # sh, ls, grep
    assert pid == "pid=1"


def test_virtiofs_share_and_writable_rootfs(env: Env) -> None:
    b = env.bundle(
        ["/bin/sh", "-c", "echo data > /written && cat /written"],
        root={"path": "rootfs", "readonly": False},
    )
    r = env.run("run", "--bundle", str(b), "cvfs", env={"COCOON_SHARED_FS": "virtiofs"})
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b"data\n"
    assert (b / "rootfs" / "written").read_text() == "data\n"


def test_readonly_rootfs_is_readonly(env: Env) -> None:
    b = env.bundle(["/bin/sh", "-c", "echo x > /nope"])
    r = env.run("run", "--bundle", str(b), "cro")
    assert r.returncode != 0
    assert b"Read-only file system" in r.stderr
    assert not (b / "rootfs" / "nope").exists()


def test_qemu_killed_mid_run_gives_clear_error_and_no_leak(env: Env) -> None:
    b = env.bundle(["/bin/sh", "-c", "echo started; sleep 600"])
    proc = subprocess.Popen(
        env.argv("run", "--bundle", str(b), "ckill"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"started\n"
        state = json.loads((env.root / "ckill" / "state.json").read_text())
        os.kill(state["qemu_pid"], signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode not in (0, 137)
    assert b"VM exited unexpectedly" in err and b"signal 9" in err
    assert len(err.decode().strip().splitlines()) <= 2  # warning + one error line


def test_detach_then_kill_and_delete(env: Env) -> None:
    b = env.bundle(["/bin/sh", "-c", "sleep 600"])
    pidfile = env.work / "pid"
    # Detached, the container keeps the caller's stdio (as with runc): give it files.
    r = env.run("run", "-d", "--pid-file", str(pidfile), "--bundle", str(b), "cd", capture=False)
    assert r.returncode == 0, r.stderr.decode()
    st = json.loads(env.run("state", "cd").stdout)
    assert st["status"] == "running" and st["id"] == "cd"
    assert int(pidfile.read_text()) > 0
    assert env.run("delete", "cd").returncode == 1  # running: needs --force or a kill
    assert env.run("kill", "cd", "KILL").returncode == 0
    deadline = time.monotonic() + 30
    while json.loads(env.run("state", "cd").stdout)["status"] != "stopped":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert env.run("delete", "cd").returncode == 0
    r = env.run("state", "cd")
    assert r.returncode == 1 and b"does not exist" in r.stderr


# -- bad input: one clear line, non-zero exit, nothing left behind -----------------------


def _one_error_line(r: subprocess.CompletedProcess[bytes], needle: str) -> None:
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.decode().splitlines() if "warning" not in ln]
    assert len(lines) == 1, lines
    assert needle in lines[0], lines[0]
    assert "Traceback" not in r.stderr.decode()


@pytest.mark.parametrize(
    ("cid", "needle"), [("../x", "invalid container id"), ("-x", "invalid container id")]
)
def test_bad_ids(env: Env, cid: str, needle: str) -> None:
    r = env.run("run", "--bundle", str(env.bundle(["true"])), "--", cid)
    _one_error_line(r, needle)


def test_missing_and_malformed_bundles(env: Env) -> None:
    _one_error_line(env.run("run", "--bundle", str(env.work / "none"), "c"), "does not exist")
    b = env.bundle(["true"])
    (b / "config.json").write_text("{oops")
    _one_error_line(env.run("run", "--bundle", str(b), "c"), "malformed")
    (b / "config.json").write_text(
        json.dumps({"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "process": {"args": []}})
    )
    _one_error_line(env.run("run", "--bundle", str(b), "c"), "process.args")


def test_existing_id(env: Env) -> None:
    (env.root / "taken").mkdir(parents=True)
    _one_error_line(
        env.run("run", "--bundle", str(env.bundle(["true"])), "taken"), "already exists"
    )
    (env.root / "taken").rmdir()
    (env.root / ".locks" / "taken").unlink()


def test_missing_assets(env: Env, tmp_path: Path) -> None:
    r = env.run(
        "run", "--bundle", str(env.bundle(["true"])), "c", env={"COCOON_ASSETS_DIR": str(tmp_path)}
    )
    _one_error_line(r, "cocoon assets build")


def test_qemu_failing_to_start(env: Env) -> None:
    r = env.run(
        "run", "--bundle", str(env.bundle(["true"])), "c", env={"COCOON_QEMU": "/bin/false"}
    )
    _one_error_line(r, "QEMU failed to start")


def test_guest_never_answering(env: Env) -> None:
    wrapper = env.work / "qemu-paused"
    wrapper.write_text('#!/bin/sh\nexec qemu-system-x86_64 "$@" -S\n')
    wrapper.chmod(0o755)
    r = env.run(
        "run",
        "--bundle",
        str(env.bundle(["true"])),
        "c",
        env={"COCOON_QEMU": str(wrapper), "COCOON_AGENT_TIMEOUT": "3"},
    )
    _one_error_line(r, "did not answer within 3s")
