"""Detached copies of host trees for the share, with the host side's flags set on them.

Why not ``mount --bind`` + remount: a remount changes only the mount it is
applied to, never the slave copies that mount propagation made of it, and the
copy in ``shared/`` is the one QEMU serves (so a guest could write "read-only"
binds). Here each source is cloned with ``open_tree(OPEN_TREE_CLONE|
AT_RECURSIVE)``, its flags (``nosuid,nodev`` always, ``ro`` when asked) and its
propagation are set on the whole detached tree with ``mount_setattr``, and only
then is it attached with ``move_mount``: every copy made from it after that
carries the same flags.

Where the clone comes from: the service lives in a private mount namespace,
a copy taken when it started (and this host's ``/`` is private), so sources
mounted on the host later are not in it. :func:`remember_host_namespace` keeps
an fd of the namespace the service was started in; a short-lived forked child
(single-threaded, as ``setns(CLONE_NEWNS)`` requires) enters it, clones the
trees there and sends the fds back over a socketpair. Sources the service
mounted itself (the shim's rootfs) are cloned locally.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from cocoon.errors import CocoonError, InvalidArgument

SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_MOUNT_SETATTR = 442
SYS_OPENAT2 = 437
RESOLVE_BENEATH = 0x08
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = 0x04
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
CLONE_NEWNS = 0x00020000

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long
_host_ns: int | None = None


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


@dataclass(frozen=True)
class TreeRequest:
    """One source to clone: where, and whether the host's namespace holds it."""

    path: str
    in_host: bool = True
    # Resolve ``rest`` beneath this root, never following a symlink out of it
    # (a kubelet volume, cocoon.storage.volumes); "" = open ``path`` as runc does.
    beneath: str = ""
    rest: str = ""


def _check(rc: int, what: str) -> int:
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return rc


def remember_host_namespace() -> None:
    """Keep an fd of the current mount namespace; call just before ``unshare``."""
    global _host_ns
    if _host_ns is None:
        _host_ns = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)


def open_tree(path: str) -> int:
    """A detached recursive clone of the tree at ``path`` (an O_CLOEXEC fd)."""
    flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE
    return _check(_libc.syscall(SYS_OPEN_TREE, AT_FDCWD, path.encode(), flags), f"clone {path}")


def open_tree_beneath(root: str, rest: str) -> int:
    """A detached clone of ``root/rest``, ``rest`` resolved beneath ``root``: a symlink
    (or ``..``) that leads out of it fails with EXDEV, magic links with ELOOP."""
    from cocoon.storage.mountpoints import RESOLVE_NO_MAGICLINKS, _OpenHow

    rfd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        how = _OpenHow(os.O_PATH | os.O_CLOEXEC, 0, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)
        fd = _check(
            _libc.syscall(SYS_OPENAT2, rfd, rest.encode(), ctypes.byref(how), 24), f"open {rest}"
        )
    finally:
        os.close(rfd)
    try:
        flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE | AT_EMPTY_PATH
        return _check(_libc.syscall(SYS_OPEN_TREE, fd, b"", flags), f"clone {root}/{rest}")
    finally:
        os.close(fd)


def _open_request(r: TreeRequest) -> int:
    return open_tree_beneath(r.beneath, r.rest) if r.beneath else open_tree(r.path)


def set_attrs(tree: int, readonly: bool, propagation: int) -> None:
    """nosuid, nodev (and ro) and ``propagation`` on every mount of ``tree``."""
    attr = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | (MOUNT_ATTR_RDONLY if readonly else 0)
    ma = _MountAttr(attr, 0, propagation, 0)
    flags = AT_EMPTY_PATH | AT_RECURSIVE
    _check(
        _libc.syscall(SYS_MOUNT_SETATTR, tree, b"", flags, ctypes.byref(ma), ctypes.sizeof(ma)),
        "mount_setattr",
    )


def attach(tree: int, target: str) -> None:
    """Attach the detached ``tree`` on ``target`` (in this process's namespace)."""
    _check(
        _libc.syscall(
            SYS_MOVE_MOUNT, tree, b"", AT_FDCWD, target.encode(), MOVE_MOUNT_F_EMPTY_PATH
        ),
        f"attach on {target}",
    )


def clone_trees(requests: Sequence[TreeRequest]) -> list[int]:
    """Detached clones (fds) of each request's tree, in order.

    Raises InvalidArgument naming a source that cannot be cloned (for example,
    it no longer exists on the host); no fd is left open then.
    """
    out: list[int | None] = [None] * len(requests)
    remote = [i for i, r in enumerate(requests) if r.in_host and _host_ns is not None]
    try:
        for i, r in enumerate(requests):
            if i not in remote:
                out[i] = _clone_or_explain(r)
        if remote:
            cloned = _clone_in_host([requests[i] for i in remote])
            for i, tree in zip(remote, cloned, strict=True):
                out[i] = tree
    except BaseException:
        close_all([fd for fd in out if fd is not None])
        raise
    return [fd for fd in out if fd is not None]


def _clone_or_explain(r: TreeRequest) -> int:
    try:
        return _open_request(r)
    except OSError as exc:
        raise _bad_source(r, exc.errno or 0) from exc


def _bad_source(r: TreeRequest, err: int) -> InvalidArgument:
    path = r.path
    if err == errno.ENOENT:
        return InvalidArgument(f"bind source {path} does not exist")
    if r.beneath and err in (errno.EXDEV, errno.ELOOP):
        return InvalidArgument(
            f"bind source {path}: a symlink in it leads out of its volume {r.beneath}"
        )
    return InvalidArgument(f"bind source {path}: {os.strerror(err)}")


def _clone_in_host(paths: list[TreeRequest]) -> list[int]:
    """Clone ``paths`` in the host's mount namespace (a forked child does it)."""
    assert _host_ns is not None
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child only makes system calls, then _exit
        rc = 1
        try:
            parent.close()
            _check(_libc.setns(_host_ns, CLONE_NEWNS), "setns")
            fds: list[int] = []
            errors: list[int] = []
            for p in paths:
                try:
                    fds.append(_open_request(p))
                    errors.append(0)
                except OSError as exc:
                    errors.append(exc.errno or 1)
            socket.send_fds(child, [json.dumps(errors).encode()], fds)
            rc = 0
        except BaseException:  # noqa: BLE001 - the parent reports a missing answer
            pass
        finally:
            os._exit(rc)
    child.close()
    try:
        with parent:
            msg, fds, _, _ = socket.recv_fds(parent, 65536, len(paths))
    finally:
        os.waitpid(pid, 0)
    if not msg:
        for fd in fds:
            os.close(fd)
        raise CocoonError("cannot enter the host's mount namespace to clone the bind sources")
    errors = json.loads(msg)
    for p, err in zip(paths, errors, strict=True):
        if err:
            for fd in fds:
                os.close(fd)
            raise _bad_source(p, err)
    if len(fds) != len(paths):
        for fd in fds:
            os.close(fd)
        raise CocoonError("the host namespace helper sent too few trees")
    return list(fds)


TMPFS_MAGIC = 0x01021994


def fs_type(fd: int) -> int:
    """``f_type`` of the filesystem ``fd`` is on (fstatfs)."""
    buf = ctypes.create_string_buffer(128)  # struct statfs; f_type is its first long
    _check(_libc.fstatfs(fd, buf), "fstatfs")
    return int(ctypes.c_long.from_buffer(buf).value)


def close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
