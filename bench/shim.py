"""Pods through containerd's CRI: Cocoon's shim v2 against containerd's runc shim, in one run.

For a pod of 1 and of 3 containers (busybox ``sleep``, in a pod network: the shim
tests' CNI plugin, a veth to a private "node" namespace, never the host's
interfaces; a VM cannot take the host's network): the time from RunPodSandbox
until every container is started, and the host memory (PSS) of each
pod's processes (shim + QEMU + virtiofsd for Cocoon; shim + pause + containers for
runc), from which the cost of each extra container follows. Prints a table and
writes it to docs/performance.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import write_block  # noqa: E402
from tests.engines.conftest import ShimContainerd, check, processes_matching  # noqa: E402
from tests.engines.cri.client import CRI, cri  # noqa: E402
from tests.engines.images import build_images, build_pause_image  # noqa: E402

IMG = "localhost/busybox:latest"


def pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def run_pod(client: CRI, handler: str, n: int, ctrd: ShimContainerd) -> tuple[float, int, str]:
    """(seconds until all n containers started, pod PSS in KiB, pod id); the pod stays up."""
    # A pod network (ShimContainerd's CNI): the shim refuses the host's (NODE).
    pod_net = cri.NamespaceOption(network=cri.POD)
    name = f"b{uuid.uuid4().hex[:6]}"
    pod = cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name=name, uid=uuid.uuid4().hex, namespace="bench"),
        linux=cri.LinuxPodSandboxConfig(
            security_context=cri.LinuxSandboxSecurityContext(namespace_options=pod_net)
        ),
    )
    t0 = time.monotonic()
    sid = client.call(
        "RunPodSandbox",
        cri.RunPodSandboxRequest(config=pod, runtime_handler=handler),
        cri.RunPodSandboxResponse,
    ).pod_sandbox_id
    for i in range(n):
        cfg = cri.ContainerConfig(
            metadata=cri.ContainerMetadata(name=f"c{i}"),
            image=cri.ImageSpec(image=IMG),
            command=["sleep", "100000"],
            linux=cri.LinuxContainerConfig(
                security_context=cri.LinuxContainerSecurityContext(namespace_options=pod_net)
            ),
        )
        cid = client.call(
            "CreateContainer",
            cri.CreateContainerRequest(pod_sandbox_id=sid, config=cfg, sandbox_config=pod),
            cri.CreateContainerResponse,
        ).container_id
        client.call(
            "StartContainer",
            cri.StartContainerRequest(container_id=cid),
            cri.StartContainerResponse,
        )
    elapsed = time.monotonic() - t0
    time.sleep(2)  # let the pod settle before measuring memory
    shims = [
        pid
        for pid, cmd in processes_matching([f"-address\0{ctrd.address}\0"]).items()
        if f"-id {sid}" in cmd and ("cocoon.shim" in cmd or "containerd-shim-runc" in cmd)
    ]
    pids = {p for s in shims for p in descendants(s)}
    return elapsed, sum(pss_kib(p) for p in pids), sid


def stop_pod(client: CRI, sid: str) -> None:
    client.call(
        "StopPodSandbox", cri.StopPodSandboxRequest(pod_sandbox_id=sid), cri.StopPodSandboxResponse
    )
    client.call(
        "RemovePodSandbox",
        cri.RemovePodSandboxRequest(pod_sandbox_id=sid),
        cri.RemovePodSandboxResponse,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--no-write", action="store_true", help="do not update docs/performance.md")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bs-", dir="/tmp"))
    ctrd = ShimContainerd(base / "c", "bench")
    try:
        ctrd.start()
        images = build_images(base / "img")
        k8s = ctrd.CRI_NAMESPACE
        check(
            ctrd.ctr(
                "image",
                "import",
                "--base-name",
                "localhost/busybox",
                str(images.oci_archive),
                namespace=k8s,
            )
        )
        check(
            ctrd.ctr(
                "image", "import", str(build_pause_image(images, base / "pause")), namespace=k8s
            )
        )
        client = CRI(ctrd.address)
        results: dict[tuple[str, int], tuple[float, float]] = {}
        for handler in ("runc", "cocoon"):
            for n in (1, 3):
                times, mems = [], []
                for _ in range(args.runs):
                    t, pss, sid = run_pod(client, handler, n, ctrd)
                    stop_pod(client, sid)
                    times.append(t)
                    mems.append(pss / 1024)
                results[(handler, n)] = (statistics.median(times), statistics.median(mems))
                t, m = results[(handler, n)]
                print(f"{handler} pod of {n}: {t:.2f} s, {m:.0f} MiB", flush=True)
        client.close()
    finally:
        ctrd.stop()
        import shutil

        shutil.rmtree(base, ignore_errors=True)
    rows = ["| measure | cocoon shim | runc shim | ratio |", "|---|---|---|---|"]
    for n in (1, 3):
        c, r = results[("cocoon", n)], results[("runc", n)]
        ratio_t, ratio_m = c[0] / r[0], c[1] / max(r[1], 0.1)
        rows.append(
            f"| pod of {n}: RunPodSandbox → all started | {c[0]:.2f} s | {r[0]:.2f} s "
            f"| {ratio_t:.1f}x |"
        )
        rows.append(f"| pod of {n}: host PSS | {c[1]:.0f} MiB | {r[1]:.1f} MiB | {ratio_m:.0f}x |")
    extra_c = (results[("cocoon", 3)][1] - results[("cocoon", 1)][1]) / 2
    extra_r = (results[("runc", 3)][1] - results[("runc", 1)][1]) / 2
    rows.append(f"| PSS per extra container in the pod | {extra_c:.1f} MiB | {extra_r:.1f} MiB | |")
    table = "\n".join(rows)
    print(table)
    if not args.no_write:
        write_block("shim", table, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
