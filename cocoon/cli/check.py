"""``cocoon check``: can this host run Cocoon, and how fast (KVM or TCG)?"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cocoon.cli.output import Reporter


@dataclass
class Row:
    item: str
    ok: bool
    detail: str
    required: bool = True


def _qemu_version(qemu: str) -> str:
    try:
        out = subprocess.run([qemu, "--version"], capture_output=True, text=True, timeout=10)
        return out.stdout.splitlines()[0] if out.stdout else out.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)


def _cgroup_layout() -> str:
    fs = Path("/sys/fs/cgroup")
    if (fs / "cgroup.controllers").exists():
        return "unified (cgroup v2)"
    if (fs / "unified").is_dir():
        return "hybrid (v1 controllers + v2 at /sys/fs/cgroup/unified)"
    return "legacy (cgroup v1)"


def collect(args: argparse.Namespace) -> list[Row]:
    from cocoon.assets import locate
    from cocoon.cli.common import effective_config
    from cocoon.config.paths import assets_dir, cache_dir
    from cocoon.errors import CocoonError
    from cocoon.hypervisor.accel import decide
    from cocoon.resources.sizing import hotplug_capable

    config = effective_config(args)
    hv = config.hypervisor
    rows: list[Row] = []
    qemu = shutil.which(hv.path) or ""
    rows.append(Row("QEMU", bool(qemu), _qemu_version(qemu) if qemu else f"{hv.path} missing"))
    hot = hotplug_capable(hv.machine_type)
    mode = "static" if config.runtime.static_sandbox_resource_mgmt else "dynamic"
    detail = "vCPU/memory hotplug possible" if hot else "no hotplug (static sizing only)"
    rows.append(
        Row(
            "machine type", True, f"{hv.machine_type}: {detail}; sizing mode {mode}", required=False
        )
    )
    vfsd = Path(hv.virtio_fs_daemon)
    rows.append(
        Row(
            "virtiofsd",
            vfsd.exists(),
            str(vfsd) if vfsd.exists() else "missing " "(only needed for shared_fs=virtiofs)",
            required=False,
        )
    )
    rows.append(
        Row("/dev/net/tun", Path("/dev/net/tun").exists(), "for pod networking", required=False)
    )
    assets = None
    try:
        assets = locate(assets_dir(args.assets_dir))
        rows.append(
            Row(
                "guest assets",
                True,
                f"kernel {assets.kernel_version}, key "
                f"{assets.key[:12]} in {assets.kernel.parent}",
            )
        )
    except CocoonError as exc:
        rows.append(Row("guest assets", False, str(exc)))
    if qemu and assets is not None:
        d = decide(qemu, assets.kernel, assets.initrd, assets.image, cache_dir() / "accel.json")
        detail = "KVM: " + d.reason if d.accel == "kvm" else f"TCG (software emulation): {d.reason}"
        rows.append(Row("accelerator", True, detail))
    rows.append(Row("cgroups", True, _cgroup_layout(), required=False))
    rows.append(
        Row(
            "vsock",
            Path("/dev/vhost-vsock").exists(),
            "present"
            if Path("/dev/vhost-vsock").exists()
            else "absent: the agent channel uses virtio-serial",
            required=False,
        )
    )
    return rows


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    from rich.console import Console
    from rich.table import Table

    rows = collect(args)
    table = Table(title="cocoon check")
    table.add_column("item")
    table.add_column("status")
    table.add_column("detail")
    for r in rows:
        status = "ok" if r.ok else ("FAIL" if r.required else "missing")
        table.add_row(r.item, status, r.detail)
    Console().print(table)
    return 0 if all(r.ok for r in rows if r.required) else 1
