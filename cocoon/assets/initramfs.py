"""The initramfs: busybox-static, the kernel modules, ``/etc/modorder`` and ``/init``.

Module resolution is split into a pure ordering step (:func:`order_modules`,
tested with a fake dependency map) and the lookups that feed it (``modinfo``,
``modules.builtin``). The cpio archive is written here too (``newc`` format,
sorted names, inode numbers in order, mtime 0, owner root) so the same inputs
give the same bytes, and device nodes need no ``mknod`` on the host.
"""

from __future__ import annotations

import gzip
import lzma
import os
import stat
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cocoon.assets.errors import BuildError
from cocoon.assets.initscript import APPLETS, INIT_SCRIPT

#: Ordering edges ``modinfo -F depends`` does not give. ``libcrc32c`` only has a
#: soft dependency ("pre: crc32c", an alias); without a crc32c provider loaded
#: first, ``libcrc32c`` fails and an erofs mount then fails with "No such device".
PRE_DEPS: Mapping[str, tuple[str, ...]] = {
    "libcrc32c": ("crc32c_generic",),
    "erofs": ("crc32c_generic",),
}


def normalize(name: str) -> str:
    """Module names treat ``-`` and ``_`` alike; the kernel reports ``_``."""
    return name.replace("-", "_")


def order_modules(
    wanted: Sequence[str],
    depends: Mapping[str, Sequence[str]],
    pre: Mapping[str, Sequence[str]] = PRE_DEPS,
    skip: Iterable[str] = (),
) -> list[str]:
    """Load order for ``wanted``: every module after its dependencies, each once.

    ``depends`` maps a module to its hard dependencies; ``pre`` adds ordering
    edges (they only apply to modules already in the set). Modules in ``skip``
    (built into the kernel) are left out, with their dependencies still loaded.
    Otherwise the order follows ``wanted``. A dependency cycle does not loop:
    the edge that closes it is ignored.
    """
    skipped = {normalize(s) for s in skip}
    wanted_n = [normalize(m) for m in wanted]
    closure: set[str] = set()
    stack = list(wanted_n)
    while stack:
        mod = stack.pop()
        if mod in closure:
            continue
        closure.add(mod)
        stack.extend(normalize(d) for d in depends.get(mod, ()) if d)

    order: list[str] = []
    done: set[str] = set()
    visiting: set[str] = set()

    def visit(mod: str) -> None:
        if mod in done or mod in visiting:
            return
        visiting.add(mod)
        deps = [normalize(d) for d in depends.get(mod, ()) if d]
        deps += [normalize(d) for d in pre.get(mod, ()) if normalize(d) in closure]
        for dep in deps:
            visit(dep)
        visiting.discard(mod)
        done.add(mod)
        if mod not in skipped:
            order.append(mod)

    for mod in wanted_n:
        visit(mod)
    return order


# --- lookups on the host ----------------------------------------------------------------------


@dataclass(frozen=True)
class ModuleInfo:
    name: str
    filename: Path | None  # None: built into the kernel
    depends: tuple[str, ...]


def builtin_modules(modules_dir: Path) -> set[str]:
    """Names of the modules built into the kernel (``modules.builtin``)."""
    try:
        text = (modules_dir / "modules.builtin").read_text()
    except OSError:
        return set()
    names = set()
    for line in text.splitlines():
        base = line.strip().rsplit("/", 1)[-1]
        if base.endswith(".ko"):
            names.add(normalize(base[:-3]))
    return names


def modinfo(kernel_version: str, name: str) -> ModuleInfo | None:
    """``modinfo -k VERSION NAME``: the module file and its hard dependencies.

    Returns None when modinfo does not know the module.

    Raises:
        BuildError: ``modinfo`` is not installed.
    """
    try:
        proc = subprocess.run(
            ["modinfo", "-k", kernel_version, name],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError as exc:
        raise BuildError("modinfo is not installed (apt-get install kmod)", exc) from exc
    if proc.returncode != 0:
        return None
    filename: Path | None = None
    depends: tuple[str, ...] = ()
    for line in proc.stdout.splitlines():
        key, _, value = line.partition(":")
        value = value.strip()
        if key == "filename" and filename is None:
            filename = None if value == "(builtin)" else Path(value)
        elif key == "depends":
            depends = tuple(normalize(d) for d in value.split(",") if d)
    return ModuleInfo(normalize(name), filename, depends)


def resolve_modules(
    wanted: Sequence[str],
    lookup: Callable[[str], ModuleInfo | None],
    builtin: set[str],
) -> list[ModuleInfo]:
    """Every module to load for ``wanted``, in load order, with its file.

    Raises:
        BuildError: a module (or a dependency) is neither a module of this
            kernel nor built into it.
    """
    infos: dict[str, ModuleInfo] = {}
    stack = [normalize(m) for m in wanted]
    while stack:
        name = stack.pop()
        if name in infos:
            continue
        info = lookup(name)
        if info is None:
            if name not in builtin:
                raise BuildError(f"kernel module {name} is missing from this kernel")
            info = ModuleInfo(name, None, ())
        infos[name] = info
        stack.extend(info.depends)
    skip = {n for n, i in infos.items() if i.filename is None}
    order = order_modules(wanted, {n: i.depends for n, i in infos.items()}, skip=skip)
    return [infos[n] for n in order]


def read_module(path: Path) -> bytes:
    """A module's ELF, decompressed if it is ``.ko.xz``, ``.ko.gz`` or ``.ko.zst``."""
    name = path.name
    if name.endswith(".ko.xz"):
        return lzma.decompress(path.read_bytes())
    if name.endswith(".ko.gz"):
        return gzip.decompress(path.read_bytes())
    if name.endswith(".ko.zst"):
        proc = subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=False)
        if proc.returncode != 0:
            raise BuildError(f"cannot decompress {path}: {proc.stderr.decode().strip()}")
        return proc.stdout
    return path.read_bytes()


