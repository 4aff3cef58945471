"""Per-verb latency of ``cocoon`` against ``runc`` on the same bundle, in one run.

state; create+start to the container's first output; exec /bin/true in a
running container (and the same exec driven straight through the sandbox
service, i.e. the in-guest spawn cost plus one RPC, to show what the CLI adds);
kill+delete. Prints medians and ratios, writes them to docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import write_block  # noqa: E402
from tests.fixtures.bundle import make_bundle  # noqa: E402

COCOON = str(ROOT / ".venv" / "bin" / "cocoon")


def timed(fn: Callable[[], object], runs: int) -> float:
    out = []
    for _ in range(runs):
        t0 = time.monotonic()
        fn()
        out.append(time.monotonic() - t0)
    return statistics.median(out)


def quiet(argv: list[str]) -> None:
    subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
    )


def first_output(rt: list[str], bundle: Path, cid: str) -> float:
    """create + start until the container's first byte of output arrives."""
    r, w = os.pipe()
    t0 = time.monotonic()
    subprocess.run(
        [*rt, "create", "--bundle", str(bundle), cid],
        stdin=subprocess.DEVNULL,
        stdout=w,
        stderr=subprocess.DEVNULL,
        check=True,
    )
    os.close(w)
    quiet([*rt, "start", cid])
    select.select([r], [], [], 120)
    elapsed = time.monotonic() - t0
    os.read(r, 100)
    os.close(r)
    subprocess.run([*rt, "delete", "--force", cid], capture_output=True)
    return elapsed


async def service_exec(root: Path, cid: str, runs: int) -> float:
    from cocoon.service.client import ServiceClient
    from cocoon.service.persist import SandboxPaths

    paths = SandboxPaths(root, cid)
    client = await ServiceClient.connect(paths)
    out = []
    try:
        for i in range(runs):
            t0 = time.monotonic()
            await client.exec(cid, f"b{i}", {"args": ["/bin/true"], "cwd": "/"}, False)
            await client.wait(cid, f"b{i}")
            out.append(time.monotonic() - t0)
    finally:
        await client.close()
    return statistics.median(out)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cocoon-bcli-", dir="/tmp"))
    croot, rroot = work / "c", work / "r"
    ours, runc = [COCOON, "--root", str(croot)], ["runc", "--root", str(rroot)]
    try:
        sleeper = make_bundle(work / "sleep", ["/bin/sleep", "600"])
        echo = make_bundle(work / "echo", ["/bin/echo", "hi"])
        quiet([*ours, "run", "-d", "--bundle", str(sleeper), "s1"])
        quiet([*runc, "run", "-d", "--bundle", str(sleeper), "s1"])
        res = {
            "state": (
                timed(lambda: quiet([*ours, "state", "s1"]), args.runs),
                timed(lambda: quiet([*runc, "state", "s1"]), args.runs),
            ),
            "exec /bin/true": (
                timed(lambda: quiet([*ours, "exec", "s1", "/bin/true"]), args.runs),
                timed(lambda: quiet([*runc, "exec", "s1", "/bin/true"]), args.runs),
            ),
        }
        svc_exec = asyncio.run(service_exec(croot, "s1", args.runs))
        for rt in (ours, runc):
            quiet([*rt, "delete", "--force", "s1"])
        res["create+start → first output"] = (
            statistics.median(first_output(ours, echo, f"f{i}") for i in range(3)),
            statistics.median(first_output(runc, echo, f"f{i}") for i in range(3)),
        )

        def kill_delete(rt: list[str], i: int) -> float:
            quiet([*rt, "run", "-d", "--bundle", str(sleeper), f"k{i}"])
            t0 = time.monotonic()
            quiet([*rt, "kill", f"k{i}", "KILL"])
            quiet([*rt, "delete", "--force", f"k{i}"])
            return time.monotonic() - t0

        res["kill+delete"] = (
            statistics.median(kill_delete(ours, i) for i in range(3)),
            statistics.median(kill_delete(runc, i) for i in range(3)),
        )
    finally:
        for rt in (ours, runc):
            subprocess.run([*rt, "list", "-q"], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    rows = [
        (verb, f"{c * 1000:.0f} ms", f"{r * 1000:.0f} ms", f"{c / r:.1f}x")
        for verb, (c, r) in res.items()
    ]
    cli_exec = res["exec /bin/true"][0]
    rows.append(
        (
            "exec through the service (in-guest spawn + 1 RPC)",
            f"{svc_exec * 1000:.0f} ms",
            "",
            f"CLI exec / this = {cli_exec / svc_exec:.2f}",
        )
    )
    print(f"{'verb':<52}{'cocoon':>10}{'runc':>10}  ratio")
    for verb, c, r, ratio in rows:
        print(f"{verb:<52}{c:>10}{r:>10}  {ratio}")
    if not args.no_write:
        table = "\n".join(
            [
                "| verb | cocoon | runc | ratio |",
                "|---|---|---|---|",
                *(f"| {v} | {c} | {r} | {x} |" for v, c, r, x in rows),
            ]
        )
        write_block("cli", table, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
