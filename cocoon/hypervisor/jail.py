"""The jail QEMU and virtiofsd are started in: few capabilities and a seccomp filter
that keeps the share from planting what the host would honour.

Both serve the guest's file operations with host system calls, so a guest
(root in its containers, or a compromised guest kernel) asks them to
``chmod u+s``, ``mknod`` a device or create a file with set-id bits. The
filter, installed before ``exec`` with ``no_new_privs`` (and kept across it,
under QEMU's own ``-sandbox`` and virtiofsd's own filter), refuses with EPERM:

- ``chmod``/``fchmod``/``fchmodat``/``fchmodat2`` with S_ISUID or S_ISGID;
- ``open``/``openat``/``creat`` creating a file (O_CREAT, O_TMPFILE) with them,
  ``mkdir``/``mkdirat`` with them (``openat2`` answers ENOSYS: both use openat);
- ``mknod``/``mknodat`` of a character or block device, or with set-id bits;
- every x32 system call (their numbers would bypass the checks above).

Capabilities: the bounding, permitted, effective and inheritable sets keep only
what serving files needs (9p in ``security_model=none`` keeps owners with
CAP_CHOWN, and reads and writes every file of the bundle with CAP_DAC_OVERRIDE,
CAP_DAC_READ_SEARCH and CAP_FOWNER); no CAP_MKNOD, CAP_FSETID, CAP_SETFCAP,
CAP_SYS_ADMIN, CAP_NET_ADMIN... (plan as data: :class:`Jail`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
PR_SET_KEEPCAPS = 8
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
SECCOMP_MODE_FILTER = 2
CAP_LAST = 40  # CAP_CHECKPOINT_RESTORE
CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER = 0, 1, 2, 3
CAP_SETGID, CAP_SETUID, CAP_SETPCAP, CAP_SYS_CHROOT = 6, 7, 8, 18
FILE_CAPS = (CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER)
# virtiofsd switches to the guest's uid/gid per request and chroots into the share.
VIRTIOFSD_CAPS = (*FILE_CAPS, CAP_SETGID, CAP_SETUID, CAP_SETPCAP, CAP_SYS_CHROOT)

# x86_64 system call numbers.
AUDIT_ARCH_X86_64 = 0xC000003E
X32_BIT = 0x40000000
NR = {
    "open": 2,
    "chmod": 90,
    "fchmod": 91,
    "mkdir": 83,
    "creat": 85,
    "mknod": 133,
    "openat": 257,
    "mkdirat": 258,
    "mknodat": 259,
    "fchmodat": 268,
    "openat2": 437,
    "fchmodat2": 452,
}
SETID = 0o6000
O_CREAT = 0o100
O_TMPFILE = 0o20000000
S_IFMT, S_IFCHR, S_IFBLK = 0o170000, 0o020000, 0o060000

# Classic BPF.
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_AND_K = 0x54
_RET_K = 0x06
RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000
_OFF_NR, _OFF_ARCH = 0, 4


def _arg(i: int) -> int:
    return 16 + 8 * i  # low 32 bits of args[i] (little endian)


def _ins(code: int, k: int, jt: int = 0, jf: int = 0) -> tuple[int, int, int, int]:
    return (code, jt, jf, k)


def _deny_if_mode(nr: int, arg: int) -> list[tuple[int, int, int, int]]:
    return [
        _ins(_LD_W_ABS, _OFF_NR),
        _ins(_JEQ_K, nr, 0, 4),
        _ins(_LD_W_ABS, _arg(arg)),
        _ins(_JSET_K, SETID, 0, 1),
        _ins(_RET_K, RET_ERRNO | errno.EPERM),
        _ins(_RET_K, RET_ALLOW),
    ]


def _deny_if_creating(nr: int, flags: int, mode: int) -> list[tuple[int, int, int, int]]:
    return [
        _ins(_LD_W_ABS, _OFF_NR),
        _ins(_JEQ_K, nr, 0, 6),
        _ins(_LD_W_ABS, _arg(flags)),
        _ins(_JSET_K, O_CREAT | O_TMPFILE, 0, 3),
        _ins(_LD_W_ABS, _arg(mode)),
        _ins(_JSET_K, SETID, 0, 1),
        _ins(_RET_K, RET_ERRNO | errno.EPERM),
        _ins(_RET_K, RET_ALLOW),
    ]


def _deny_devices(nr: int, mode: int) -> list[tuple[int, int, int, int]]:
    return [
        _ins(_LD_W_ABS, _OFF_NR),
        _ins(_JEQ_K, nr, 0, 7),
        _ins(_LD_W_ABS, _arg(mode)),
        _ins(_JSET_K, SETID, 3, 0),
        _ins(_AND_K, S_IFMT),
        _ins(_JEQ_K, S_IFCHR, 1, 0),
        _ins(_JEQ_K, S_IFBLK, 0, 1),
        _ins(_RET_K, RET_ERRNO | errno.EPERM),
        _ins(_RET_K, RET_ALLOW),
    ]


def share_filter() -> list[tuple[int, int, int, int]]:
    """The seccomp program (classic BPF instructions) described in the module docstring."""
    prog = [
        _ins(_LD_W_ABS, _OFF_ARCH),
        _ins(_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        _ins(_RET_K, RET_ERRNO | errno.EPERM),
        _ins(_LD_W_ABS, _OFF_NR),
        _ins(_JGE_K, X32_BIT, 0, 1),
        _ins(_RET_K, RET_ERRNO | errno.EPERM),
        _ins(_LD_W_ABS, _OFF_NR),
        _ins(_JEQ_K, NR["openat2"], 0, 1),
        _ins(_RET_K, RET_ERRNO | errno.ENOSYS),
    ]
    for name, arg in (("chmod", 1), ("fchmod", 1), ("fchmodat", 2), ("fchmodat2", 2)):
        prog += _deny_if_mode(NR[name], arg)
    prog += _deny_if_mode(NR["mkdir"], 1) + _deny_if_mode(NR["mkdirat"], 2)
    prog += _deny_if_mode(NR["creat"], 1)
    prog += _deny_if_creating(NR["open"], 1, 2) + _deny_if_creating(NR["openat"], 2, 3)
    prog += _deny_devices(NR["mknod"], 1) + _deny_devices(NR["mknodat"], 2)
    prog.append(_ins(_RET_K, RET_ALLOW))
    return prog


def run_filter(prog: list[tuple[int, int, int, int]], nr: int, args: list[int]) -> int:
    """Evaluate ``prog`` for one x86_64 call (for tests: the kernel runs the real one)."""
    data = struct.pack("<iI Q6Q", nr, AUDIT_ARCH_X86_64, 0, *(args + [0] * (6 - len(args))))
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = prog[pc]
        pc += 1
        if code == _LD_W_ABS:
            acc = struct.unpack_from("<I", data, k)[0]
        elif code == _AND_K:
            acc &= k
        elif code == _RET_K:
            return k
        else:
            hit = {_JEQ_K: acc == k, _JGE_K: acc >= k, _JSET_K: bool(acc & k)}[code]
            pc += jt if hit else jf


@dataclass(frozen=True)
class Jail:
    """What a share-serving process keeps: capability numbers (nothing else survives),
    and the uid/gid it runs as (0 = stay root; otherwise the kept capabilities are
    ambient, so they survive ``exec`` as that uid)."""

    caps: tuple[int, ...] = FILE_CAPS
    seccomp: bool = True
    uid: int = 0


def preexec(jail: Jail) -> Callable[[], None]:
    """A preexec_fn: die with the parent, keep ``jail.caps`` only, install the filter.

    Everything is resolved before the fork; the child only makes system calls.
    """
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    prctl, syscall = libc.prctl, libc.syscall
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prog = share_filter()
    raw = b"".join(struct.pack("<HBBI", *i) for i in prog)
    buf = ctypes.create_string_buffer(raw, len(raw))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(prog), ctypes.cast(buf, ctypes.c_void_p))
    keep = 0
    for c in jail.caps:
        keep |= 1 << c
    # capset(2): header {version 3, pid 0} and two data words (caps 0-31, 32-63).
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    data = (ctypes.c_uint32 * 6)(keep & 0xFFFFFFFF, keep & 0xFFFFFFFF, keep & 0xFFFFFFFF, 0, 0, 0)
    sys_capset = 126

    uid = jail.uid

    parent = os.getpid()

    def run() -> None:
        for cap in range(CAP_LAST + 1):
            if not keep & (1 << cap):
                prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
        if uid:
            prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0)
            if libc.setgroups(0, None) or libc.setresgid(uid, uid, uid):
                raise OSError(ctypes.get_errno(), "setresgid")
            if libc.setresuid(uid, uid, uid):
                raise OSError(ctypes.get_errno(), "setresuid")
        if syscall(sys_capset, header, data) != 0:
            raise OSError(ctypes.get_errno(), "capset")
        if uid:
            for cap in jail.caps:
                if prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) != 0:
                    raise OSError(ctypes.get_errno(), "ambient capabilities")
        # After the credential changes: each of them clears the parent-death signal.
        prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)  # the parent died before the signal was armed
        if jail.seccomp:
            if prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "no_new_privs")
            ptr = ctypes.cast(ctypes.pointer(fprog), ctypes.c_void_p).value or 0
            if prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ptr, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "seccomp")

    return run
