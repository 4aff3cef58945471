"""Pod networking end to end: a test "pod" namespace whose veth's peer is in a test "node"
namespace; the container in the VM owns the pod IP.

All traffic stays inside the two namespaces these tests create (and delete); the
host's own namespace sends nothing and its interfaces are compared before/after.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import Env

POD_IP = "10.231.0.2"
PEER_IP = "10.231.0.1"
MAC = "02:cc:00:00:00:02"
POD_IP6, PEER_IP6 = "fd00:231::2", "fd00:231::1"


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=60)


def in_ns(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, *argv, check=check)


@dataclass
class Pod:
    pod: str
    peer: str

    @property
    def path(self) -> str:
        return f"/run/netns/{self.pod}"

    def traces(self) -> dict[str, str]:
        """What Cocoon may add to the pod namespace: links, qdiscs, ingress filters."""
        return {
            "links": in_ns(self.pod, "ip", "-o", "link", "show").stdout,
            "qdiscs": in_ns(self.pod, "tc", "qdisc", "show").stdout,
            "filters": in_ns(self.pod, "tc", "filter", "show", "dev", "eth0", "ingress").stdout,
            "addrs": _stable_addrs(in_ns(self.pod, "ip", "-j", "addr").stdout),
        }


def _stable_addrs(text: str) -> str:
    """``ip -j addr`` without IPv6 DAD's passing "tentative" flag."""
    links = json.loads(text)
    for link in links:
        for a in link.get("addr_info", []):
            a.pop("tentative", None)
    return json.dumps(links, sort_keys=True)


@pytest.fixture
def pod() -> Iterator[Pod]:
    n = os.getpid()
    p = Pod(f"ccn-pod-{n}", f"ccn-peer-{n}")
    sh("ip", "netns", "add", p.pod)
    try:
        sh("ip", "netns", "add", p.peer)
        sh("ip", "-n", p.pod, "link", "add", "eth0", "type", "veth", "peer", "name", "veth-pod",
           "netns", p.peer)  # fmt: skip
        sh("ip", "-n", p.pod, "link", "set", "eth0", "address", MAC, "mtu", "1400", "up")
        sh("ip", "-n", p.pod, "addr", "add", f"{POD_IP}/24", "dev", "eth0")
        sh("ip", "-n", p.pod, "addr", "add", f"{POD_IP6}/64", "dev", "eth0", "nodad")
        sh("ip", "-n", p.pod, "route", "add", "default", "via", PEER_IP)
        sh("ip", "-n", p.peer, "link", "set", "veth-pod", "mtu", "1400", "up")
        sh("ip", "-n", p.peer, "link", "set", "lo", "up")
        sh("ip", "-n", p.peer, "addr", "add", f"{PEER_IP}/24", "dev", "veth-pod")
        sh("ip", "-n", p.peer, "addr", "add", f"{PEER_IP6}/64", "dev", "veth-pod", "nodad")
        yield p
    finally:
        sh("ip", "netns", "del", p.pod, check=False)
        sh("ip", "netns", "del", p.peer, check=False)


def write_spec(bundle: Path, netns: list[dict[str, str]] | None) -> None:
    """Set the bundle's network namespace entry (None: no network namespace at all)."""
    cfg = bundle / "config.json"
    spec = json.loads(cfg.read_text())
    ns = [x for x in spec["linux"]["namespaces"] if x["type"] != "network"]
    spec["linux"]["namespaces"] = ns + (netns or [])
    cfg.write_text(json.dumps(spec))


ECHO_SERVER = (
    "import socket,sys\n"
    "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    f"s.bind(('{PEER_IP}', 8008)); s.listen(); print('up', flush=True)\n"
    "while True:\n"
    "    c,_=s.accept(); c.sendall(b'from-peer\\n'); c.close()\n"
)
ECHO_CLIENT = (
    "import socket\n"
    f"c=socket.create_connection(('{POD_IP}', 7007), timeout=20)\n"
    "c.sendall(b'hello-vm\\n'); data=b''\n"
    "while not data.endswith(b'\\n'): data+=c.recv(100) or b'\\n'\n"
    "print(data.decode().strip())\n"
)


