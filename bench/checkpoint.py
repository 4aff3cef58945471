"""Checkpoint and restore against guest memory size and how much of it is dirty.

In one run, for guests of 256 MiB and 1 GiB with 10 % and 80 % of their free
RAM (MemAvailable after the start; the kernel and agent hold the rest) filled
with random bytes (a tmpfs in the container, so the pages are really in use and
incompressible): ``cocoon checkpoint`` time and image size, ``cocoon
restore -d`` time, and, as the yardstick, ``cocoon run -d`` of the same
container from a VM template. Prints the table and the ratios, and writes them
to docs/performance.md.
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

from bench.run import COCOON, med, report  # noqa: E402
from tests.fixtures.bundle import make_bundle  # noqa: E402

SHAPES = ((256, 0.1), (256, 0.8), (1024, 0.1), (1024, 0.8))


def cocoon(root: Path, env: dict[str, str], *args: str) -> float:
    """Run the CLI (its stub keeps any stdio: none is captured); the wall time."""
    log = root.parent / "cli.log"
    t0 = time.monotonic()
    with open(log, "wb") as err:  # a file: a detached stub keeps it open
        r = subprocess.run(
            [*COCOON, "--root", str(root), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={**os.environ, **env},
            timeout=900,
        )
    if r.returncode != 0:
        raise SystemExit(f"cocoon {' '.join(args)} failed: {log.read_text().strip()}")
    return time.monotonic() - t0


def available_mib(root: Path, cid: str) -> int:
    """The guest's MemAvailable: what a fill can take without the OOM killer."""
    r = subprocess.run(
        [*COCOON, "--root", str(root), "exec", cid, "/bin/cat", "/proc/meminfo"],
        capture_output=True, timeout=120,
    )  # fmt: skip
    for line in r.stdout.decode().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    raise SystemExit("no MemAvailable in the guest")


def fill(root: Path, cid: str, mib: int) -> None:
    r = subprocess.run(
        [*COCOON, "--root", str(root), "exec", cid, "/bin/sh", "-c",
         f"dd if=/dev/urandom of=/fill/x bs=1M count={mib} 2>&1 | tail -1"],
        capture_output=True, timeout=900,
    )  # fmt: skip
    if r.returncode != 0:
        raise SystemExit(f"filling {mib} MiB failed: {r.stderr.decode().strip()}")


def du(path: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--no-write", action="store_true", help="do not update docs/performance.md")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cocoon-bench-ck-", dir="/tmp"))
    root = work / "r"
    rows: list[tuple[str, str]] = []
    try:
        bundle = make_bundle(work / "b", ["/bin/sleep", "3600"])
        spec = json.loads((bundle / "config.json").read_text())
        spec["mounts"].append(
            {"destination": "/fill", "type": "tmpfs", "source": "tmpfs", "options": ["size=2g"]}
        )
        (bundle / "config.json").write_text(json.dumps(spec))
        results: dict[tuple[int, float], dict[str, list[float]]] = {}
        for i in range(args.runs):
            for mem, dirty in SHAPES:
                env = {
                    "COCOON_ROOTFS_MODE": "block",
                    "COCOON_MEMORY_MIB": str(mem),
                    "COCOON_TEMPLATE_PATH": str(work / "templates"),
                }
                out = results.setdefault((mem, dirty), {})
                cid = f"c{mem}-{int(dirty * 100)}-{i}"
                image = work / f"img-{cid}"
                cocoon(root, env, "run", "-d", "--bundle", str(bundle), cid)  # makes the template
                cocoon(root, env, "delete", "--force", cid)
                out.setdefault("start", []).append(
                    cocoon(root, env, "run", "-d", "--bundle", str(bundle), cid)
                )
                avail = available_mib(root, cid)
                out.setdefault("filled", []).append(int(avail * dirty))
                fill(root, cid, int(avail * dirty))
                out.setdefault("checkpoint", []).append(
                    cocoon(root, env, "checkpoint", "--image-path", str(image), cid)
                )
                out.setdefault("size", []).append(du(image) / (1 << 20))
                cocoon(root, env, "delete", cid)
                out.setdefault("restore", []).append(
                    cocoon(root, env, "restore", "--image-path", str(image),
                           "--bundle", str(bundle), "-d", cid)
                )  # fmt: skip
                cocoon(root, env, "delete", "--force", cid)
                shutil.rmtree(image)
                print(f"run {i} {mem} MiB {dirty:.0%}: {out}", file=sys.stderr, flush=True)
        for (mem, dirty), out in results.items():
            tag = f"{mem} MiB guest, {med(out['filled']):.0f} MiB dirty ({dirty:.0%} of free)"
            ck, rs, st, size = (med(out[k]) for k in ("checkpoint", "restore", "start", "size"))
            rows += [
                (f"{tag}: checkpoint", f"{ck:.2f} s"),
                (f"{tag}: image size", f"{size:.0f} MiB ({size / mem:.2f} of guest RAM)"),
                (f"{tag}: restore -d", f"{rs:.2f} s"),
                (f"{tag}: templated run -d of the same", f"{st:.2f} s"),
                (f"{tag}: ratio restore / templated start", f"{rs / st:.2f}"),
            ]
    finally:
        for d in root.iterdir() if root.exists() else []:
            if d.name != ".locks":
                subprocess.run(
                    [*COCOON, "--root", str(root), "delete", "--force", d.name],
                    capture_output=True,
                    timeout=120,
                )
        shutil.rmtree(work, ignore_errors=True)
    report(rows, args.runs, "checkpoint", not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
