"""The runc-compatible verbs, driven as an engine drives them."""

from __future__ import annotations

import array
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import Env

SUBREAPER = [sys.executable, str(Path(__file__).with_name("subreaper.py"))]
LOOP = "trap 'echo got-term; exit 3' TERM; echo started; while :; do sleep 0.1; done"


def wait_status(env: Env, cid: str, want: str, timeout: float = 60) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        st = json.loads(env.run("state", cid).stdout)
        if st["status"] == want:
            return st  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, f"{cid} stuck in {st['status']}"
        time.sleep(0.2)


def _line(path: Path, n: int, timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) > n:
            return lines[n]
        assert time.monotonic() < deadline, lines
        time.sleep(0.1)


def test_lifecycle_with_a_subreaper_like_conmon(env: Env) -> None:
    b = env.bundle(["/bin/sh", "-c", LOOP])
    pidfile, out, status = env.work / "init.pid", env.work / "out", env.work / "status"
    with open(out, "wb") as fh:
        reaper = subprocess.Popen(
            [
                *SUBREAPER,
                str(status),
                str(pidfile),
                "--",
                *env.argv("create", "--bundle", str(b), "--pid-file", str(pidfile), "c1"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=fh,
        )
    try:
        assert _line(status, 0) == "cmd 0"
        st = wait_status(env, "c1", "created")
        assert st["pid"] == int(pidfile.read_text()) and st["bundle"] == str(b)
        assert env.run("start", "c1").returncode == 0
        r = env.run("start", "c1")  # twice: refused, state unchanged
        assert r.returncode == 1 and b"it is running" in r.stderr
        wait_status(env, "c1", "running")
        r = env.run("exec", "c1", "/bin/sh", "-c", "echo in-guest $(uname -r); exit 5")
        assert r.returncode == 5 and r.stdout.startswith(b"in-guest ")
        ps = json.loads(env.run("ps", "--format", "json", "c1").stdout)
        assert int(pidfile.read_text()) in ps
        assert env.run("pause", "c1").returncode == 0
        wait_status(env, "c1", "paused")
        assert env.run("resume", "c1").returncode == 0
        wait_status(env, "c1", "running")
        r = env.run("delete", "c1")
        assert r.returncode == 1 and b"running" in r.stderr
        assert env.run("kill", "c1", "TERM").returncode == 0
        assert _line(status, 1) == "exit 3"  # the stub mirrors the guest's exit status
        wait_status(env, "c1", "stopped")
        assert env.run("delete", "c1").returncode == 0
    finally:
        reaper.kill()
        reaper.wait()
    # The container's stdio was the creator's: its output landed in our file.
    assert b"started" in out.read_bytes() and b"got-term" in out.read_bytes()


def test_stdio_goes_to_the_creators_fds_and_exec_detach(env: Env) -> None:
    b = env.bundle(["/bin/sh", "-c", 'read x; echo "init got $x"; sleep 600'])
    out = env.work / "out"
    r_fd, w_fd = os.pipe()
    with open(out, "wb") as fh:
        r = subprocess.run(
            env.argv("create", "--bundle", str(b), "c2"),
            stdin=r_fd,
            stdout=fh,
            stderr=subprocess.DEVNULL,
            timeout=180,
        )
    os.close(r_fd)
    assert r.returncode == 0
    assert env.run("start", "c2").returncode == 0
    os.write(w_fd, b"hello\n")
    os.close(w_fd)
    deadline = time.monotonic() + 30
    while b"init got hello" not in out.read_bytes():
        assert time.monotonic() < deadline
        time.sleep(0.2)
    exec_pid = env.work / "exec.pid"
    proc = env.work / "proc.json"
    proc.write_text(
        json.dumps(
            {"args": ["/bin/sh", "-c", "echo from-detached-exec"], "cwd": "/", "env": ["PATH=/bin"]}
        )
    )
    with open(out, "ab") as fh:
        r = subprocess.run(
            env.argv("exec", "--process", str(proc), "--detach", "--pid-file", str(exec_pid), "c2"),
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=fh,
            timeout=120,
        )
    assert r.returncode == 0 and int(exec_pid.read_text()) > 0
    deadline = time.monotonic() + 30
    while b"from-detached-exec" not in out.read_bytes():
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert env.run("delete", "--force", "c2").returncode == 0


def _console_listener(path: Path) -> socket.socket:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)
    srv.settimeout(180)
    return srv


def _recv_master(srv: socket.socket) -> int:
    conn, _ = srv.accept()
    with conn:
        fds = array.array("i")
        _, anc, _, _ = conn.recvmsg(1024, socket.CMSG_LEN(fds.itemsize))
        fds.frombytes(anc[0][2][: fds.itemsize])
        return fds[0]


def _read_until(fd: int, needle: bytes, timeout: float = 60) -> bytes:
    buf = b""
    deadline = time.monotonic() + timeout
    os.set_blocking(fd, False)
    while needle not in buf:
        assert time.monotonic() < deadline, buf
        try:
            buf += os.read(fd, 4096)
        except BlockingIOError:
            time.sleep(0.05)
    return buf


def test_terminal_through_console_socket(env: Env) -> None:
    b = env.bundle(["/bin/sh"], terminal=True)
    sock = env.work / "console.sock"
    srv = _console_listener(sock)
    create = subprocess.Popen(
        env.argv("create", "--bundle", str(b), "--console-socket", str(sock), "ct"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        master = _recv_master(srv)
        assert create.wait(180) == 0
        assert env.run("start", "ct").returncode == 0
        os.write(master, b"echo hi-$((1+1))\n")
        assert b"hi-2" in _read_until(master, b"hi-2")
        os.write(master, b"tty\n")
        assert b"/dev/pts/" in _read_until(master, b"/dev/pts/")
        os.write(master, b"exit 4\n")
        wait_status(env, "ct", "stopped")
        os.close(master)
    finally:
        srv.close()
        if create.poll() is None:
            create.kill()
    assert env.run("delete", "ct").returncode == 0


def test_two_containers_under_one_root(env: Env) -> None:
    for cid in ("m1", "m2"):
        b = env.bundle(["/bin/sleep", "600"])
        r = env.run("run", "-d", "--bundle", str(b), cid, capture=False)
        assert r.returncode == 0
    listed = json.loads(env.run("list", "--format", "json").stdout)
    assert sorted((c["id"], c["status"]) for c in listed) == [("m1", "running"), ("m2", "running")]
    for cid in ("m1", "m2"):
        assert env.run("delete", "--force", cid).returncode == 0


def test_update_memory_limit_reaches_the_guest_cgroup(env: Env) -> None:
    mounts = [
        {
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            "options": ["ro", "nosuid", "noexec", "nodev"],
        }
    ]
    b = env.bundle(["/bin/sleep", "600"])
    spec = json.loads((b / "config.json").read_text())
    spec["mounts"] += mounts
    spec["linux"]["namespaces"].append({"type": "cgroup"})
    (b / "config.json").write_text(json.dumps(spec))
    assert env.run("run", "-d", "--bundle", str(b), "cu", capture=False).returncode == 0
    res = env.work / "res.json"
    res.write_text(json.dumps({"memory": {"limit": 64 << 20}, "pids": {"limit": 50}}))
    assert env.run("update", f"--resources={res}", "cu").returncode == 0
    r = env.run("exec", "cu", "/bin/cat", "/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/pids.max")
    assert r.stdout.split() == [str(64 << 20).encode(), b"50"]
    r = subprocess.run(
        env.argv("update", "--resources", "-", "cu"),
        input=b'{"pids":{"limit":7}}',
        capture_output=True,
        timeout=60,
    )
    assert r.returncode == 0
    assert env.run("exec", "cu", "/bin/cat", "/sys/fs/cgroup/pids.max").stdout == b"7\n"
    r = env.run(
        "update", "--cpu-quota", "50000", "--cpu-period", "100000", "--blkio-weight", "500", "cu"
    )
    assert r.returncode == 0, r.stderr.decode()
    r = env.run("exec", "cu", "/bin/cat", "/sys/fs/cgroup/cpu.max", "/sys/fs/cgroup/io.weight")
    # OCI's blkio weight (10..1000) becomes cgroup v2's io.weight (1..10000): 500 → 4950.
    assert r.stdout.decode().splitlines()[:2] == ["50000 100000", "default 4950"]
    assert env.run("delete", "--force", "cu").returncode == 0


# -- bad input: one line, exit status 1, nothing changed ---------------------------------


def _fails(r: subprocess.CompletedProcess[bytes], needle: str) -> None:
    err = [ln for ln in r.stderr.decode().splitlines() if "warning" not in ln]
    assert r.returncode == 1, r
    assert len(err) == 1 and needle in err[0], err


def test_force_delete_of_a_missing_container_succeeds(env: Env) -> None:
    """runc: ``delete --force`` of an unknown ID is a no-op, so engines' cleanup is quiet."""
    r = env.run("delete", "--force", "nope")
    assert r.returncode == 0, r
    assert r.stderr == b""
    env.root.mkdir(parents=True, exist_ok=True)
    assert env.run("delete", "-f", "nope").returncode == 0
    _fails(env.run("delete", "nope"), "does not exist")
    (env.root / "half").mkdir()  # a create that died before writing its state
    assert env.run("delete", "--force", "half").returncode == 0
    assert not (env.root / "half").exists()


def test_bad_input_is_one_line(env: Env) -> None:
    _fails(env.run("frobnicate"), "invalid choice")
    _fails(env.run("run", "--no-such-flag", "x"), "unrecognized arguments")
    _fails(env.run("state", "nope"), "does not exist")
    _fails(env.run("kill", "nope", "KILL"), "does not exist")
    _fails(env.run("delete", "nope"), "does not exist")
    _fails(env.run("start", "nope"), "does not exist")
    _fails(env.run("exec", "nope", "true"), "does not exist")
    _fails(env.run("kill", "../x"), "invalid container id")
    _fails(env.run("--systemd-cgroup", "state", "x"), "not supported")
    b = env.bundle(["true"], terminal=True)
    notsock = env.work / "plain-file"
    notsock.write_text("")
    _fails(
        env.run("create", "--bundle", str(b), "--console-socket", str(notsock), "c"),
        "not a unix socket",
    )
    _fails(env.run("create", "--bundle", str(b), "c"), "without --console-socket")
    vm = env.bundle(["true"], vm={"kernel": {"path": "/boot/evil"}})
    _fails(env.run("create", "--bundle", str(vm), "c"), "vm: choosing the hypervisor")
    plain = env.bundle(["true"])
    _fails(env.run("create", "--preserve-fds", "2", "--bundle", str(plain), "c"), "preserve-fds")
    _fails(env.run("--rootless", "true", "state", "c"), "rootless")
    assert not (env.root / "c").exists()


def test_bad_signal_and_json_log(env: Env) -> None:
    assert (
        env.run(
            "run", "-d", "--bundle", str(env.bundle(["/bin/sleep", "600"])), "cj", capture=False
        ).returncode
        == 0
    )
    log = env.work / "log.json"
    r = env.run("--log", str(log), "--log-format", "json", "kill", "cj", "SIGNOPE")
    assert r.returncode == 1
    line = json.loads(log.read_text().splitlines()[-1])
    assert line["level"] == "error" and "unknown signal" in line["msg"] and "time" in line
    assert json.loads(env.run("state", "cj").stdout)["status"] == "running"
    assert env.run("delete", "--force", "cj").returncode == 0


def test_features_and_version(env: Env) -> None:
    r = env.run("--version")
    lines = r.stdout.decode().splitlines()
    assert lines[0].startswith("cocoon version ") and lines[2].startswith("spec: ")
    feats = json.loads(env.run("features").stdout)
    assert feats["ociVersionMax"].startswith("1.") and "poststop" in feats["hooks"]


@pytest.mark.parametrize("verb", ["pause", "resume", "ps"])
def test_verbs_on_stopped_container(env: Env, verb: str) -> None:
    b = env.bundle(["/bin/true"])
    r = env.run("run", "-d", "--bundle", str(b), "cs", capture=False)
    assert r.returncode == 0, (env.work / "out.log").read_text()
    wait_status(env, "cs", "stopped")
    assert env.run(verb, "cs").returncode == 1
    assert env.run("delete", "cs").returncode == 0


def test_events_stats_and_oom(env: Env) -> None:
    mem_hog = "echo ready; sleep 1; head -c 200m /dev/zero | tail; sleep 600"
    b = env.bundle(["/bin/sh", "-c", mem_hog])
    spec = json.loads((b / "config.json").read_text())
    spec["linux"]["resources"] = {"memory": {"limit": 32 << 20}}
    (b / "config.json").write_text(json.dumps(spec))
    assert env.run("run", "-d", "--bundle", str(b), "ce", capture=False).returncode == 0
    one = json.loads(env.run("events", "--stats", "ce").stdout)
    assert one["type"] == "stats" and one["id"] == "ce"
    assert one["data"]["memory"]["usage"]["limit"] == 32 << 20
    assert one["data"]["pids"]["current"] >= 1
    proc = subprocess.Popen(
        env.argv("events", "--interval", "1s", "ce"),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        types = []
        deadline = time.monotonic() + 60
        while "oom" not in types:
            assert time.monotonic() < deadline, types
            types.append(json.loads(proc.stdout.readline())["type"])
    finally:
        proc.kill()
        proc.wait()
    assert env.run("delete", "--force", "ce").returncode == 0