def test_container_in_vm_owns_the_pod_ip(env: Env, pod: Pod) -> None:
    before = pod.traces()
    bundle = env.bundle(["/bin/sh", "-c", "nc -ll -p 7007 -e /bin/cat & exec sleep 600"])
    write_spec(bundle, [{"type": "network", "path": pod.path}])
    server = subprocess.Popen(
        ["ip", "netns", "exec", pod.peer, sys.executable, "-c", ECHO_SERVER],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "up"
        log, pidfile = env.work / "create.log", env.work / "n1.pid"
        with open(log, "wb") as fh:  # the stub keeps its stdio: no pipes to wait on
            rc = subprocess.run(
                env.argv("create", "--bundle", str(bundle), "--pid-file", str(pidfile), "n1"),
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=fh,
                timeout=180,
            ).returncode
        assert rc == 0, log.read_text()
        # The container's PID (the stub) is in the pod namespace, as runc's would be.
        assert _lives_in(int(pidfile.read_text()), pod.path)
        during = pod.traces()
        assert "tap0_cocoon" in during["links"] and "mirred" in during["filters"]
        assert env.run("start", "n1").returncode == 0
        # The container sees the pod IP and the veth's MAC on eth0.
        r = env.run("exec", "n1", "ip", "addr", "show", "eth0")
        out = r.stdout.decode()
        assert r.returncode == 0 and f"inet {POD_IP}/24" in out and MAC in out, out
        assert "mtu 1400" in out and f"inet6 {POD_IP6}/64" in out, out
        routes = env.run("exec", "n1", "ip", "route").stdout.decode()
        assert f"default via {PEER_IP} dev eth0" in routes
        # The node reaches the container: ping and a TCP echo.
        ping = in_ns(pod.peer, "/bin/busybox", "ping", "-c", "3", "-W", "10", POD_IP, check=False)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        deadline = time.monotonic() + 15  # the guest's IPv6 DAD takes a second
        while True:
            ping6 = in_ns(pod.peer, "/bin/busybox", "ping", "-6", "-c", "1", "-W", "3", POD_IP6,
                          check=False)  # fmt: skip
            if ping6.returncode == 0 or time.monotonic() > deadline:
                break
        assert ping6.returncode == 0, ping6.stdout + ping6.stderr
        deadline = time.monotonic() + 30
        while True:
            echo = in_ns(pod.peer, sys.executable, "-c", ECHO_CLIENT, check=False)
            if echo.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)  # the echo server may still be starting
        assert echo.stdout.strip() == "hello-vm", echo.stderr
        # The container reaches a server in the node namespace.
        r = env.run("exec", "n1", "nc", "-w", "10", PEER_IP, "8008")
        assert r.stdout.decode().strip() == "from-peer", r.stderr.decode()
        # A second VM never takes the same interface: a container naming this namespace
        # joins n1's VM (create/start; a foreground run is refused); n1 keeps its network.
        r = env.run("run", "--bundle", str(bundle), "n2")
        assert r.returncode == 1 and b"names a running Cocoon sandbox" in r.stderr, r.stderr
        assert pod.traces() == during
        other = env.bundle(["/bin/sleep", "600"])
        write_spec(other, [{"type": "network", "path": pod.path}])
        assert env.run("run", "-d", "--bundle", str(other), "n2", capture=False).returncode == 0
        r = env.run("exec", "n2", "ip", "addr", "show", "eth0")  # the pod IP is its too
        assert f"inet {POD_IP}/24" in r.stdout.decode(), r
        assert pod.traces() == during
        assert env.run("delete", "--force", "n2").returncode == 0
        r = env.run("exec", "n1", "nc", "-w", "10", PEER_IP, "8008")
        assert r.stdout.decode().strip() == "from-peer", r.stderr.decode()
        assert env.run("kill", "n1", "KILL").returncode == 0
        r = env.run("delete", "--force", "n1")
        assert r.returncode == 0, r.stderr.decode()
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait()
    # Teardown leaves the pod namespace exactly as it was found.
    assert pod.traces() == before


