"""Guest kernel: the uncompressed ``vmlinux`` ELF, extracted from Debian's bzImage.

QEMU boots an ELF that carries the Xen PVH note directly (``-kernel vmlinux``)
on ``pc`` and ``microvm``; that skips the real-mode setup and the in-guest xz
decompression, which costs ~4.5 s under TCG (host.md §2).
"""

from __future__ import annotations

import lzma
import os
import struct
from pathlib import Path

from cocoon.assets.errors import BuildError

XZ_MAGIC = b"\xfd7zXZ\x00"
ELF_MAGIC = b"\x7fELF"
PT_NOTE = 4
XEN_ELFNOTE_PHYS32_ENTRY = 18  # the PVH entry point note QEMU looks for


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The ELF inside a bzImage (xz payload; bytes after the xz stream are ignored).

    An input that already is an ELF is returned as is.

    Raises:
        BuildError: no xz payload, a corrupt one, or the result is not an ELF.
    """
    if bzimage.startswith(ELF_MAGIC):
        return bzimage
    start = bzimage.find(XZ_MAGIC)
    if start < 0:
        raise BuildError(
            "no xz payload in the kernel image (only xz-compressed bzImages are supported)"
        )
    decomp = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    try:
        elf = decomp.decompress(bzimage[start:])
    except lzma.LZMAError as exc:
        raise BuildError("cannot decompress the kernel's xz payload", exc) from exc
    if not decomp.eof:
        raise BuildError("the kernel's xz payload is truncated")
    if not elf.startswith(ELF_MAGIC):
        raise BuildError("the kernel's xz payload is not an ELF")
    return elf


def has_pvh_note(elf: bytes) -> bool:
    """Whether a 64-bit little-endian ELF has the Xen PVH entry note in a PT_NOTE segment."""
    if len(elf) < 64 or elf[4] != 2 or elf[5] != 1:  # ELFCLASS64, ELFDATA2LSB
        return False
    (phoff,) = struct.unpack_from("<Q", elf, 32)
    phentsize, phnum = struct.unpack_from("<HH", elf, 54)
    for i in range(phnum):
        base = phoff + i * phentsize
        p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = struct.unpack_from(
            "<IIQQQQ", elf, base
        )
        if p_type != PT_NOTE:
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12 : pos + 12 + namesz]
            if ntype == XEN_ELFNOTE_PHYS32_ENTRY and name.rstrip(b"\0") == b"Xen":
                return True
            pos += 12 + ((namesz + 3) & ~3) + ((descsz + 3) & ~3)
    return False


def write_vmlinux(bzimage: Path, out: Path) -> int:
    """Extract ``bzimage`` into ``out`` (mode 0644); return the ELF's size.

    Raises:
        BuildError: the kernel cannot be read or is not a PVH-bootable ELF.
    """
    try:
        data = bzimage.read_bytes()
    except OSError as exc:
        raise BuildError(f"cannot read the kernel {bzimage}", exc) from exc
    try:
        elf = extract_vmlinux(data)
    except BuildError as exc:
        raise BuildError(f"kernel {bzimage}: {exc}") from exc
    if not has_pvh_note(elf):
        raise BuildError(f"kernel {bzimage}: the vmlinux has no Xen PVH note (QEMU cannot boot it)")
    with open(out, "wb") as fh:
        fh.write(elf)
    os.chmod(out, 0o644)
    return len(elf)
