"""VM templates against cold boots and the bare-QEMU floor, and host memory per sandbox.

In one run, on the same kernel:
(a) bare QEMU booting the guest kernel to a busybox /init line (the floor);
(b) ``cocoon run /bin/true`` cloned from a template (made beforehand, timed);
(c) ``cocoon run /bin/true`` with templates off (a cold boot);
(d) host PSS per idle sandbox (QEMU + sandbox service + stub) with 5 running:
    templated, templated with a 32 MiB TCG translation cache, and cold.

Prints the table and the ratios, and writes them to docs/performance.md.
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

from bench.run import (  # noqa: E402
    COCOON,
    bare_boot,
    bare_initramfs,
    cocoon_run,
    med,
    pss_kib,
    report,
)
from cocoon.assets import locate  # noqa: E402
from cocoon.config.paths import assets_dir  # noqa: E402
from tests.fixtures.bundle import make_bundle  # noqa: E402

IDLE = 5


def cocoon(
    root: Path, env: dict[str, str], *args: str, detached: bool = False
) -> subprocess.CompletedProcess[bytes]:
    """Run the CLI; a detached container's stub keeps its stdio, so none is captured."""
    out = subprocess.DEVNULL if detached else subprocess.PIPE
    return subprocess.run(
        [*COCOON, "--root", str(root), *args],
        stdout=out,
        stderr=out,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **env},
    )


def idle_pss(root: Path, bundle: Path, env: dict[str, str], tag: str, settle: float) -> float:
    """Mean MiB of PSS per idle sandbox with IDLE of them running."""
    ids = [f"{tag}{i}" for i in range(IDLE)]
    try:
        for cid in ids:
            r = cocoon(root, env, "run", "-d", "--bundle", str(bundle), cid, detached=True)
            if r.returncode != 0:
                raise SystemExit(f"cocoon run -d {cid} failed")
        time.sleep(settle)
        total = 0
        for cid in ids:
            st = json.loads((root / cid / "state.json").read_text())
            stub = json.loads(cocoon(root, env, "state", cid).stdout or b"{}").get("pid", 0)
            total += pss_kib(st["qemu_pid"]) + pss_kib(st["service_pid"]) + pss_kib(stub)
        return total / len(ids) / 1024
    finally:
        for cid in ids:
            cocoon(root, env, "delete", "--force", cid)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--settle", type=float, default=8.0, help="idle seconds before PSS")
    ap.add_argument("--no-write", action="store_true", help="do not update docs/performance.md")
    args = ap.parse_args()

    assets = locate(assets_dir())
    work = Path(tempfile.mkdtemp(prefix="cocoon-bench-", dir="/tmp"))
    templated = {"COCOON_TEMPLATE_PATH": str(work / "templates")}
    cold = {"COCOON_ENABLE_TEMPLATE": "false"}
    tb32_config = work / "tb32.toml"
    tb32_config.write_text("[hypervisor.qemu]\ntcg_tb_size = 32\n")
    tb32 = {**templated, "COCOON_CONFIG": str(tb32_config)}
    try:
        initrd = bare_initramfs(work)
        bundle = make_bundle(work / "bundle", ["/bin/true"])
        idle = make_bundle(work / "idle", ["/bin/sleep", "600"])
        root = work / "r"
        make = 0.0
        for env in (templated, tb32):
            t0 = time.monotonic()
            r = cocoon(root, env, "factory", "init")
            if r.returncode != 0:
                raise SystemExit(f"cocoon factory init failed: {r.stderr.decode()}")
            make = make or time.monotonic() - t0
        bare, fast, slow, fast32 = [], [], [], []
        ready: list[float] = []
        for i in range(args.runs):  # interleaved, so noise hits all alike
            bare.append(bare_boot(assets.kernel, initrd))
            total, t = cocoon_run(root, bundle, f"t{i}", templated)
            fast.append(total)
            ready.append(t.get("sandbox_ready", float("nan")))
            slow.append(cocoon_run(root, bundle, f"c{i}", cold)[0])
            fast32.append(cocoon_run(root, bundle, f"s{i}", tb32)[0])
            print(
                f"run {i}: bare {bare[-1]:.2f} templated {fast[-1]:.2f} cold {slow[-1]:.2f} "
                f"tb32 {fast32[-1]:.2f}",
                file=sys.stderr,
                flush=True,
            )
        pss_t = idle_pss(root, idle, templated, "it", args.settle)
        pss_t32 = idle_pss(root, idle, tb32, "is", args.settle)
        pss_c = idle_pss(root, idle, cold, "ic", args.settle)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    a, b, c = med(bare), med(fast), med(slow)
    rows = [
        ("(a) bare QEMU → busybox /init line", f"{a:.2f} s"),
        ("(b) cocoon run /bin/true, templated (total)", f"{b:.2f} s"),
        (
            "    sandbox ready (clone running, agent answered, share mounted)",
            f"+{med(ready):.2f} s",
        ),
        ("(b') same, TCG translation cache 32 MiB", f"{med(fast32):.2f} s"),
        ("(c) cocoon run /bin/true, cold boot", f"{c:.2f} s"),
        ("making the template (once; boot + save)", f"{make:.1f} s"),
        (f"(d) idle sandbox PSS, templated ({IDLE} running)", f"{pss_t:.0f} MiB"),
        (f"(d) idle sandbox PSS, templated, tb-size 32 ({IDLE} running)", f"{pss_t32:.0f} MiB"),
        (f"(d) idle sandbox PSS, cold ({IDLE} running)", f"{pss_c:.0f} MiB"),
        ("ratio (b)/(a): templated run vs bare boot", f"{b / a:.2f}"),
        ("ratio sandbox ready / (a): the VM part of (b)", f"{med(ready) / a:.2f}"),
        ("ratio (b)/(c): templated vs cold run", f"{b / c:.2f}"),
        ("ratio (d) templated / cold", f"{pss_t / pss_c:.2f}"),
    ]
    report(rows, args.runs, "templates", not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
