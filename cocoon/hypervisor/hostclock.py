"""The guest's clock parameters, taken from the host Cocoon runs on.

Under TCG the guest's ``rdtsc`` reads the host's TSC, so the guest kernel must
be told the host's TSC frequency (``tsc_early_khz=``; calibrating it under
emulation is slow and wrong): a figure of another host makes guest time run
fast or slow by the ratio of the two (2100 vs 2500 MHz: 16 % slow, measured).
``lpj=`` (loops per jiffy, the busy-wait delay calibration) follows from it,
as the kernel computes it with a TSC delay loop: ``khz * 1000 / HZ``.

The frequency is what the host kernel detected (``tsc: Detected N MHz`` in the
kernel log), else ``/proc/cpuinfo`` ``cpu MHz`` when the TSC is constant and its
frequency known (``constant_tsc`` and ``tsc_known_freq``: then that figure is
the TSC's). It is cached in a file for the current host boot, so a VM start
reads one small file. The parameters end up on the kernel command line, which
is part of a VM template's key: a template never carries another host's clock.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
from pathlib import Path

#: Debian's amd64 kernel (the guest kernel) is built with CONFIG_HZ=250.
GUEST_HZ = 250
CACHE = Path("/run/cocoon/host-clock.json")
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
KMSG = "/dev/kmsg"
CPUINFO = Path("/proc/cpuinfo")

_DETECTED = re.compile(r"tsc: Detected (\d+)\.(\d+) MHz")
_REFINED = re.compile(r"tsc: Refined TSC clocksource calibration: (\d+)\.(\d+) MHz")


def _khz(mhz: str, frac: str) -> int:
    return int(mhz) * 1000 + int((frac + "000")[:3])


def tsc_khz_from_log(text: str) -> int | None:
    """The TSC frequency in kHz from kernel log text; a refined calibration wins."""
    found = None
    for line in text.splitlines():
        m = _REFINED.search(line)
        if m:
            return _khz(*m.groups())
        m = _DETECTED.search(line)
        if m and found is None:
            found = _khz(*m.groups())
    return found


def tsc_khz_from_cpuinfo(text: str) -> int | None:
    """``cpu MHz`` of the first CPU in kHz, if its TSC is constant with a known frequency."""
    flags: set[str] = set()
    mhz = None
    for line in text.splitlines():
        name, _, value = line.partition(":")
        name = name.strip()
        if name == "flags" and not flags:
            flags = set(value.split())
        elif name == "cpu MHz" and mhz is None:
            mhz = value.strip()
        if not line.strip() and (flags or mhz):
            break  # the first CPU's block is enough
    if mhz is None or not {"constant_tsc", "tsc_known_freq"} <= flags:
        return None
    whole, _, frac = mhz.partition(".")
    if not whole.isdigit() or (frac and not frac.isdigit()):
        return None
    return _khz(whole, frac or "0")


def kernel_params(tsc_khz: int, hz: int = GUEST_HZ) -> tuple[str, ...]:
    """The guest kernel parameters for a host TSC of ``tsc_khz`` (none when 0: unknown)."""
    if tsc_khz <= 0:
        return ()
    return (f"tsc_early_khz={tsc_khz}", f"lpj={tsc_khz * 1000 // hz}")


def _read_kmsg(path: str = KMSG) -> str:
    """The kernel log records still in the ring buffer ("" if it cannot be read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return ""
    lines: list[str] = []
    try:
        while True:
            try:
                record = os.read(fd, 8192)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # a record was overwritten: go on
                    continue
                break
            if not record:
                break
            _, _, msg = record.decode(errors="replace").partition(";")
            lines.append(msg.split("\n", 1)[0])
    finally:
        os.close(fd)
    return "\n".join(lines)


def detect_tsc_khz() -> int:
    """The host TSC frequency in kHz, read now; 0 if unknown."""
    khz = tsc_khz_from_log(_read_kmsg())
    if khz is None:
        with contextlib.suppress(OSError):
            khz = tsc_khz_from_cpuinfo(CPUINFO.read_text())
    return khz or 0


def _boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


def host_tsc_khz(cache: Path = CACHE) -> int:
    """The host TSC frequency in kHz (0 if unknown), cached for this host boot."""
    boot = _boot_id()
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        data = json.loads(cache.read_text())
        if boot and data["boot_id"] == boot:
            return int(data["tsc_khz"])
    khz = detect_tsc_khz()
    if boot:
        with contextlib.suppress(OSError):
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f".{cache.name}.{os.getpid()}")
            tmp.write_text(json.dumps({"boot_id": boot, "tsc_khz": khz}))
            os.replace(tmp, cache)
    return khz
