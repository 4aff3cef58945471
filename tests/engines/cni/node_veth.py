#!/usr/bin/python3
"""A CNI plugin for the tests: the pod's eth0 is a veth whose peer lives in a test
"node" namespace (named in the network config), never in the host's.

ADD: veth ``eth0`` (pod) ↔ ``v<container id[:10]>`` (node), pod address
``<prefix>.<n>/24`` (n from a counter in ``state_dir``), node side
``<prefix>.1/32`` with a /32 route to the pod, default route in the pod via
``<prefix>.1``. DEL removes the node side. Standard library and ``ip`` only.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys


def ip(*args: str, netns_path: str = "") -> None:
    argv = ["ip", *args]
    if netns_path:
        argv = ["nsenter", f"--net={netns_path}", *argv]
    subprocess.run(argv, check=True, capture_output=True)


def next_index(state_dir: str) -> int:
    os.makedirs(state_dir, exist_ok=True)
    with open(os.path.join(state_dir, "counter"), "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        n = int(fh.read() or "1") + 1
        fh.seek(0)
        fh.truncate()
        fh.write(str(n))
    return n


def main() -> int:
    conf = json.load(sys.stdin)
    cmd = os.environ["CNI_COMMAND"]
    version = conf.get("cniVersion", "0.4.0")
    if cmd == "VERSION":
        print(json.dumps({"cniVersion": version, "supportedVersions": ["0.3.1", "0.4.0"]}))
        return 0
    node, prefix = conf["node"], conf["prefix"]
    peer = "v" + os.environ["CNI_CONTAINERID"][:10]
    node_path = f"/run/netns/{node}"
    if cmd == "DEL":
        subprocess.run(["ip", "-n", node, "link", "del", peer], capture_output=True)
        return 0
    if cmd == "CHECK":
        return 0
    netns, ifname = os.environ["CNI_NETNS"], os.environ["CNI_IFNAME"]
    n = next_index(conf["state_dir"])
    addr = f"{prefix}.{n}"
    ip("link", "add", ifname, "type", "veth", "peer", "name", peer, "netns", node, netns_path=netns)
    ip("addr", "add", f"{addr}/24", "dev", ifname, netns_path=netns)
    ip("link", "set", ifname, "up", netns_path=netns)
    ip("route", "add", "default", "via", f"{prefix}.1", netns_path=netns)
    ip("addr", "add", f"{prefix}.1/32", "dev", peer, netns_path=node_path)
    ip("link", "set", peer, "up", netns_path=node_path)
    ip("route", "add", f"{addr}/32", "dev", peer, netns_path=node_path)
    result = {
        "cniVersion": version,
        "interfaces": [{"name": ifname, "sandbox": netns}],
        "ips": [
            {"version": "4", "address": f"{addr}/24", "gateway": f"{prefix}.1", "interface": 0}
        ],
        "routes": [{"dst": "0.0.0.0/0", "gw": f"{prefix}.1"}],
        "dns": {},
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as exc:
        err = (exc.stderr or b"").decode(errors="replace").strip()
        print(json.dumps({"cniVersion": "0.4.0", "code": 100, "msg": f"{exc.cmd}: {err}"}))
        sys.exit(1)
