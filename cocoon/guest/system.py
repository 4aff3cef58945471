"""Thin wrappers over the system calls the agent needs (no fork: spawning is slow under TCG)."""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import re
import struct
import time

log = logging.getLogger("cocoon.guest")
_libc = ctypes.CDLL("libc.so.6", use_errno=True)  # ctypes.util costs ~0.3 s under TCG

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_BIND = 4096
MS_REC = 16384
MNT_DETACH = 2
RB_POWER_OFF = 0x4321FEDC
RNDADDENTROPY = 0x40085203
RNDRESEEDCRNG = 0x5207
CLOCK_REALTIME = 0


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str, target: str, fstype: str, flags: int = 0, data: str = "") -> None:
    rc = _libc.mount(
        source.encode(),
        target.encode(),
        fstype.encode(),
        ctypes.c_ulong(flags),
        data.encode() if data else None,
    )
    _check(rc, f"mount {fstype} {source} on {target}")


def umount(target: str, flags: int = MNT_DETACH) -> None:
    _check(_libc.umount2(target.encode(), flags), f"umount {target}")


def is_mounted(target: str) -> bool:
    with open("/proc/self/mounts", encoding="utf-8") as fh:
        return any(line.split()[1] == target for line in fh)


def base_mounts() -> None:
    """What every container needs from the guest: tmpfs for state, cgroup2, ptys, shm."""
    plan = [
        ("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, ""),
        ("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, ""),
        ("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755"),
        ("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755"),
        ("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777"),
        ("cgroup2", "/sys/fs/cgroup", "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC, ""),
    ]
    for source, target, fstype, flags, data in plan:
        if not is_mounted(target):
            mount(source, target, fstype, flags, data)
    for path in ("/dev/pts", "/dev/shm"):
        os.makedirs(path, exist_ok=True)
    if not is_mounted("/dev/pts"):
        mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666")
    if not is_mounted("/dev/shm"):
        mount("shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    for link, target in (("/dev/fd", "/proc/self/fd"), ("/dev/ptmx", "pts/ptmx")):
        if not os.path.lexists(link):
            os.symlink(target, link)
    try:
        set_modprobe()
    except OSError as exc:
        log.warning("cannot set the module autoload helper: %s", exc)
    # Let the agent's own cgroup hand controllers to the containers' cgroups.
    try:
        with open("/sys/fs/cgroup/cgroup.controllers", encoding="utf-8") as fh:
            controllers = fh.read().split()
        with open("/sys/fs/cgroup/cgroup.subtree_control", "w", encoding="utf-8") as fh:
            fh.write(" ".join("+" + c for c in controllers))
    except OSError as exc:
        log.warning("cannot enable cgroup controllers: %s", exc)


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, len(raw)), "sethostname")


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def set_clock(time_ns: int) -> None:
    ts = _Timespec(time_ns // 1_000_000_000, time_ns % 1_000_000_000)
    _check(_libc.clock_settime(CLOCK_REALTIME, ctypes.byref(ts)), "clock_settime")


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


def adjust_clock(delta_ns: int, step: bool) -> None:
    """Move CLOCK_REALTIME by ``delta_ns``: at once (``step``) or slewed by adjtime(3)."""
    if step:
        _check(_libc.adjtime(ctypes.byref(_Timeval(0, 0)), None), "adjtime")  # end a slew
        set_clock(time.clock_gettime_ns(time.CLOCK_REALTIME) + delta_ns)
        return
    usec = delta_ns // 1000
    tv = _Timeval(usec // 1_000_000, usec % 1_000_000)  # floor division: tv_usec >= 0
    _check(_libc.adjtime(ctypes.byref(tv), None), "adjtime")


_MODULE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_MODULE_PARAM = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}(=\S*)?$")


def module_argv(spec: str, modprobe: str = "/usr/sbin/modprobe") -> list[str]:
    """``modprobe`` argv for ``[agent] kernel_modules``'s "name [param=value ...]".

    Raises ValueError naming the problem (an option, a path, a bad name):
    nothing the host sends reaches modprobe as an option.
    """
    name, *params = spec.split()
    if not _MODULE_NAME.match(name):
        raise ValueError(f"kernel module {name!r}: not a module name")
    for param in params:
        if not _MODULE_PARAM.match(param):
            raise ValueError(f"kernel module {name}: bad parameter {param!r}")
    return [modprobe, "--", name, *params]


def set_modprobe(path: str = "/usr/sbin/modprobe") -> None:
    """Point the kernel's module autoload helper at the root image's modprobe."""
    if os.path.exists(path):
        with open("/proc/sys/kernel/modprobe", "w", encoding="utf-8") as fh:
            fh.write(path)


def reseed_random(seed: bytes) -> None:
    """Mix host bytes into the CRNG and force a reseed (clones share RNG state)."""
    if not seed:
        return
    with open("/dev/urandom", "wb") as fh:
        fcntl.ioctl(fh, RNDADDENTROPY, struct.pack("ii", len(seed) * 8, len(seed)) + seed)
        try:
            fcntl.ioctl(fh, RNDRESEEDCRNG)
        except OSError as exc:
            log.warning("RNDRESEEDCRNG failed: %s", exc)


def power_off() -> None:
    os.sync()
    _libc.reboot(RB_POWER_OFF)
    while True:  # PID 1 must not return
        time.sleep(1)


def find_port(name: str) -> str:
    """The /dev node of the virtio-serial port called ``name`` (no udev in the guest)."""
    base = "/sys/class/virtio-ports"
    deadline = time.monotonic() + 10
    while True:
        try:
            for entry in sorted(os.listdir(base)):
                try:
                    with open(f"{base}/{entry}/name", encoding="utf-8") as fh:
                        if fh.read().strip() == name:
                            return f"/dev/{entry}"
                except OSError:
                    continue
        except FileNotFoundError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"virtio-serial port {name!r} not found")
        time.sleep(0.01)


def uptime() -> float:
    with open("/proc/uptime", encoding="utf-8") as fh:
        return float(fh.read().split()[0])


def online_cpus_and_memory() -> tuple[int, int]:
    """Online every offline CPU and memory block; return (online CPUs, MemTotal kB)."""
    base = "/sys/devices/system"
    for kind, value in (("cpu", "1"), ("memory", "online")):
        try:
            entries = os.listdir(f"{base}/{kind}")
        except OSError:
            continue
        for entry in entries:
            attr = "online" if kind == "cpu" else "state"
            path = f"{base}/{kind}/{entry}/{attr}"
            if not entry.startswith(kind) or not entry[len(kind) :].isdigit():
                continue
            try:
                with open(path, encoding="utf-8") as fh:
                    state = fh.read().strip()
                if state in ("0", "offline"):
                    with open(path, "w", encoding="utf-8") as fh:
                        fh.write(value)
            except OSError:
                continue
    online = 0
    with open(f"{base}/cpu/online", encoding="utf-8") as fh:
        for part in fh.read().strip().split(","):
            lo, _, hi = part.partition("-")
            online += int(hi or lo) - int(lo) + 1
    mem = 0
    with open("/proc/meminfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1])
    return online, mem
