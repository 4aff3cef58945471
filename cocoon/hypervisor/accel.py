"""Choosing the accelerator: KVM only when a guest really boots with it.

``/dev/kvm`` existing proves little (here it is PVM, which hangs stock
kernels). Cheap hints rule KVM out first; otherwise a real boot under a short
timeout decides. The verdict is cached per (kernel, QEMU) pair.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

BOOT_MARKER = b"cocoon-init: starting agent"
PROBE_TIMEOUT = 20.0


@dataclass(frozen=True)
class AccelDecision:
    accel: str  # "kvm" | "tcg"
    reason: str


def kvm_hints(cpuinfo: str, kvm_dev: Path, pvm_module: Path) -> str | None:
    """Why KVM cannot work, from cheap evidence; None when it might."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    if not kvm_dev.exists():
        return f"{kvm_dev} does not exist"
    if not os.access(kvm_dev, os.R_OK | os.W_OK):
        return f"{kvm_dev} is not accessible"
    if pvm_module.exists():
        return "/dev/kvm is PVM (kvm_pvm), which only runs PVM-enabled guest kernels"
    if not flags & {"vmx", "svm"}:
        return "the CPU has no vmx/svm flag (nested virtualisation is off)"
    return None


def _cache_key(qemu: str, kernel: Path) -> str:
    st = kernel.stat()
    return f"{qemu}|{kernel}|{st.st_size}|{int(st.st_mtime)}"


def boot_probe(qemu: str, kernel: Path, initrd: Path, image: Path, timeout: float) -> bool:
    """Boot the real guest under KVM; True if init reaches the agent in time."""
    with tempfile.TemporaryDirectory(prefix="cocoon-probe-") as tmp:
        log = Path(tmp) / "console"
        argv = [
            qemu,
            "-accel",
            "kvm",
            "-M",
            "pc",
            "-cpu",
            "host",
            "-m",
            "256M",
            "-smp",
            "1",
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
            "console=ttyS0 panic=-1 cocoon.root=/dev/vda",
            "-chardev",
            f"file,id=c,path={log}",
            "-serial",
            "chardev:c",
            "-drive",
            f"file={image},if=none,id=root,format=raw,readonly=on",
            "-device",
            "virtio-blk-pci,drive=root",
        ]
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and proc.poll() is None:
                with contextlib.suppress(FileNotFoundError):
                    if BOOT_MARKER in log.read_bytes():
                        return True
                time.sleep(0.1)
            return False
        finally:
            proc.kill()
            proc.wait()


def decide(
    qemu: str,
    kernel: Path,
    initrd: Path,
    image: Path,
    cache_file: Path | None,
    *,
    force: bool = False,
) -> AccelDecision:
    """KVM if it really boots the guest here, else TCG, with the reason."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    hint = kvm_hints(cpuinfo, Path("/dev/kvm"), Path("/sys/module/kvm_pvm"))
    if hint is not None:
        return AccelDecision("tcg", f"KVM unusable: {hint}")
    key = _cache_key(qemu, kernel)
    if cache_file is not None and not force:
        with contextlib.suppress(OSError, ValueError, KeyError):
            cached = json.loads(cache_file.read_text())
            if cached["key"] == key:
                return AccelDecision(cached["accel"], cached["reason"] + " (cached probe)")
    if boot_probe(qemu, kernel, initrd, image, PROBE_TIMEOUT):
        decision = AccelDecision("kvm", "KVM booted the guest kernel in a probe")
    else:
        decision = AccelDecision(
            "tcg",
            f"KVM unusable: the guest kernel did not boot under KVM within {PROBE_TIMEOUT:g}s",
        )
    if cache_file is not None:
        with contextlib.suppress(OSError):
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            cache_file.write_text(json.dumps({"key": key, **asdict(decision)}))
    return decision
