"""podman with its own CNI bridge network, the container's traffic in the VM (or in runc).

podman runs inside a test "node" namespace (``nsenter --net``, which unlike
``ip netns exec`` keeps the host's /sys and so its cgroups): the CNI bridge,
the veths and the pod namespaces all live below it, and every packet stays in
namespaces this test creates. The host's interfaces are compared before/after.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.engines.conftest import Podman, check, describe, run

IMG = "localhost/busybox:latest"
SUBNET = "10.232.0"
GATEWAY = f"{SUBNET}.1"
CNI_STATE = Path("/var/lib/cni/networks")

SERVER = (
    "import socket\n"
    "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    f"s.bind(('{GATEWAY}', 8008)); s.listen(); print('up', flush=True)\n"
    "while True:\n"
    "    c,_=s.accept(); c.sendall(b'from-node\\n'); c.close()\n"
)


def echo_client(ip: str) -> str:
    return (
        "import socket,sys\n"
        f"c=socket.create_connection(('{ip}', 7007), timeout=20)\n"
        "c.sendall(b'hello-pod\\n'); data=b''\n"
        "while not data.endswith(b'\\n'): data+=c.recv(100) or b'\\n'\n"
        "print(data.decode().strip())\n"
    )


class NodePodman:
    """The podman fixture's instance, run inside the node namespace, on network ``net``."""

    def __init__(self, podman: Podman, node: str, net: str) -> None:
        self.podman = podman
        self.node = node
        self.net = net

    def __call__(self, *args: str, runtime: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = [
            "nsenter",
            f"--net=/run/netns/{self.node}",
            *self.podman.argv(*args, runtime=runtime),
        ]
        return run(argv, env=self.podman.env)

    def in_node(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return run(["ip", "netns", "exec", self.node, *argv], timeout=60)


@pytest.fixture
def node_podman(podman: Podman) -> Iterator[NodePodman]:
    n = os.getpid()
    node, net = f"ccpm-node-{n}", f"ccnet{n}"
    conflist = podman.base / "net" / f"{net}.conflist"
    conflist.write_text(
        json.dumps(
            {
                "cniVersion": "0.4.0",
                "name": net,
                "plugins": [
                    {
                        "type": "bridge",
                        "bridge": "ccbr0",
                        "isGateway": True,
                        "ipMasq": False,
                        "ipam": {
                            "type": "host-local",
                            "routes": [{"dst": "0.0.0.0/0"}],
                            "ranges": [[{"subnet": f"{SUBNET}.0/24", "gateway": GATEWAY}]],
                        },
                    }
                ],
            }
        )
    )
    check(run(["ip", "netns", "add", node]))
    try:
        check(run(["ip", "-n", node, "link", "set", "lo", "up"]))
        yield NodePodman(podman, node, net)
    finally:
        run(["ip", "netns", "del", node])
        conflist.unlink(missing_ok=True)
        shutil.rmtree(CNI_STATE / net, ignore_errors=True)


def test_container_on_a_cni_bridge(
    node_podman: NodePodman, runtime: str, cname: Callable[[], str]
) -> None:
    host_before = run(["ip", "-j", "addr"]).stdout
    pm = node_podman
    name = cname()
    server = None
    try:
        # The server binds the bridge's address, which exists once a container is up.
        script = "nc -ll -p 7007 -e /bin/cat & exec sleep 1000"
        check(pm("run", "-d", "--network", pm.net, "--name", name, IMG, "sh", "-c", script,
                 runtime=runtime))  # fmt: skip
        fmt = '{{(index .NetworkSettings.Networks "' + pm.net + '").IPAddress}}'
        ip = check(pm("inspect", "--format", fmt, name)).stdout.strip()
        assert ip.startswith(SUBNET + "."), ip
        server = subprocess.Popen(
            ["ip", "netns", "exec", pm.node, sys.executable, "-c", SERVER],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None and server.stdout.readline().strip() == "up"
        p = check(pm("exec", name, "ip", "-o", "addr", "show", "eth0", runtime=runtime))
        assert f"inet {ip}/24" in p.stdout, describe(p)
        p = pm.in_node("/bin/busybox", "ping", "-c", "2", "-W", "10", ip)
        assert p.returncode == 0, describe(p)
        deadline = time.monotonic() + 30
        while True:
            p = pm.in_node(sys.executable, "-c", echo_client(ip))
            if p.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert p.stdout.strip() == "hello-pod", describe(p)
        p = pm("exec", name, "nc", "-w", "10", GATEWAY, "8008", runtime=runtime)
        assert p.stdout.strip() == "from-node", describe(p)
        check(pm("rm", "-f", "-t", "0", name, runtime=runtime))
    finally:
        if server is not None:
            server.kill()
            server.wait()
        pm("rm", "-f", "-t", "0", name)
    assert run(["ip", "-j", "addr"]).stdout == host_before
