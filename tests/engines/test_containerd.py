"""containerd 1.6 + ctr, runc v2 shim with ``BinaryName`` = the runtime under test.

``ctr run --runc-binary <path>`` is ctr's spelling of the shim option BinaryName; the shim
calls the runtime with ``--root /run/containerd/runc/<namespace> --log <bundle>/log.json``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.engines.conftest import Containerd, PtySession, check, describe, wait_for

IMG = "localhost/busybox:latest"


def test_run_rm_output_and_exit_code(
    containerd: Containerd, runtime: str, cname: Callable[[], str]
) -> None:
    cid = cname()
    p = containerd.ctr(
        "run",
        "--rm",
        "--runc-binary",
        runtime,
        IMG,
        cid,
        "sh",
        "-c",
        "echo out-$((6*7)); exit 7",
    )
    assert p.returncode == 7, describe(p)
    assert "out-42" in p.stdout, describe(p)
    assert cid not in containerd.containers()


def test_detached_exec_ps_kill_delete(
    containerd: Containerd, runtime: str, cname: Callable[[], str]
) -> None:
    cid = cname()
    check(containerd.ctr("run", "-d", "--runc-binary", runtime, IMG, cid, "sleep", "1000"))
    pid, status = containerd.tasks()[cid]
    assert status == "RUNNING" and pid > 0

    p = check(
        containerd.ctr("task", "exec", "--exec-id", "x1", cid, "sh", "-c", "echo exec-$((2+3))")
    )
    assert p.stdout.strip() == "exec-5", describe(p)
    p = containerd.ctr("task", "exec", "--exec-id", "x2", cid, "sh", "-c", "exit 5")
    assert p.returncode == 5, describe(p)

    # `ctr task ps` -> runtime `ps --format json <id>`.
    p = check(containerd.ctr("task", "ps", cid))
    print(describe(p))
    rows = p.stdout.strip().splitlines()
    assert rows[0].split() == ["PID", "INFO"], describe(p)
    pids = [int(r.split()[0]) for r in rows[1:]]
    assert pids, describe(p)

    check(containerd.ctr("task", "kill", "-s", "SIGKILL", cid))
    wait_for("task to stop", lambda: containerd.tasks()[cid][1] == "STOPPED")
    p = check(containerd.ctr("task", "delete", cid))
    # ctr 1.6 reports the exit status only as a warning.
    assert "exit code 137" in p.stderr, describe(p)
    assert cid not in containerd.tasks()
    check(containerd.ctr("container", "rm", cid))


def test_kill_default_signal_exit_code(
    containerd: Containerd, runtime: str, cname: Callable[[], str], tmp_path: Path
) -> None:
    cid = cname()
    log = tmp_path / "out.log"
    script = 'trap "echo got-term; exit 9" TERM; echo ready; while :; do sleep 1; done'
    check(
        containerd.ctr(
            "run",
            "-d",
            "--runc-binary",
            runtime,
            "--log-uri",
            f"file://{log}",
            IMG,
            cid,
            "sh",
            "-c",
            script,
        )
    )
    wait_for("container to print ready", lambda: log.exists() and "ready" in log.read_text())
    check(containerd.ctr("task", "kill", cid))  # SIGTERM
    wait_for("task to stop", lambda: containerd.tasks()[cid][1] == "STOPPED")
    assert "got-term" in log.read_text()
    p = check(containerd.ctr("task", "delete", cid))
    assert "exit code 9" in p.stderr, describe(p)
    check(containerd.ctr("container", "rm", cid))


def test_pause_resume(containerd: Containerd, runtime: str, cname: Callable[[], str]) -> None:
    cid = cname()
    check(containerd.ctr("run", "-d", "--runc-binary", runtime, IMG, cid, "sleep", "1000"))
    check(containerd.ctr("task", "pause", cid))
    assert containerd.tasks()[cid][1] == "PAUSED"
    check(containerd.ctr("task", "resume", cid))
    assert containerd.tasks()[cid][1] == "RUNNING"
    p = check(containerd.ctr("task", "exec", "--exec-id", "x1", cid, "echo", "alive"))
    assert p.stdout.strip() == "alive", describe(p)
    check(containerd.ctr("task", "kill", "-s", "SIGKILL", cid))
    wait_for("task to stop", lambda: containerd.tasks()[cid][1] == "STOPPED")
    containerd.ctr("task", "delete", cid)
    check(containerd.ctr("container", "rm", cid))


def test_run_tty(
    containerd: Containerd,
    runtime: str,
    cname: Callable[[], str],
    spawn_pty: Callable[..., PtySession],
) -> None:
    cid = cname()
    s = spawn_pty(
        containerd.ctr_argv("run", "-t", "--rm", "--runc-binary", runtime, IMG, cid, "/bin/sh")
    )
    s.expect("# ")
    s.send("echo hi-$((1+1))\r")
    s.expect("hi-2")
    s.send("tty\r")
    s.expect("/dev/pts/")
    s.send("exit 3\r")
    assert s.wait() == 3, s.output
    assert cid not in containerd.containers()


def test_exec_tty(
    containerd: Containerd,
    runtime: str,
    cname: Callable[[], str],
    spawn_pty: Callable[..., PtySession],
) -> None:
    cid = cname()
    check(containerd.ctr("run", "-d", "--runc-binary", runtime, IMG, cid, "sleep", "1000"))
    s = spawn_pty(containerd.ctr_argv("task", "exec", "-t", "--exec-id", "t1", cid, "/bin/sh"))
    s.expect("# ")
    s.send("echo hi-$((3+4))\r")
    s.expect("hi-7")
    s.send("exit 4\r")
    assert s.wait() == 4, s.output
    check(containerd.ctr("task", "kill", "-s", "SIGKILL", cid))
    wait_for("task to stop", lambda: containerd.tasks()[cid][1] == "STOPPED")
    containerd.ctr("task", "delete", cid)
    check(containerd.ctr("container", "rm", cid))