def test_host_network_refused_and_host_untouched(env: Env, pod: Pod) -> None:
    host_before = sh("ip", "-j", "addr").stdout
    bundle = env.bundle(["/bin/true"])
    host_ns = [{"type": "network", "path": f"/proc/{os.getpid()}/ns/net"}]
    for i, netns in enumerate((None, host_ns)):
        write_spec(bundle, netns)
        r = env.run("run", "--bundle", str(bundle), f"h{i}")
        err = r.stderr.decode()
        assert r.returncode == 1, err
        assert "cannot share the host's network stack" in err and "--network none" in err, err
        assert len(err.strip().splitlines()) == 1, err
    assert sh("ip", "-j", "addr").stdout == host_before


def test_another_containers_namespace_is_not_stolen(env: Env, pod: Pod) -> None:
    before = pod.traces()
    other = subprocess.Popen(["ip", "netns", "exec", pod.pod, "sleep", "60"])
    try:
        deadline = time.monotonic() + 10
        while in_ns(pod.pod, "true").returncode != 0 or not _lives_in(other.pid, pod.path):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        ping = ("/bin/busybox", "ping", "-c", "1", "-W", "10", POD_IP)
        assert in_ns(pod.peer, *ping, check=False).returncode == 0
        bundle = env.bundle(["/bin/true"])
        # The namespace file, and the process's path (what --network container:X gives).
        for path in (pod.path, f"/proc/{other.pid}/ns/net"):
            write_spec(bundle, [{"type": "network", "path": path}])
            for verb in (["run"], ["run", "-d"]):
                r = env.run(*verb, "--bundle", str(bundle), "st1")
                err = r.stderr.decode()
                assert r.returncode == 1 and "belongs to another container" in err, err
                assert "run that container with Cocoon too" in err, err
        # Untouched: it still answers on its own network.
        assert in_ns(pod.peer, *ping, check=False).returncode == 0
    finally:
        other.kill()
        other.wait()
    assert pod.traces() == before


def _lives_in(pid: int, path: str) -> bool:
    try:
        a, b = os.stat(f"/proc/{pid}/ns/net"), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def test_internetworking_none_gives_loopback_only(env: Env, pod: Pod) -> None:
    conf = env.work / "none.toml"
    conf.write_text('[runtime]\ninternetworking_model = "none"\n')
    bundle = env.bundle(["/bin/ip", "-o", "link"])
    write_spec(bundle, [{"type": "network", "path": pod.path}])
    before = pod.traces()
    r = env.run("--config", str(conf), "run", "--bundle", str(bundle), "nn1")
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr.decode()
    assert "lo: <LOOPBACK,UP" in out and "eth0" not in out, out  # containers share lo
    assert pod.traces() == before


