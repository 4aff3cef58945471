"""Live migration between two simulated hosts, against the guest's size and workload.

The hosts are tests/fixtures/hosts.py's (two network namespaces joined by a veth,
each with its own Cocoon root; the pod namespace prepared alike on both; a client
namespace on the pods' bridge). In one run, for guests of 256 MiB and 1 GiB, idle
and with a loop rewriting a 64 MiB tmpfs file in the container (random bytes, 8 MiB
at a time, while it moves): ``cocoon migrate``'s wall time and the figures it prints
(QEMU's downtime, the RAM stream against the guest's RAM, the phases), the bytes on
the hosts' link, the guest's pause as the client sees it (busybox ping every 0.05 s
from the client namespace: replies lost, the longest gap between two replies), and
the destination's restore part (QEMU ready for the stream, then stream complete →
running) against a templated ``cocoon run -d`` of the same container on the source.
Prints the table and the ratios, and writes them to docs/performance.md.

Every process it starts is stopped by its PID, every sandbox deleted on its host
and every namespace it made removed by name, also on failure or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import COCOON, med, report  # noqa: E402
from tests.fixtures.bundle import make_bundle  # noqa: E402
from tests.fixtures.hosts import (  # noqa: E402
    DST_IP,
    Hosts,
    link_tx_bytes,
    on_host,
    pings,
    simulated_hosts,
    wait_listening,
)

POD_IP, PEER_IP, MAC = "10.233.0.2", "10.233.0.1", "02:cc:00:00:01:02"
PORT = 7412
INTERVAL = 0.05  # s between pings
SIZES = (256, 1024)
DIRTY_MIB, STEP = 64, 8
# /fill/n: MiB written so far (the rate), the file rewritten in place STEP MiB at a time.
DIRTY = (
    f"i=0; while :; do for s in $(seq 0 {STEP} {DIRTY_MIB - STEP}); do "
    f"dd if=/dev/urandom of=/fill/x bs=1M count={STEP} seek=$s conv=notrunc 2>/dev/null; "
    f"i=$((i+{STEP})); echo $i > /fill/n; done; done"
)
IDLE = "exec sleep 3600"


class Pinger:
    """busybox ping from the client namespace; each reply's arrival time."""

    def __init__(self, client: str) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", client, "busybox", "ping", "-i", str(INTERVAL), POD_IP],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line))

    def stop(self) -> tuple[int, int, int, float]:
        """(sent, received, longest run lost, longest seconds between two replies)."""
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(30)
        self._reader.join(10)
        sent, received, lost_run = pings("".join(line for _, line in self.lines))
        stamps = [t for t, line in self.lines if "seq=" in line]
        gap = max((b - a for a, b in itertools.pairwise(stamps)), default=0.0)
        return sent, received, lost_run, gap

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Bench:
    def __init__(self, work: Path, h: Hosts) -> None:
        self.work, self.h = work, h
        self.roots = {h.a: work / "ra", h.b: work / "rb"}
        self.procs: list[subprocess.Popen[bytes]] = []
        self.pinger: Pinger | None = None
        self.templated: set[int] = set()
        self.calls = 0

    def cli(
        self, ns: str, env: dict[str, str], *args: str, timeout: float = 900
    ) -> tuple[float, str]:
        """``cocoon`` on host ``ns``: (wall seconds, stdout); SystemExit on failure. A
        detaching verb's stub keeps stdout and stderr: files, not pipes."""
        self.calls += 1
        log, out = self.work / f"cli{self.calls}.log", self.work / f"cli{self.calls}.out"
        t0 = time.monotonic()
        with open(log, "wb") as err, open(out, "wb") as stdout:
            r = subprocess.run(
                on_host(ns, [*COCOON, "--root", str(self.roots[ns]), *args]),
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=err,
                env={**os.environ, **env},
                timeout=timeout,
            )
        took = time.monotonic() - t0
        if r.returncode != 0:
            raise SystemExit(f"cocoon {' '.join(args)} failed: {log.read_text().strip()}")
        return took, out.read_text()

    def spawn(self, ns: str, env: dict[str, str], *args: str, log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            p = subprocess.Popen(
                on_host(ns, [*COCOON, "--root", str(self.roots[ns]), *args]),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env={**os.environ, **env},
            )
        self.procs.append(p)
        return p

    def written(self, ns: str, env: dict[str, str], cid: str) -> int:
        """MiB the dirtying loop has written so far."""
        _, out = self.cli(
            ns, env, "exec", cid, "/bin/sh", "-c", "cat /fill/n 2>/dev/null || echo 0"
        )
        return int(out.strip() or 0)

    def one(self, mem: int, dirty: bool, run: int, bundles: dict[str, Path]) -> dict[str, float]:
        h = self.h
        env = {
            "COCOON_ROOTFS_MODE": "block",
            "COCOON_MEMORY_MIB": str(mem),
            "COCOON_TEMPLATE_PATH": str(self.work / "templates"),
        }
        kind = "dirty" if dirty else "idle"
        src, dst = bundles[f"a-{kind}"], bundles[f"b-{kind}"]
        cid = f"m{mem}{kind[0]}{run}"
        out: dict[str, float] = {}
        if mem not in self.templated:  # the first start makes the template
            self.cli(h.a, env, "run", "-d", "--bundle", str(src), cid)
            self.cli(h.a, env, "delete", "--force", cid)
            self.templated.add(mem)
        out["start"], _ = self.cli(h.a, env, "run", "-d", "--bundle", str(src), cid)
        if dirty:  # the file complete once, then the rate over a few seconds
            deadline = time.monotonic() + 300
            while (w0 := self.written(h.a, env, cid)) < DIRTY_MIB:
                if time.monotonic() > deadline:
                    raise SystemExit(f"the dirtying loop wrote {w0} MiB in 300 s")
                time.sleep(1)
            t_w0 = time.monotonic()
        else:
            time.sleep(3)
        dest = self.spawn(h.b, env, "restore", "--listen", f"{DST_IP}:{PORT}", "--bundle",
                          str(dst), "-d", cid, log=self.work / f"dest-{cid}.log")  # fmt: skip
        wait_listening(h.b, PORT)
        self.pinger = Pinger(h.client)
        time.sleep(2)
        if dirty:
            w1 = self.written(h.a, env, cid)
            out["rate"] = (w1 - w0) / (time.monotonic() - t_w0)
        tx0 = link_tx_bytes(h.a)
        out["total"], text = self.cli(h.a, env, "migrate", cid, "--to", f"{DST_IP}:{PORT}")
        out["link"] = (link_tx_bytes(h.a) - tx0) / (1 << 20)
        if dest.wait(120) != 0:
            raise SystemExit(
                f"the destination failed: {(self.work / f'dest-{cid}.log').read_text()}"
            )
        time.sleep(2)
        sent, received, lost_run, gap = self.pinger.stop()
        self.pinger = None
        stats: dict[str, Any] = json.loads(text.strip().splitlines()[-1])
        if dirty and self.written(h.b, env, cid) <= w1:
            raise SystemExit("the dirtying loop did not go on at the destination")
        if (self.roots[h.a] / cid).exists():
            raise SystemExit("the source kept the sandbox's state")
        self.cli(h.b, env, "delete", "--force", cid)
        out.update(
            sent=sent,
            lost=sent - received,
            lost_run=lost_run,
            gap=gap,
            downtime=stats["qemu_downtime_ms"],
            passes=stats["dirty_sync_count"],
            ram_sent=stats["ram_transferred"] / (1 << 20),
            ram_total=stats["ram_total"] / (1 << 20),
            disk=stats["disk_bytes"] / (1 << 20),
            service=stats["total_s"],
            header=stats["header_s"],
            dest_ready=stats["destination_ready_s"] - stats["header_s"],
            mirror=stats["mirror_ready_s"],
            precopy=stats["migrate_s"],
            handover=stats["handover_s"],
        )
        out["restore"] = out["dest_ready"] + out["handover"]
        return out

    def cleanup(self) -> None:
        """Every process started here by its PID; every sandbox on its host; then
        anything still naming the work dir (only this bench's processes do)."""
        if self.pinger is not None:
            self.pinger.kill()
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        from cocoon.service.launch import force_cleanup
        from cocoon.service.persist import SandboxPaths

        for ns, root in self.roots.items():
            for d in sorted(root.iterdir()) if root.exists() else []:
                if d.name == ".locks":
                    continue
                with contextlib.suppress(subprocess.SubprocessError, OSError):
                    subprocess.run(
                        on_host(ns, [*COCOON, "--root", str(root), "delete", "--force", d.name]),
                        capture_output=True,
                        timeout=120,
                    )
                force_cleanup(SandboxPaths(root, d.name))
        marker = str(self.work).encode()
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if marker in cmd:
                print(f"migrate bench: stopping leftover {pid}", file=sys.stderr)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)


