"""Live migration of a running container between two simulated hosts (cocoon migrate /
cocoon restore --listen), end to end.

Two "hosts" are network namespaces joined by a veth pair (10.232.0.0/24), each with
its own Cocoon state root; every Cocoon process of a host runs in its namespace
(``nsenter --net``: the mount namespace, /sys and the cgroups stay the host's), so
the control, NBD and migration connections cross that veth. The pod namespace is
prepared on both sides as a CNI would (eth0 with the same MAC and IP), both pods'
veth peers on one bridge in a "fabric" namespace with a client namespace: the
client keeps pinging the pod IP and holds a TCP connection (busybox nc echo in the
container) while the VM moves. IPv6 is off in the pods and the client has a
static neighbour entry, so the destination's idle pod namespace never answers for
the pod: the replies after the move come from the moved guest. First two failed
migrations (nothing listening; the destination killed mid-way) leave the source
running; then the move, with its figures printed.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import COCOON, Env
from tests.e2e.test_checkpoint import BLOCK, CLIENT, COUNTER, _echo, _writable
from tests.e2e.test_network import MAC, PEER_IP, POD_IP, sh, write_spec

SRC_IP, DST_IP = "10.232.0.1", "10.232.0.2"
PORT = 7411


@dataclass
class Hosts:
    a: str  # the source host's namespace
    b: str  # the destination's
    pod_a: str
    pod_b: str
    fabric: str
    client: str

    def all(self) -> list[str]:
        return [self.a, self.b, self.pod_a, self.pod_b, self.fabric, self.client]


def _no_ipv6(ns: str) -> None:
    sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
       "net.ipv6.conf.default.disable_ipv6=1")  # fmt: skip


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    n = os.getpid() % 100000
    h = Hosts(f"mga{n}", f"mgb{n}", f"mgpa{n}", f"mgpb{n}", f"mgf{n}", f"mgc{n}")
    try:
        for ns in h.all():
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        # The two hosts' link.
        sh("ip", "-n", h.a, "link", "add", "mig0", "type", "veth", "peer", "name", "mig0",
           "netns", h.b)  # fmt: skip
        for ns, ip in ((h.a, SRC_IP), (h.b, DST_IP)):
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "mig0")
            sh("ip", "-n", ns, "link", "set", "mig0", "up")
        # The pod network: one bridge, both pods' peers and the client on it.
        for ns in (h.pod_a, h.pod_b, h.fabric, h.client):
            _no_ipv6(ns)
        sh("ip", "-n", h.fabric, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", h.fabric, "link", "set", "br0", "up")
        for ns, port in ((h.pod_a, "va"), (h.pod_b, "vb"), (h.client, "vc")):
            sh("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", port,
               "netns", h.fabric)  # fmt: skip
            sh("ip", "-n", h.fabric, "link", "set", port, "master", "br0", "up")
        for ns in (h.pod_a, h.pod_b):  # prepared alike on both hosts, as by a CNI
            sh("ip", "-n", ns, "link", "set", "eth0", "address", MAC, "up")
            sh("ip", "-n", ns, "addr", "add", f"{POD_IP}/24", "dev", "eth0")
            sh("ip", "-n", ns, "route", "add", "default", "via", PEER_IP)
        sh("ip", "-n", h.client, "link", "set", "eth0", "up")
        sh("ip", "-n", h.client, "addr", "add", f"{PEER_IP}/24", "dev", "eth0")
        sh("ip", "-n", h.client, "neigh", "replace", POD_IP, "lladdr", MAC, "dev", "eth0",
           "nud", "permanent")  # fmt: skip
        yield h
    finally:
        for ns in h.all():
            sh("ip", "netns", "del", ns, check=False)


def _argv(ns: str, root: Path, *args: str) -> list[str]:
    return ["nsenter", f"--net=/run/netns/{ns}", *COCOON, "--root", str(root), *args]


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


def _listening(h: Hosts) -> None:
    deadline = time.monotonic() + 60
    while not sh("ip", "netns", "exec", h.b, "ss", "-Hltn", f"sport = :{PORT}").stdout.strip():
        assert time.monotonic() < deadline, "the destination never listened"
        time.sleep(0.1)


def _state(root: Path) -> dict[str, object]:
    try:
        return dict(json.loads((root / "c1" / "state.json").read_text()))
    except (OSError, ValueError):
        return {}


def _pings(text: str) -> tuple[int, int, int]:
    """(sent, received, longest run of lost replies) from ping's output."""
    seqs = [int(m) for m in re.findall(r"seq=(\d+)", text)]
    m = re.search(r"(\d+) packets transmitted, (\d+) (?:packets )?received", text)
    assert m and seqs, text
    gaps = [b - a - 1 for a, b in itertools.pairwise(seqs)]
    return int(m.group(1)), int(m.group(2)), max([0, *gaps])


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
        _listening(h)
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
        _listening(h)
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
        sent, received, longest = _pings(out)
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
