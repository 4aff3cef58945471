"""Bind-volume I/O: runc against Cocoon over 9p and over virtio-fs, on the same host dir.

Inside the container, on a bind of a fresh host directory: a sequential write
of 256 MiB (``dd ... conv=fsync``), reading it back (warm: the host's page cache
holds it, for every runtime alike), creating 10,000 small files and reading
them all. Timed inside the container from ``/proc/uptime`` (10 ms steps), so VM
boot and CLI costs are left out. Under TCG the guest's CPU is emulated: the
shell loop that creates the files costs far more in the guest than the
filesystem does, and the ratios say so. Prints a table, writes docs/performance.md.
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
from tests.fixtures.bundle import make_bundle, make_rootfs  # noqa: E402

COCOON = str(ROOT / ".venv" / "bin" / "cocoon")
RUNC = "/usr/bin/runc"
PHASES = ("write", "read", "create", "read small")
SCRIPT = (
    "t() { cut -d' ' -f1 /proc/uptime; }; a=$(t); "
    "dd if=/dev/zero of=/v/big bs=1M count={mib} conv=fsync 2>/dev/null; b=$(t); "
    "dd if=/v/big of=/dev/null bs=1M 2>/dev/null; c=$(t); mkdir /v/s; i=0; "
    "while [ $i -lt {files} ]; do echo $i > /v/s/$i; i=$((i+1)); done; d=$(t); "
    "cat /v/s/* > /dev/null; e=$(t); echo $a $b $c $d $e"
)


def one_run(name: str, base: Path, rootfs: Path, mib: int, files: int, n: int) -> list[float]:
    """Seconds of each phase, for runtime ``name`` ("runc", "9p", "virtio-fs")."""
    work = base / f"{name}-{n}"
    vol = work / "vol"
    vol.mkdir(parents=True)
    script = SCRIPT.replace("{mib}", str(mib)).replace("{files}", str(files))
    b = make_bundle(work / "b", ["/bin/sh", "-c", script], rootfs=rootfs)
    spec = json.loads((b / "config.json").read_text())
    spec["mounts"].append(
        {"destination": "/v", "type": "bind", "source": str(vol), "options": ["rbind"]}
    )
    (b / "config.json").write_text(json.dumps(spec))
    env = dict(os.environ)
    if name == "runc":
        argv = [RUNC, "--root", str(work / "root"), "run", "--bundle", str(b), f"bv{n}"]
    else:
        env["COCOON_SHARED_FS"] = "virtiofs" if name == "virtio-fs" else "9p"
        argv = [COCOON, "--root", str(work / "root"), "run", "--bundle", str(b), f"bv{n}"]
    try:
        p = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=1800
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if p.returncode != 0:
        raise SystemExit(f"{name}: exit {p.returncode}: {p.stderr.strip()[-400:]}")
    t = [float(x) for x in p.stdout.split()[-5:]]
    return [t[i + 1] - t[i] for i in range(4)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--no-write", action="store_true", help="do not update docs/performance.md")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bv-", dir="/tmp"))
    results: dict[str, list[float]] = {}
    try:
        rootfs = make_rootfs(base / "rootfs")
        for name in ("runc", "9p", "virtio-fs"):
            runs = [one_run(name, base, rootfs, args.mib, args.files, n) for n in range(args.runs)]
            results[name] = [statistics.median(r[i] for r in runs) for i in range(4)]
            print(name, " ".join(f"{x:.2f}" for x in results[name]), flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    labels = [
        f"sequential write {args.mib} MiB",
        f"sequential read {args.mib} MiB (warm)",
        f"create {args.files} small files",
        f"read {args.files} small files",
    ]
    rows = [
        "| bind volume | runc | Cocoon 9p | ratio | Cocoon virtio-fs | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for i, label in enumerate(labels):
        r, p9, vf = results["runc"][i], results["9p"][i], results["virtio-fs"][i]
        rows.append(
            f"| {label} | {r:.2f} s | {p9:.2f} s | {p9 / max(r, 0.01):.1f}x "
            f"| {vf:.2f} s | {vf / max(r, 0.01):.1f}x |"
        )
    table = "\n".join(rows)
    print(table)
    if not args.no_write:
        write_block("volumes", table, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