# --- cpio (newc) ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CpioEntry:
    name: str  # relative, no leading "/"
    mode: int  # full st_mode (type + permissions)
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def directory(name: str, perm: int = 0o755) -> CpioEntry:
    return CpioEntry(name, stat.S_IFDIR | perm)


def regular(name: str, data: bytes, perm: int = 0o644) -> CpioEntry:
    return CpioEntry(name, stat.S_IFREG | perm, data)


def symlink(name: str, target: str) -> CpioEntry:
    return CpioEntry(name, stat.S_IFLNK | 0o777, target.encode())


def chardev(name: str, major: int, minor: int, perm: int = 0o600) -> CpioEntry:
    return CpioEntry(name, stat.S_IFCHR | perm, b"", (major, minor))


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def write_cpio(entries: Iterable[CpioEntry]) -> bytes:
    """A ``newc`` archive of ``entries`` sorted by name: inodes 1.., mtime 0, uid/gid 0."""
    out = bytearray()

    def put(ino: int, entry: CpioEntry, nlink: int) -> None:
        name = entry.name.encode() + b"\0"
        fields = (
            ino, entry.mode, 0, 0, nlink, 0, len(entry.data),
            0, 0, entry.rdev[0], entry.rdev[1], len(name), 0,
        )  # fmt: skip
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        out.extend(header + name + _pad4(len(header) + len(name)))
        out.extend(entry.data + _pad4(len(entry.data)))

    seen: set[str] = set()
    for ino, entry in enumerate(sorted(entries, key=lambda e: e.name), start=1):
        if entry.name in seen:
            raise ValueError(f"duplicate cpio entry {entry.name}")
        seen.add(entry.name)
        put(ino, entry, 2 if stat.S_ISDIR(entry.mode) else 1)
    put(0, CpioEntry("TRAILER!!!", 0), 1)
    return bytes(out)


# --- the initramfs ----------------------------------------------------------------------------


def initramfs_entries(
    busybox: bytes, modules: Sequence[tuple[str, bytes]], init_script: str = INIT_SCRIPT
) -> list[CpioEntry]:
    """The files of the initramfs: busybox and applet links, modules, modorder, /init."""
    entries = [
        directory("bin"),
        regular("bin/busybox", busybox, 0o755),
        directory("dev"),
        chardev("dev/console", 5, 1),
        directory("etc"),
        regular("etc/modorder", "".join(f"{name}\n" for name, _ in modules).encode()),
        regular("init", init_script.encode(), 0o755),
        directory("lib"),
        directory("lib/modules"),
        directory("newroot"),
        directory("proc"),
        directory("sys"),
    ]
    entries += [symlink(f"bin/{applet}", "busybox") for applet in APPLETS]
    entries += [regular(f"lib/modules/{name}.ko", data) for name, data in modules]
    return entries


@dataclass(frozen=True)
class InitramfsInfo:
    modules: tuple[str, ...]
    size: int
    uncompressed_size: int


def build_initramfs(
    kernel_version: str,
    modules_dir: Path,
    wanted: Sequence[str],
    busybox: Path,
    out: Path,
    compression: str,
) -> InitramfsInfo:
    """Write the initramfs for ``kernel_version`` to ``out``.

    Raises:
        BuildError: busybox or a module is missing, or ``compression`` is unknown.
    """
    try:
        busybox_data = busybox.read_bytes()
    except OSError as exc:
        raise BuildError(f"cannot read {busybox} (apt-get install busybox-static)", exc) from exc
    infos = resolve_modules(
        wanted, lambda name: modinfo(kernel_version, name), builtin_modules(modules_dir)
    )
    modules: list[tuple[str, bytes]] = []
    for info in infos:
        assert info.filename is not None  # built-in modules are not in the load order
        try:
            modules.append((info.name, read_module(info.filename)))
        except OSError as exc:
            raise BuildError(f"cannot read kernel module {info.name}", exc) from exc
    archive = write_cpio(initramfs_entries(busybox_data, modules))
    if compression == "gzip":
        data = gzip.compress(archive, compresslevel=1, mtime=0)
    elif compression == "none":
        data = archive
    else:
        raise BuildError(f"unknown initramfs compression {compression!r}")
    with open(out, "wb") as fh:
        fh.write(data)
    os.chmod(out, 0o644)
    return InitramfsInfo(tuple(i.name for i in infos), len(data), len(archive))