def bundles(work: Path, h: Hosts) -> dict[str, Path]:
    """For each host (its pod namespace) and workload, a bundle with a /fill tmpfs."""
    out = {}
    for host, pod in (("a", h.pod_a), ("b", h.pod_b)):
        for kind, script in (("idle", IDLE), ("dirty", DIRTY)):
            b = make_bundle(work / f"bundle-{host}-{kind}", ["/bin/sh", "-c", script])
            spec = json.loads((b / "config.json").read_text())
            spec["mounts"].append(
                {"destination": "/fill", "type": "tmpfs", "source": "tmpfs",
                 "options": [f"size={DIRTY_MIB * 2}m"]}
            )  # fmt: skip
            namespaces = [n for n in spec["linux"]["namespaces"] if n["type"] != "network"]
            spec["linux"]["namespaces"] = [
                *namespaces, {"type": "network", "path": f"/run/netns/{pod}"}
            ]  # fmt: skip
            (b / "config.json").write_text(json.dumps(spec))
            out[f"{host}-{kind}"] = b
    return out


def rows_for(results: dict[tuple[int, bool], dict[str, list[float]]]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for (mem, dirty), out in results.items():
        m = {k: med(v) for k, v in out.items()}
        load = f"rewriting {DIRTY_MIB} MiB at {m['rate']:.0f} MiB/s" if dirty else "idle"
        tag = f"{mem} MiB guest, {load}"
        rows += [
            (
                f"{tag}: `cocoon migrate`",
                f"{m['total']:.2f} s (service {m['service']:.2f}: rootfs image "
                f"{m['header']:.2f}, destination ready +{m['dest_ready']:.2f}, scratch mirror "
                f"{m['mirror']:.2f}, RAM pre-copy {m['precopy']:.2f}, handover "
                f"{m['handover']:.2f})",
            ),
            (f"{tag}: QEMU downtime", f"{m['downtime']:.0f} ms ({m['passes']:.0f} passes)"),
            (
                f"{tag}: pause seen by the client",
                f"{m['lost']:.0f} of {m['sent']:.0f} pings lost ({INTERVAL} s apart, at most "
                f"{m['lost_run']:.0f} in a row); longest gap between replies {m['gap']:.2f} s",
            ),
            (
                f"{tag}: RAM stream / guest RAM",
                f"{m['ram_sent']:.0f} / {m['ram_total']:.0f} MiB = "
                f"{m['ram_sent'] / m['ram_total']:.2f} (all on the link: {m['link']:.0f} MiB)",
            ),
            (
                f"{tag}: restore on the destination",
                f"{m['restore']:.2f} s (QEMU ready for the stream {m['dest_ready']:.2f} + "
                f"stream complete → running {m['handover']:.2f})",
            ),
            (f"{tag}: templated run -d of the same", f"{m['start']:.2f} s"),
            (f"{tag}: ratio restore / templated start", f"{m['restore'] / m['start']:.2f}"),
            (
                f"{tag}: ratio client's longest gap / QEMU downtime",
                f"{m['gap'] / (m['downtime'] / 1000):.1f}" if m["downtime"] else "n/a",
            ),
        ]
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--no-write", action="store_true", help="do not update docs/performance.md")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the finally blocks run
    work = Path(tempfile.mkdtemp(prefix="cocoon-bench-mig-", dir="/tmp"))
    results: dict[tuple[int, bool], dict[str, list[float]]] = {}
    try:
        with simulated_hosts("bm", POD_IP, PEER_IP, MAC) as h:
            bench = Bench(work, h)
            try:
                b = bundles(work, h)
                for i in range(args.runs):
                    for mem in SIZES:
                        for dirty in (False, True):
                            one = bench.one(mem, dirty, i, b)
                            acc = results.setdefault((mem, dirty), {})
                            for k, v in one.items():
                                acc.setdefault(k, []).append(v)
                            print(f"run {i} {mem} MiB {'dirty' if dirty else 'idle'}: {one}",
                                  file=sys.stderr, flush=True)  # fmt: skip
            finally:
                bench.cleanup()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(rows_for(results), args.runs, "migrate", not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
