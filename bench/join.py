"""The Nth container into an existing VM against a new sandbox, in one run.

For N = 2 and 3: ``run -d`` of a container whose spec names the first one's
network and IPC namespaces (it joins that VM, as a podman pod member does)
against ``run -d`` of the same container in a sandbox of its own; and the host
PSS (and USS, private pages) each extra member adds (QEMU + service + stubs of
the shared sandbox) against a new sandbox's whole. Prints medians and ratios,
writes docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import pss_kib, write_block  # noqa: E402
from tests.fixtures.bundle import make_bundle, make_rootfs  # noqa: E402

COCOON = str(ROOT / ".venv" / "bin" / "cocoon")


def cocoon(root: Path, *args: str) -> None:
    # No pipes: the stub keeps the container's stdio (ours) for as long as it runs.
    subprocess.run(
        [COCOON, "--root", str(root), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
        timeout=300,
    )


def state(root: Path, cid: str) -> dict[str, object]:
    data: dict[str, object] = json.loads((root / cid / "state.json").read_text())
    return data


def run_d(root: Path, bundle: Path, cid: str) -> float:
    t0 = time.monotonic()
    cocoon(root, "run", "-d", "--bundle", str(bundle), cid)
    return time.monotonic() - t0


def joiner(work: Path, rootfs: Path, name: str, owner_pid: int) -> Path:
    b = make_bundle(work / name, ["/bin/sleep", "600"], rootfs=rootfs)
    spec = json.loads((b / "config.json").read_text())
    keep = [n for n in spec["linux"]["namespaces"] if n["type"] not in ("network", "ipc")]
    spec["linux"]["namespaces"] = [
        *keep,
        {"type": "network", "path": f"/proc/{owner_pid}/ns/net"},
        {"type": "ipc", "path": f"/proc/{owner_pid}/ns/ipc"},
    ]
    (b / "config.json").write_text(json.dumps(spec))
    return b


def uss_kib(pid: int) -> int:
    """Private (unshared) memory: what the process alone holds."""
    total = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    except OSError:
        pass
    return total


def sandbox_mem(root: Path, home: str, members: list[str]) -> tuple[int, int]:
    """(PSS, USS) in KiB of a sandbox: QEMU, its service and its containers' stubs."""
    st = state(root, home)
    pids = [int(st["qemu_pid"]), int(st["service_pid"])]  # type: ignore[call-overload]
    pids += [int(state(root, c)["stub_pid"]) for c in [home, *members]]  # type: ignore[call-overload]
    pids = [p for p in pids if p]
    return sum(pss_kib(p) for p in pids), sum(uss_kib(p) for p in pids)


def one_round(work: Path, rootfs: Path, settle: float, r: int) -> dict[str, float]:
    """Joins first (nothing else running), then new sandboxes, so that PSS shares of
    the joiners' pages are not split with the new sandboxes' processes."""
    root = work / f"root{r}"
    plain = make_bundle(work / f"plain{r}", ["/bin/sleep", "600"], rootfs=rootfs)
    out: dict[str, float] = {}
    try:
        out["first"] = run_d(root, plain, "a")
        owner_pid = int(state(root, "a")["stub_pid"])  # type: ignore[call-overload]
        time.sleep(settle)
        before = sandbox_mem(root, "a", [])
        members: list[str] = []
        for n in (2, 3):
            b = joiner(work, rootfs, f"j{r}-{n}", owner_pid)
            out[f"join{n}"] = run_d(root, b, f"j{n}")
            members.append(f"j{n}")
            time.sleep(settle)
            now = sandbox_mem(root, "a", members)
            out[f"pss_join{n}"] = (now[0] - before[0]) / 1024
            out[f"uss_join{n}"] = (now[1] - before[1]) / 1024
            before = now
        for n in (2, 3):
            out[f"new{n}"] = run_d(root, plain, f"n{n}")
            time.sleep(settle)
            pss, uss = sandbox_mem(root, f"n{n}", [])
            out[f"pss_new{n}"], out[f"uss_new{n}"] = pss / 1024, uss / 1024
    finally:
        for cid in ("j2", "j3", "n2", "n3", "a"):
            subprocess.run(
                [COCOON, "--root", str(root), "delete", "--force", cid],
                capture_output=True,
                timeout=120,
            )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--settle", type=float, default=2.0, help="seconds before reading PSS")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cj-", dir="/tmp"))
    try:
        rootfs = make_rootfs(work / "rootfs")
        rounds = [one_round(work, rootfs, args.settle, r) for r in range(args.runs)]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rounds)

    rows = ["| | into the existing VM | a new sandbox | ratio |", "|---|---|---|---|"]
    for n in (2, 3):
        rows.append(
            f"| container {n}: `run -d` | {med(f'join{n}'):.2f} s | {med(f'new{n}'):.2f} s | "
            f"{med(f'join{n}') / med(f'new{n}'):.2f} |"
        )
        for kind in ("pss", "uss"):
            a, b = med(f"{kind}_join{n}"), med(f"{kind}_new{n}")
            rows.append(
                f"| container {n}: host {kind.upper()} added | {a:.1f} MiB | {b:.1f} MiB "
                f"| {a / b:.2f} |"
            )
    rows.append(
        f"\n(first container: `run -d` {med('first'):.2f} s; TCG, a shared 2-core host; "
        "PSS/USS of QEMU + service + stubs; USS = private pages, what the member alone adds)"
    )
    table = "\n".join(rows)
    print(table)
    if not args.no_write:
        write_block("join", table, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
