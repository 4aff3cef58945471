"""A checkpoint's disk packs: data extents only, holes kept, damage refused."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import pytest

from cocoon.checkpoint import image


def _sparse(path: Path, size: int, writes: dict[int, bytes]) -> None:
    with open(path, "wb") as fh:
        fh.truncate(size)
        for off, data in writes.items():
            fh.seek(off)
            fh.write(data)


def test_a_sparse_disk_packs_to_its_data_and_comes_back_sparse(tmp_path: Path) -> None:
    src, packed, back = tmp_path / "s", tmp_path / "s.gz", tmp_path / "b"
    writes = {0: b"head" * 1024, 5 << 30: os.urandom(1 << 20), (16 << 30) - 4096: b"t" * 4096}
    _sparse(src, 16 << 30, writes)
    copied = image.pack_disk(src, packed)
    assert copied < 8 << 20  # the data only, not 16 GiB
    assert packed.stat().st_size < 4 << 20
    image.unpack_disk(packed, back)
    assert back.stat().st_size == 16 << 30
    assert back.stat().st_blocks * 512 < 16 << 20  # still sparse
    with open(back, "rb") as fh:
        for off, data in writes.items():
            fh.seek(off)
            assert fh.read(len(data)) == data
        fh.seek(1 << 30)
        assert fh.read(4096) == bytes(4096)


def test_an_empty_disk_round_trips(tmp_path: Path) -> None:
    src, packed, back = tmp_path / "e", tmp_path / "e.gz", tmp_path / "b"
    _sparse(src, 1 << 20, {})
    assert image.pack_disk(src, packed) == 0
    image.unpack_disk(packed, back)
    assert back.stat().st_size == 1 << 20


def test_a_truncated_or_forged_pack_is_refused(tmp_path: Path) -> None:
    src, packed = tmp_path / "s", tmp_path / "s.gz"
    _sparse(src, 1 << 20, {4096: b"x" * 8192})
    image.pack_disk(src, packed)
    whole = gzip.decompress(packed.read_bytes())
    cut = tmp_path / "cut.gz"
    cut.write_bytes(gzip.compress(whole[: len(whole) - 20]))
    with pytest.raises(ValueError, match="truncated"):
        image.unpack_disk(cut, tmp_path / "b1")
    forged = tmp_path / "forged.gz"
    forged.write_bytes(gzip.compress((1 << 60).to_bytes(8, "big") + (1).to_bytes(8, "big") + b"x"))
    with pytest.raises(ValueError, match="damaged"):
        image.unpack_disk(forged, tmp_path / "b2")


def test_the_vm_stream_pumps_compress_and_restore_it(tmp_path: Path) -> None:
    data = os.urandom(1 << 16) + bytes(4 << 20)  # mostly zero pages, as a guest's RAM
    r, w = os.pipe()
    pump = image.compress_from(r, tmp_path / "vm.gz")
    os.write(w, data[: 1 << 20])
    os.write(w, data[1 << 20 :])
    os.close(w)
    pump.join(10)
    assert pump.bytes_in == len(data) and pump.bytes_out < len(data) // 10
    assert zlib.decompress((tmp_path / "vm.gz").read_bytes(), 31) == data
    r, w = os.pipe()
    back = image.decompress_into(tmp_path / "vm.gz", w)
    got = b""
    while chunk := os.read(r, 1 << 20):
        got += chunk
    os.close(r)
    back.join(10)
    assert got == data
