"""Rootfs I/O in the container: the block rootfs, 9p, virtio-fs against runc, in one run.

Sequential write of 256 MiB (dd, fsync), sequential read of 256 MiB the bundle
already holds (host page cache dropped first, so every mode reads from its
backing store), creating 10,000 small files and reading them back; then the
create-time cost of the block rootfs (the erofs build) against rootfs size.
Times are taken inside the container (/proc/uptime, 10 ms), so the CLI's
start-up is not in them. Prints a table of seconds and ratios to runc, and
writes it to docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import write_block  # noqa: E402
from tests.fixtures.bundle import make_bundle  # noqa: E402

COCOON = str(ROOT / ".venv" / "bin" / "cocoon")
PHASES = ("write 256 MiB", "read 256 MiB", "create 10k files", "read 10k files")
SCRIPT = r"""
t() { read u _ < /proc/uptime; echo $u; }
a=$(t); dd if=/dev/zero of=/w.bin bs=1M count=256 conv=fsync 2>/dev/null; b=$(t)
cat /r.bin > /dev/null; c=$(t)
mkdir /sf; i=0; while [ $i -lt 10000 ]; do echo x > /sf/$i; i=$((i+1)); done; sync; d=$(t)
cat /sf/* > /dev/null; e=$(t)
echo "RESULT $a $b $c $d $e"
"""
MODES = {
    "runc": ([], {}),
    "cocoon 9p": ([COCOON], {"COCOON_ROOTFS_MODE": "share", "COCOON_SHARED_FS": "9p"}),
    "cocoon virtio-fs": ([COCOON], {"COCOON_ROOTFS_MODE": "share", "COCOON_SHARED_FS": "virtiofs"}),
    "cocoon block": ([COCOON], {"COCOON_ROOTFS_MODE": "block", "COCOON_SHARED_FS": "9p"}),
}


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def bundle(dest: Path, args: list[str], payload_mib: int = 0) -> Path:
    b = make_bundle(dest, args)
    spec = json.loads((b / "config.json").read_text())
    spec["root"]["readonly"] = False
    (b / "config.json").write_text(json.dumps(spec))
    if payload_mib:
        with open(b / "rootfs" / "r.bin", "wb") as fh:
            for _ in range(payload_mib):
                fh.write(os.urandom(1 << 20))
    return b


def run_io(mode: str, work: Path) -> list[float]:
    rt, env = MODES[mode]
    b = bundle(work / mode.replace(" ", "-"), ["/bin/sh", "-c", SCRIPT], 256)
    argv = ["runc"] if not rt else [*rt, "--root", str(work / "state")]
    drop_caches()
    p = subprocess.run(
        [*argv, "run", "--bundle", str(b), f"bench-{os.getpid()}"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env={**os.environ, "COCOON_MEMORY_MIB": "512", **env},
        timeout=1800,
    )
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not line:
        raise SystemExit(f"{mode}: failed ({p.returncode}): {p.stderr.strip()[-300:]}")
    t = [float(x) for x in line[0].split()[1:]]
    return [t[i + 1] - t[i] for i in range(4)]


def fill(root: Path, mib: int) -> None:
    """``mib`` MiB of incompressible 1 MiB files under ``root``."""
    d = root / "payload"
    d.mkdir(parents=True)
    for i in range(mib):
        (d / f"{i}.bin").write_bytes(os.urandom(1 << 20))


def create_costs(work: Path, sizes: list[int]) -> list[tuple[int, float, float, float]]:
    """(MiB, mkfs.erofs s, `run /bin/true` share s, block s) per rootfs size."""
    out = []
    for mib in sizes:
        b = bundle(work / f"size{mib}", ["/bin/true"])
        fill(b / "rootfs", mib)
        img = work / f"size{mib}.erofs"
        t0 = time.monotonic()
        subprocess.run(
            ["mkfs.erofs", "--quiet", "--preserve-mtime", str(img), str(b / "rootfs")], check=True
        )
        mkfs = time.monotonic() - t0
        img.unlink()
        runs = []
        for mode in ("share", "block"):
            t0 = time.monotonic()
            subprocess.run(
                [COCOON, "--root", str(work / "state"), "run", "--bundle", str(b), f"sz-{mib}"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                check=True,
                env={**os.environ, "COCOON_ROOTFS_MODE": mode},
                timeout=600,
            )
            runs.append(time.monotonic() - t0)
        out.append((mib, mkfs, runs[0], runs[1]))
        shutil.rmtree(b)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--sizes", default="10,100,500", help="rootfs MiB for the create cost")
    ap.add_argument("--no-write", action="store_true", help="do not update docs/performance.md")
    args = ap.parse_args()
    modes = args.modes.split(",")
    work = Path(tempfile.mkdtemp(prefix="cc-bst-", dir="/tmp"))
    try:
        results = {m: run_io(m, work) for m in modes}
        sizes = create_costs(work, [int(s) for s in args.sizes.split(",") if s])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = results.get("runc")
    head = "| rootfs | " + " | ".join(PHASES) + " |"
    lines = [head, "|" + "---|" * (len(PHASES) + 1)]
    for m, t in results.items():
        cells = [
            f"{v:.2f} s" + (f" ({v / base[i]:.1f}x)" if base and m != "runc" and base[i] else "")
            for i, v in enumerate(t)
        ]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| rootfs size | mkfs.erofs | `cocoon run /bin/true`, share | same, block |",
        "|---|---|---|---|",
    ]
    lines += [f"| {mib} MiB | {mk:.2f} s | {sh:.2f} s | {bl:.2f} s |" for mib, mk, sh, bl in sizes]
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        write_block("storage", table, 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
