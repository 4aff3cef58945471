"""Cocoon's cold-boot benchmark: ratios measured side by side in one run, on the same kernel.

Templates are off here (``bench/templates.py`` compares the templated start):
(a) bare QEMU booting the guest kernel to a busybox /init line (the floor);
(b) ``cocoon run /bin/true``, cold boot, with its breakdown (QEMU start, agent
    ready, container created/started/exited, cleaned up);
(c) ``runc run`` (and ``crun run`` if it works on this host) on the same bundle;
(d) host memory (PSS) of QEMU + virtiofsd + the sandbox service for an idle sandbox.

Prints the table and the ratios (b)/(a) and (b)/(c), and writes them, with the
commit, to docs/performance.md. No thresholds: the numbers are the output.
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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cocoon.assets import locate  # noqa: E402
from cocoon.config.paths import assets_dir  # noqa: E402
from cocoon.hypervisor.cmdline import BASE_KERNEL_PARAMS  # noqa: E402
from tests.fixtures.bundle import make_bundle  # noqa: E402

COCOON = [sys.executable, "-m", "cocoon.cli.main"]
COLD = {"COCOON_ENABLE_TEMPLATE": "false"}
MARKER = b"BENCH-INIT-UP"


def bare_initramfs(work: Path) -> Path:
    """busybox + an /init that prints a marker and powers off."""
    root = work / "bare"
    (root / "bin").mkdir(parents=True)
    shutil.copy2("/bin/busybox", root / "bin" / "busybox")
    for applet in ("sh", "echo", "poweroff"):
        os.symlink("busybox", root / "bin" / applet)
    init = root / "init"
    init.write_text(f"#!/bin/sh\necho {MARKER.decode()}\npoweroff -f\n")
    init.chmod(0o755)
    out = work / "bare.cpio"
    files = subprocess.run(
        ["find", ".", "-print"], cwd=root, capture_output=True, check=True
    ).stdout
    with open(out, "wb") as fh:
        subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=files, stdout=fh, check=True
        )
    return out


def bare_boot(kernel: Path, initrd: Path) -> float:
    """Seconds from QEMU exec to the /init marker on the serial console (pc, TCG, PVH)."""
    argv = [
        "qemu-system-x86_64",
        "-accel",
        "tcg",
        "-M",
        "pc",
        "-cpu",
        "qemu64",
        "-smp",
        "1",
        "-m",
        "256M",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-kernel",
        str(kernel),
        "-initrd",
        str(initrd),
        "-append",
        BASE_KERNEL_PARAMS,
        "-serial",
        "stdio",
    ]
    t0 = time.monotonic()
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert proc.stdout is not None
    elapsed = float("nan")
    try:
        for line in proc.stdout:
            if MARKER in line:
                elapsed = time.monotonic() - t0
                break
    finally:
        proc.kill()
        proc.wait()
    return elapsed


def cocoon_run(
    root: Path, bundle: Path, cid: str, env: dict[str, str] | None = None
) -> tuple[float, dict[str, float]]:
    t0 = time.monotonic()
    r = subprocess.run(
        [*COCOON, "--debug", "--root", str(root), "run", "--bundle", str(bundle), cid],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    total = time.monotonic() - t0
    if r.returncode != 0:
        raise SystemExit(f"cocoon run failed: {r.stderr.decode()}")
    timings: dict[str, float] = {}
    for line in r.stderr.decode().splitlines():
        if "timings " in line:
            for part in line.split("timings ", 1)[1].split():
                k, v = part.split("=")
                timings[k] = float(v.strip('"'))
    timings["total"] = total
    return total, timings


def oci_run(runtime: str, state: Path, bundle: Path, cid: str) -> float:
    t0 = time.monotonic()
    r = subprocess.run(
        [runtime, "--root", str(state), "run", "--bundle", str(bundle), cid],
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )
    if r.returncode != 0:
        return float("nan")
    return time.monotonic() - t0


def pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def idle_pss(root: Path, bundle: Path, cid: str, shared_fs: str, settle: float) -> dict[str, int]:
    env = {**os.environ, **COLD, "COCOON_SHARED_FS": shared_fs}
    subprocess.run(
        [*COCOON, "--root", str(root), "run", "-d", "--bundle", str(bundle), cid],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        check=True,
    )
    try:
        time.sleep(settle)
        st = json.loads((root / cid / "state.json").read_text())
        return {
            "qemu": pss_kib(st["qemu_pid"]),
            "virtiofsd": pss_kib(st["virtiofsd_pid"]) if st["virtiofsd_pid"] else 0,
            "service": pss_kib(st["service_pid"]),
        }
    finally:
        subprocess.run(
            [*COCOON, "--root", str(root), "delete", "--force", cid], capture_output=True
        )


def med(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--settle", type=float, default=8.0, help="idle seconds before PSS")
    ap.add_argument("--no-write", action="store_true", help="do not update docs/performance.md")
    args = ap.parse_args()

    assets = locate(assets_dir())
    work = Path(tempfile.mkdtemp(prefix="cocoon-bench-", dir="/tmp"))
    try:
        initrd = bare_initramfs(work)
        bundle = make_bundle(work / "bundle", ["/bin/true"])
        root = work / "r"
        bare, ours, runc, crun = [], [], [], []
        breakdowns: list[dict[str, float]] = []
        for i in range(args.runs):  # interleaved, so noise hits all alike
            bare.append(bare_boot(assets.kernel, initrd))
            total, t = cocoon_run(root, bundle, f"b{i}", COLD)
            ours.append(total)
            breakdowns.append(t)
            runc.append(oci_run("runc", work / "runc", bundle, f"r{i}"))
            if shutil.which("crun"):
                crun.append(oci_run("crun", work / "crun", bundle, f"c{i}"))
        pss_9p = idle_pss(
            root, make_bundle(work / "idle", ["/bin/sleep", "600"]), "i9", "9p", args.settle
        )
        pss_vfs = idle_pss(root, work / "idle", "ivfs", "virtiofs", args.settle)
        # The price of hotplug: microvm boots without ACPI hotplug; pc can grow.
        micro, _ = cocoon_run(root, bundle, "micro", {**COLD, "COCOON_MACHINE": "microvm"})
        grow = make_bundle(work / "grow", ["/bin/true"])
        spec = json.loads((grow / "config.json").read_text())
        spec["linux"]["resources"] = {
            "cpu": {"quota": 100000, "period": 100000},
            "memory": {"limit": 256 << 20},
        }
        (grow / "config.json").write_text(json.dumps(spec))
        _, gt = cocoon_run(root, grow, "grow", COLD)
        hotplug = gt.get("resized", float("nan")) - gt.get("sandbox_ready", float("nan"))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    keys = [
        "qemu_started",
        "agent_ready",
        "sandbox_ready",
        "container_created",
        "container_started",
        "container_exited",
        "total",
    ]
    bd = {k: med([b.get(k, float("nan")) for b in breakdowns]) for k in keys}
    a, b, c = med(bare), med(ours), med(runc)
    rows = [
        ("(a) bare QEMU → busybox /init line", f"{a:.2f} s"),
        ("(b) cocoon run /bin/true, cold boot (total)", f"{b:.2f} s"),
        ("    QEMU started", f"+{bd['qemu_started']:.2f} s"),
        ("    agent ready", f"+{bd['agent_ready']:.2f} s"),
        ("    sandbox ready (share mounted)", f"+{bd['sandbox_ready']:.2f} s"),
        ("    container created (crun create)", f"+{bd['container_created']:.2f} s"),
        ("    container started", f"+{bd['container_started']:.2f} s"),
        ("    container exited", f"+{bd['container_exited']:.2f} s"),
        (
            "    cleaned up (CLI returned)",
            f"{b - bd['container_exited']:.2f} s after exit, " "incl. CLI start",
        ),
        ("(c) runc run /bin/true", f"{c * 1000:.0f} ms"),
        (
            "(c') crun run /bin/true",
            f"{med(crun) * 1000:.0f} ms" if crun and med(crun) == med(crun) else "n/a (fails here)",
        ),
        (
            "(d) idle sandbox PSS, 9p",
            f"{sum(pss_9p.values()) / 1024:.0f} MiB "
            f"(QEMU {pss_9p['qemu'] / 1024:.0f}, service "
            f"{pss_9p['service'] / 1024:.0f})",
        ),
        (
            "(d) idle sandbox PSS, virtio-fs",
            f"{sum(pss_vfs.values()) / 1024:.0f} MiB "
            f"(QEMU {pss_vfs['qemu'] / 1024:.0f}, virtiofsd "
            f"{pss_vfs['virtiofsd'] / 1024:.0f}, service "
            f"{pss_vfs['service'] / 1024:.0f})",
        ),
        ("hot-add 1 vCPU + 256 MiB, online in the guest", f"{hotplug:.2f} s"),
        ("cocoon run /bin/true on microvm (1 run)", f"{micro:.2f} s (pc: {b:.2f} s)"),
        ("ratio (b)/(a): cocoon run vs bare boot", f"{b / a:.2f}"),
        ("ratio (b)/(c): cocoon run vs runc", f"{b / c:.0f}x"),
    ]
    report(rows, args.runs, "boot", not args.no_write)
    return 0


def report(rows: list[tuple[str, str]], runs: int, block: str, write: bool) -> None:
    """Print the (measure, value) rows; with ``write``, also into docs/performance.md."""
    width = max(len(r[0]) for r in rows)
    print(f"medians of {runs} interleaved runs")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    if write:
        table = "\n".join(
            ["| measure | value |", "|---|---|", *(f"| {n.strip()} | {v} |" for n, v in rows)]
        )
        write_block(block, table, runs)


def write_block(name: str, table: str, runs: int) -> None:
    """Replace the ``name`` block of docs/performance.md with ``table`` and the commit."""
    commit = (
        subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        or "unknown"
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "cocoon"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    doc = ROOT / "docs" / "performance.md"
    text = doc.read_text() if doc.exists() else ""
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    block = (
        f"{start}\nLatest `bench/` run (medians of {runs} runs), commit "
        f"`{commit}`{' (with uncommitted changes)' if dirty else ''}, "
        f"{time.strftime('%Y-%m-%d')}:\n\n{table}\n{end}"
    )
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text += "\n" + block + "\n"
    doc.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
