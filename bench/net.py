"""Pod network benchmark: the container in the VM against runc in the same namespace.

A test "pod" namespace holds a veth whose peer is in a test "node" namespace.
The same busybox bundle (an echo server and a sink on TCP, busybox ``nc``) runs
once under Cocoon (the veth carried into the VM: tap + tc mirred + virtio-net)
and once under runc (the container joins the pod namespace directly). From the
node namespace a client measures the TCP round trip (1-byte messages on one
connection) and the throughput (bytes into the sink). Every packet stays in the
two namespaces, which are deleted at the end.

Writes the table and the ratios to docs/performance.md (block ``net``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import write_block  # noqa: E402
from tests.fixtures.bundle import make_bundle  # noqa: E402

COCOON = [sys.executable, "-m", "cocoon.cli.main"]
POD_IP, NODE_IP = "10.233.0.2", "10.233.0.1"
SERVERS = "nc -ll -p 7007 -e /bin/cat & nc -ll -p 7008 -e /bin/sink & exec sleep 3600"

CLIENT = r"""
import json, socket, sys, time
ip, rounds, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
deadline = time.monotonic() + 120
while True:
    try:
        c = socket.create_connection((ip, 7007), timeout=30)
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.sendall(b"x"); assert c.recv(1) == b"x"
        break
    except OSError:
        if time.monotonic() > deadline: raise
        time.sleep(0.3)
rtts = []
for _ in range(rounds):
    t = time.perf_counter(); c.sendall(b"x"); c.recv(1); rtts.append(time.perf_counter() - t)
c.close()
s = socket.create_connection((ip, 7008), timeout=60)
chunk = b"\0" * 65536
t = time.perf_counter(); sent = 0
while sent < size:
    s.sendall(chunk); sent += len(chunk)
s.shutdown(socket.SHUT_WR)
while s.recv(65536): pass
elapsed = time.perf_counter() - t
rtts.sort()
print(json.dumps({"rtt_ms": 1000 * rtts[len(rtts) // 2], "mbit_s": sent * 8 / elapsed / 1e6}))
"""


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def setup_namespaces(pod: str, node: str) -> None:
    sh("ip", "netns", "add", pod)
    sh("ip", "netns", "add", node)
    sh("ip", "-n", pod, "link", "add", "eth0", "type", "veth", "peer", "name", "veth-pod",
       "netns", node)  # fmt: skip
    sh("ip", "-n", pod, "link", "set", "lo", "up")
    sh("ip", "-n", pod, "link", "set", "eth0", "up")
    sh("ip", "-n", pod, "addr", "add", f"{POD_IP}/24", "dev", "eth0")
    sh("ip", "-n", node, "link", "set", "veth-pod", "up")
    sh("ip", "-n", node, "addr", "add", f"{NODE_IP}/24", "dev", "veth-pod")


def bundle(work: Path, pod: str) -> Path:
    b = make_bundle(work / "bundle", ["/bin/sh", "-c", SERVERS])
    sink = b / "rootfs" / "bin" / "sink"
    sink.write_text("#!/bin/sh\nexec cat >/dev/null\n")
    sink.chmod(0o755)
    cfg = b / "config.json"
    spec = json.loads(cfg.read_text())
    ns = [x for x in spec["linux"]["namespaces"] if x["type"] != "network"]
    spec["linux"]["namespaces"] = [*ns, {"type": "network", "path": f"/run/netns/{pod}"}]
    cfg.write_text(json.dumps(spec))
    return b


def client(node: str, rounds: int, size: int) -> dict[str, float]:
    out = subprocess.run(
        ["ip", "netns", "exec", node, sys.executable, "-c", CLIENT, POD_IP, str(rounds), str(size)],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout
    result: dict[str, float] = json.loads(out)
    return result


def measure_cocoon(work: Path, b: Path, node: str, rounds: int, size: int) -> dict[str, float]:
    root = work / "r"
    cid = f"bn{os.getpid()}"
    base = [*COCOON, "--root", str(root)]
    with open(work / "cocoon.log", "wb") as log:
        subprocess.run(
            [*base, "run", "--detach", "--bundle", str(b), cid],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            timeout=300,
        )
    try:
        return client(node, rounds, size)
    finally:
        subprocess.run([*base, "delete", "--force", cid], capture_output=True, timeout=120)


def measure_runc(work: Path, b: Path, node: str, rounds: int, size: int) -> dict[str, float]:
    root = work / "runc"
    cid = f"bnr{os.getpid()}"
    base = ["runc", "--root", str(root)]
    subprocess.run(
        [*base, "run", "--detach", "--bundle", str(b), cid],
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=60,
    )
    try:
        return client(node, rounds, size)
    finally:
        subprocess.run([*base, "delete", "--force", cid], capture_output=True, timeout=60)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=200, help="round trips per run")
    ap.add_argument("--mib", type=int, default=32, help="MiB sent per throughput run")
    ap.add_argument("--no-write", action="store_true", help="do not update docs/performance.md")
    args = ap.parse_args()
    pod, node = f"bn-pod-{os.getpid()}", f"bn-node-{os.getpid()}"
    work = Path(tempfile.mkdtemp(prefix="cocoon-bnet-", dir="/tmp"))
    size = args.mib << 20
    try:
        setup_namespaces(pod, node)
        b = bundle(work, pod)
        ours = [measure_cocoon(work, b, node, args.rounds, size) for _ in range(args.runs)]
        runc = [measure_runc(work, b, node, args.rounds, size) for _ in range(args.runs)]
    finally:
        subprocess.run(["ip", "netns", "del", pod], capture_output=True)
        subprocess.run(["ip", "netns", "del", node], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)

    def med(results: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in results)

    rtt, rtt_r = med(ours, "rtt_ms"), med(runc, "rtt_ms")
    bw, bw_r = med(ours, "mbit_s"), med(runc, "mbit_s")
    table = "\n".join(
        [
            "| from the node namespace to the container | cocoon (VM, TCG) | runc | ratio |",
            "|---|---|---|---|",
            f"| TCP round trip, 1 byte (median of {args.rounds}) | {rtt:.3f} ms | {rtt_r:.3f} ms "
            f"| {rtt / rtt_r:.1f}x |",
            f"| TCP throughput into a sink ({args.mib} MiB) | {bw:.0f} Mbit/s | {bw_r:.0f} Mbit/s "
            f"| {bw_r / bw:.1f}x slower |",
        ]
    )
    print(table)
    if not args.no_write:
        write_block("net", table, args.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
