"""Live migration of a running container between two simulated hosts (cocoon migrate /
cocoon restore --listen), end to end.

The hosts (tests/fixtures/hosts.py): two network namespaces joined by a veth, each
with its own Cocoon state root, the pod namespace prepared alike on both, a client
namespace on the pods' bridge. The client keeps pinging the pod IP and holds a TCP
connection (busybox nc echo in the container) while the VM moves. First two failed
migrations (nothing listening; the destination killed mid-way) leave the source
running; then the move, with its figures printed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import COCOON, Env
from tests.e2e.test_checkpoint import BLOCK, CLIENT, COUNTER, _echo, _writable
from tests.e2e.test_network import MAC, PEER_IP, POD_IP, write_spec
from tests.fixtures.hosts import DST_IP, Hosts, on_host, pings, simulated_hosts, wait_listening

PORT = 7411


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    with simulated_hosts("mg", POD_IP, PEER_IP, MAC) as h:
        yield h


def _argv(ns: str, root: Path, *args: str) -> list[str]:
    return on_host(ns, [*COCOON, "--root", str(root), *args])


def _on(
    env: Env, ns: str, root: Path, *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        _argv(ns, root, *args),
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        env={**os.environ, **BLOCK},
    )


def _spawn(env: Env, ns: str, root: Path, *args: str, log: str) -> subprocess.Popen[bytes]:
    out = open(env.work / log, "ab")  # noqa: SIM115 - the detached stub may hold a copy
    try:
        return subprocess.Popen(
            _argv(ns, root, *args),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env={**os.environ, **BLOCK},
        )
    finally:
        out.close()


def _count(env: Env, ns: str, root: Path) -> int:
    r = _on(env, ns, root, "exec", "c1", "/bin/sh", "-c", "cat /count 2>/dev/null || echo 0")
    assert r.returncode == 0, r.stderr.decode()
    return int(r.stdout.decode().strip() or 0)


def _grows(env: Env, ns: str, root: Path, beyond: int) -> int:
    deadline = time.monotonic() + 60
    while (n := _count(env, ns, root)) <= beyond:
        assert time.monotonic() < deadline, f"the counter stays at {n}"
        time.sleep(0.5)
    return n


def _status(env: Env, ns: str, root: Path) -> str:
    r = _on(env, ns, root, "state", "c1")
    assert r.returncode == 0, r.stderr.decode()
    return str(json.loads(r.stdout)["status"])


def _state(root: Path) -> dict[str, object]:
    try:
        return dict(json.loads((root / "c1" / "state.json").read_text()))
    except (OSError, ValueError):
        return {}


def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_a_running_container_moves_live_between_hosts(env: Env, hosts: Hosts) -> None:
    h = hosts
    ra, rb = env.root, env.work / "dst"  # not under env.root's name: leaks() matches by prefix
    dest_env = Env(rb, env.work, env.rootfs)
    src_bundle = _writable(env.bundle(["/bin/sh", "-c", COUNTER]))
    write_spec(src_bundle, [{"type": "network", "path": f"/run/netns/{h.pod_a}"}])
    dst_bundle = _writable(env.bundle(["/bin/sh", "-c", COUNTER]))
    write_spec(dst_bundle, [{"type": "network", "path": f"/run/netns/{h.pod_b}"}])
    to = f"{DST_IP}:{PORT}"
    pid_file = env.work / "c1.pid"
    procs: list[subprocess.Popen[bytes]] = []
    client = ping = None
    try:
        r = _spawn(env, h.a, ra, "run", "-d", "--pid-file", str(pid_file),
                   "--bundle", str(src_bundle), "c1", log="run.log")  # fmt: skip
        assert r.wait(300) == 0, (env.work / "run.log").read_text()
        engine_pid = int(pid_file.read_text())
        client = subprocess.Popen(
            ["ip", "netns", "exec", h.client, sys.executable, "-c", CLIENT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert client.stdout is not None and client.stdout.readline().strip() == "connected"
        assert _echo(client, "one") == "one"
        first = _grows(env, h.a, ra, 5)

        # 1. Nothing listens there: one line, the source runs on.
        r = _on(env, h.a, ra, "migrate", "c1", "--to", to)
        assert r.returncode != 0 and b"cannot reach the destination" in r.stderr, r.stderr
        assert len(r.stderr.decode().strip().splitlines()) == 1, r.stderr
        assert _status(env, h.a, ra) == "running"
        first = _grows(env, h.a, ra, first)
        assert _echo(client, "two") == "two"

        # 2. The destination dies mid-way: the source runs on, the destination's
        # CLI fails and leaves nothing.
        dest = _spawn(env, h.b, rb, "restore", "--listen", to, "--bundle", str(dst_bundle),
                      "-d", "c1", log="dest1.log")  # fmt: skip
        procs.append(dest)
        wait_listening(h.b, PORT)
        mig = subprocess.Popen(
            _argv(h.a, ra, "migrate", "c1", "--to", to),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **BLOCK},
        )
        procs.append(mig)
        deadline = time.monotonic() + 120
        while not _state(rb).get("qemu_pid"):
            assert time.monotonic() < deadline and mig.poll() is None, mig.communicate()
            time.sleep(0.05)
        time.sleep(1.0)  # mirroring or pre-copy by now
        service = int(str(_state(rb).get("service_pid") or 0))
        assert service
        os.kill(service, signal.SIGKILL)
        _, err = mig.communicate(timeout=300)
        assert mig.returncode != 0, err
        print(f"\nkilled destination: source said {err.decode().strip()}")
        assert dest.wait(120) != 0
        assert _status(env, h.a, ra) == "running"
        first = _grows(env, h.a, ra, first)
        assert _echo(client, "three") == "three"
        assert dest_env.leaks() == []

        # 3. The move, under pings and a held connection.
        dest = _spawn(env, h.b, rb, "restore", "--listen", to, "--bundle", str(dst_bundle),
                      "-d", "c1", log="dest2.log")  # fmt: skip
        procs.append(dest)
        wait_listening(h.b, PORT)
        ping = subprocess.Popen(
            ["ip", "netns", "exec", h.client, "busybox", "ping", "-i", "0.1", POD_IP],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        time.sleep(2)
        before = _count(env, h.a, ra)
        t0 = time.monotonic()
        r = _on(env, h.a, ra, "migrate", "c1", "--to", to, timeout=900)
        total = time.monotonic() - t0
        if r.returncode != 0:
            with contextlib.suppress(subprocess.TimeoutExpired):
                dest.wait(60)  # its one line says why
        assert r.returncode == 0, (r.stderr.decode(), (env.work / "dest2.log").read_text())
        stats = json.loads(r.stdout.decode().strip().splitlines()[-1])
        assert dest.wait(120) == 0, (env.work / "dest2.log").read_text()
        time.sleep(2)
        ping.send_signal(signal.SIGINT)
        out, _ = ping.communicate(timeout=30)
        ping = None
        sent, received, longest = pings(out)
        print(
            f"live migration: {total:.2f} s wall (service {stats['total_s']} s: header "
            f"{stats['header_s']} s, destination ready {stats['destination_ready_s']} s, "
            f"mirror {stats['mirror_ready_s']} s, RAM {stats['migrate_s']} s, handover "
            f"{stats['handover_s']} s); QEMU downtime {stats['qemu_downtime_ms']} ms; "
            f"pings {received}/{sent} ({sent - received} lost, longest gap {longest} x 0.1 s); "
            f"RAM stream {stats['ram_transferred'] >> 20} MiB for a "
            f"{stats['ram_total'] >> 20} MiB guest ({stats['dirty_sync_count']} passes), "
            f"scratch mirrored {stats['disk_bytes'] >> 20} MiB (sparse)"
        )

        # The destination runs it: counter on, connection held.
        assert _status(env, h.b, rb) == "running"
        after = _count(env, h.b, rb)
        assert after >= before, (before, after)
        assert _grows(env, h.b, rb, after) > after
        assert _echo(client, "four") == "four"
        # The source: no QEMU, no state, the engine's PID gone.
        assert _gone(engine_pid, 30), "the source's stub did not exit"
        assert not (ra / "c1").exists()
        deadline = time.monotonic() + 20
        while env.leaks() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert env.leaks() == []
        assert sent - received < 60, out  # a few seconds at most under TCG

        r = _on(env, h.b, rb, "delete", "--force", "c1")
        assert r.returncode == 0, r.stderr.decode()
        assert dest_env.leaks() == []
    finally:
        for p in (ping, client, *procs):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        _on(env, h.a, ra, "delete", "--force", "c1")
        _on(env, h.b, rb, "delete", "--force", "c1")
        from tests.e2e.conftest import _kill_leftovers

        _kill_leftovers(dest_env)
