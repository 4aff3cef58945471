"""vmlinux extraction from a synthetic bzImage."""

from __future__ import annotations

import lzma
import struct
from pathlib import Path

import pytest

from cocoon.assets import kernel as k
from cocoon.assets.errors import BuildError


def fake_elf(pvh: bool = True) -> bytes:
    """A 64-bit ELF header, one PT_NOTE program header and a note."""
    note_type = k.XEN_ELFNOTE_PHYS32_ENTRY if pvh else 1
    note = struct.pack("<III", 4, 4, note_type) + b"Xen\0" + struct.pack("<I", 0x1000000)
    phoff, ehsize, phentsize = 64, 64, 56
    note_off = phoff + phentsize
    ident = b"\x7fELF" + bytes([2, 1, 1]) + b"\0" * 9
    header = ident + struct.pack(
        "<HHIQQQIHHHHHH", 2, 62, 1, 0, phoff, 0, 0, ehsize, phentsize, 1, 64, 0, 0
    )
    phdr = struct.pack("<IIQQQQQQ", k.PT_NOTE, 4, note_off, 0, 0, len(note), len(note), 4)
    return header + phdr + note


def test_extract_finds_the_xz_payload_and_ignores_trailing_bytes() -> None:
    elf = fake_elf()
    bz = b"MZ setup code" + b"\0" * 100 + lzma.compress(elf, format=lzma.FORMAT_XZ) + b"\0TRAIL"
    assert k.extract_vmlinux(bz) == elf


def test_extract_passes_an_elf_through() -> None:
    elf = fake_elf()
    assert k.extract_vmlinux(elf) == elf


def test_extract_errors() -> None:
    with pytest.raises(BuildError, match="no xz payload"):
        k.extract_vmlinux(b"MZ nothing here")
    with pytest.raises(BuildError, match="not an ELF"):
        k.extract_vmlinux(b"MZ" + lzma.compress(b"not elf", format=lzma.FORMAT_XZ))
    truncated = lzma.compress(fake_elf(), format=lzma.FORMAT_XZ)[:-20]
    with pytest.raises(BuildError):
        k.extract_vmlinux(b"MZ" + truncated)


def test_pvh_note() -> None:
    assert k.has_pvh_note(fake_elf(pvh=True))
    assert not k.has_pvh_note(fake_elf(pvh=False))
    assert not k.has_pvh_note(b"\x7fELF")


def test_write_vmlinux(tmp_path: Path) -> None:
    bz = tmp_path / "vmlinuz"
    bz.write_bytes(b"MZ" + lzma.compress(fake_elf(), format=lzma.FORMAT_XZ))
    out = tmp_path / "vmlinux"
    assert k.write_vmlinux(bz, out) == len(fake_elf())
    assert out.read_bytes() == fake_elf()
    bz.write_bytes(b"MZ" + lzma.compress(fake_elf(pvh=False), format=lzma.FORMAT_XZ))
    with pytest.raises(BuildError, match="PVH"):
        k.write_vmlinux(bz, out)
    with pytest.raises(BuildError, match="cannot read"):
        k.write_vmlinux(tmp_path / "missing", out)