def test_microvm_gets_its_nic_on_the_command_line(env: Env, pod: Pod) -> None:
    """microvm has no hotplug: the tap fd is passed to QEMU at start."""
    conf = env.work / "microvm.toml"
    conf.write_text('[hypervisor.qemu]\nmachine_type = "microvm"\n')
    bundle = env.bundle(["/bin/sh", "-c", f"ip -o addr show eth0; nc -w 10 {PEER_IP} 8008"])
    write_spec(bundle, [{"type": "network", "path": pod.path}])
    before = pod.traces()
    server = subprocess.Popen(
        ["ip", "netns", "exec", pod.peer, sys.executable, "-c", ECHO_SERVER],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "up"
        r = env.run("--config", str(conf), "run", "--bundle", str(bundle), "mv1")
    finally:
        server.kill()
        server.wait()
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr.decode()
    assert f"inet {POD_IP}/24" in out and "from-peer" in out, out
    assert pod.traces() == before


def create_detached(env: Env, bundle: Path, cid: str) -> None:
    """``cocoon create`` with its output in a file: the stub keeps the stdio it is given."""
    log = env.work / "create.log"
    with open(log, "wb") as fh:
        rc = subprocess.run(
            env.argv("create", "--bundle", str(bundle), cid),
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=fh,
            timeout=180,
        ).returncode
    assert rc == 0, log.read_text()


def test_killed_service_leaves_no_dangling_redirect(env: Env, pod: Pod) -> None:
    """SIGKILL the sandbox service: QEMU and the tap die with it; delete removes the rest."""
    before = pod.traces()
    bundle = env.bundle(["/bin/sleep", "600"])
    write_spec(bundle, [{"type": "network", "path": pod.path}])
    create_detached(env, bundle, "k1")
    state = json.loads((env.root / "k1" / "state.json").read_text())
    os.kill(state["service_pid"], signal.SIGKILL)
    deadline = time.monotonic() + 20
    while "tap0_cocoon" in in_ns(pod.pod, "ip", "-o", "link").stdout:
        assert time.monotonic() < deadline, "the tap outlived QEMU"
        time.sleep(0.1)
    assert "mirred" in pod.traces()["filters"]  # dangling until cleaned
    env.run("delete", "--force", "k1")
    assert pod.traces() == before


HOOK = r"""
import json, subprocess, sys
pid = json.load(sys.stdin)["pid"]
pod, ip, gw = sys.argv[1:4]
run = lambda *a: subprocess.run(a, check=True)
run("ip", "-n", pod, "link", "set", "eth0", "netns", str(pid))
enter = ["nsenter", "-t", str(pid), "-n"]
run(*enter, "ip", "addr", "add", ip + "/24", "dev", "eth0")
run(*enter, "ip", "link", "set", "eth0", "up")
run(*enter, "ip", "route", "add", "default", "via", gw)
"""


def hooked_bundle(env: Env, pod: Pod, args: list[str]) -> Path:
    """A new network namespace that a createRuntime hook fills with the pod's eth0."""
    hook = {"path": sys.executable, "args": ["python3", "-c", HOOK, pod.pod, POD_IP, PEER_IP]}
    bundle = env.bundle(args)
    write_spec(bundle, [{"type": "network"}])
    cfg = bundle / "config.json"
    spec = json.loads(cfg.read_text())
    spec["hooks"] = {"createRuntime": [hook]}
    cfg.write_text(json.dumps(spec))
    return bundle


def test_network_a_hook_configures_after_boot(env: Env, pod: Pod) -> None:
    """docker's way: a new namespace (the stub's) that a createRuntime hook fills."""
    bundle = hooked_bundle(env, pod, ["/bin/sleep", "600"])
    create_detached(env, bundle, "hk1")
    assert env.run("start", "hk1").returncode == 0
    r = env.run("exec", "hk1", "ip", "addr", "show", "eth0")
    out = r.stdout.decode()
    assert r.returncode == 0 and f"inet {POD_IP}/24" in out and MAC in out, out
    ping = in_ns(pod.peer, "/bin/busybox", "ping", "-c", "2", "-W", "10", POD_IP, check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert env.run("delete", "--force", "hk1").returncode == 0


def test_foreground_run_hooks_never_see_the_host_namespace(env: Env, pod: Pod) -> None:
    """`cocoon run` is its own stub: the hook gets the CLI's PID, in a new namespace."""
    bundle = hooked_bundle(env, pod, ["/bin/sh", "-c", "ip addr show eth0"])
    host_before = subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True).stdout
    r = env.run("run", "--bundle", str(bundle), "fg1")
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr.decode()
    assert f"inet {POD_IP}/24" in out and MAC in out, out
    host_after = subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True).stdout
    assert host_after == host_before
