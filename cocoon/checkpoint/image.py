"""The files of a checkpoint image: the compressed VM stream and the disks.

QEMU writes its migration stream into a pipe (it is chrooted and opens no path);
a thread here compresses it into the image file, and the reverse on restore.
Disks are copied as blobs, sparse, never mounted or parsed by the host.
"""

from __future__ import annotations

import errno
import os
import threading
import zlib
from pathlib import Path

CHUNK = 1 << 20
LEVEL = 1  # zero pages are already tiny in the stream; speed matters more


class Pump:
    """A thread moving bytes between a pipe end and a file, (de)compressing."""

    def __init__(self, target: object) -> None:
        self.error: BaseException | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self._thread = threading.Thread(target=self._run, args=(target,), daemon=True)
        self._thread.start()

    def _run(self, target: object) -> None:
        try:
            assert callable(target)
            target(self)
        except BaseException as exc:  # noqa: BLE001 - reported by join()
            self.error = exc

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("the checkpoint stream did not finish")
        if self.error is not None:
            raise self.error


def _create(path: Path) -> int:
    """A new image file, 0600 whatever the umask: it holds the guest's memory."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)


def compress_from(read_fd: int, path: Path) -> Pump:
    """Read the pipe ``read_fd`` to its end (then close it), writing gzip to ``path``."""

    def run(pump: Pump) -> None:
        comp = zlib.compressobj(LEVEL, zlib.DEFLATED, 31)
        try:
            with open(_create(path), "wb") as out:
                while chunk := os.read(read_fd, CHUNK):
                    pump.bytes_in += len(chunk)
                    out.write(comp.compress(chunk))
                out.write(comp.flush())
                out.flush()
                os.fsync(out.fileno())
                pump.bytes_out = out.tell()
        finally:
            os.close(read_fd)

    return Pump(run)


def decompress_into(path: Path, write_fd: int) -> Pump:
    """Write the gunzipped ``path`` into the pipe ``write_fd`` (then close it)."""

    def run(pump: Pump) -> None:
        dec = zlib.decompressobj(31)
        try:
            with open(path, "rb") as src:
                while chunk := src.read(CHUNK):
                    pump.bytes_in += len(chunk)
                    _write_all(write_fd, dec.decompress(chunk))
                _write_all(write_fd, dec.flush())
                if not dec.eof:
                    raise ValueError(f"{path} is truncated")
        except BrokenPipeError:
            pass  # QEMU stopped reading: its own error says why
        finally:
            os.close(write_fd)

    return Pump(run)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# A disk in the image: its data extents only, gzip. Engines tar the image dir with
# holes expanded (containerd: a 16 GiB sparse scratch file would become 16 GiB).
# Records: offset (8 bytes, big endian), length (8), then the data; the last has
# length 0 and the file's size as offset.
_HEADER = 16


def pack_disk(src: Path, dst: Path) -> int:
    """Write ``src``'s data extents to ``dst`` (gzip); return the data bytes."""
    copied = 0
    comp = zlib.compressobj(LEVEL, zlib.DEFLATED, 31)
    fin = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with open(_create(dst), "wb") as out:
            size = os.fstat(fin).st_size
            for start, end in _extents(fin, size):
                out.write(
                    comp.compress(start.to_bytes(8, "big") + (end - start).to_bytes(8, "big"))
                )
                off = start
                while off < end:
                    chunk = os.pread(fin, min(CHUNK, end - off), off)
                    if not chunk:
                        raise OSError(f"{src} shrank while it was saved")
                    out.write(comp.compress(chunk))
                    off += len(chunk)
                copied += end - start
            out.write(comp.compress(size.to_bytes(8, "big") + bytes(8)))
            out.write(comp.flush())
            out.flush()
            os.fsync(out.fileno())
    finally:
        os.close(fin)
    return copied


def unpack_disk(src: Path, dst: Path) -> None:
    """The sparse disk file ``dst`` back from ``pack_disk``'s ``src``; raises ValueError
    for a damaged or truncated pack (nothing is trusted: offsets are bounded)."""
    dec = zlib.decompressobj(31)
    buf = bytearray()
    fout = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        with open(src, "rb") as fin:
            remaining = 0  # data bytes still due for the current extent
            pos = 0
            done = False
            while not done:
                raw = fin.read(CHUNK)
                if raw:
                    buf += dec.decompress(raw)
                elif not buf:
                    raise ValueError(f"{src} is truncated")
                while buf and not done:
                    if remaining:
                        take = bytes(buf[:remaining])
                        del buf[: len(take)]
                        os.pwrite(fout, take, pos)
                        pos += len(take)
                        remaining -= len(take)
                        continue
                    if len(buf) < _HEADER:
                        if not raw:
                            raise ValueError(f"{src} is truncated")
                        break
                    off = int.from_bytes(buf[:8], "big")
                    length = int.from_bytes(buf[8:16], "big")
                    del buf[:_HEADER]
                    if off > 1 << 46 or length > 1 << 46:
                        raise ValueError(f"{src} is damaged")
                    if length == 0:
                        os.ftruncate(fout, off)
                        done = True
                    else:
                        pos, remaining = off, length
                if not raw and not done and not buf:
                    raise ValueError(f"{src} is truncated")
        os.fsync(fout)
    finally:
        os.close(fout)


def _extents(fd: int, size: int) -> list[tuple[int, int]]:
    out = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                break
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        out.append((start, end))
        pos = end
    return out
