"""ttRPC frames: a 10-byte header and a payload.

``length`` u32 BE (payload bytes, at most 4 MiB), ``stream`` u32 BE (odd for
client-initiated streams), ``type`` u8, ``flags`` u8.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

HEADER = struct.Struct(">IIBB")
HEADER_SIZE = HEADER.size
MAX_PAYLOAD = 4 << 20


class FrameType(IntEnum):
    REQUEST = 1
    RESPONSE = 2
    DATA = 3


FLAG_REMOTE_CLOSED = 0x01
FLAG_REMOTE_OPEN = 0x02


class FrameError(Exception):
    """A frame that cannot be part of a valid ttRPC stream."""


@dataclass(frozen=True)
class Frame:
    stream_id: int
    type: int
    flags: int
    payload: bytes


def encode(frame: Frame) -> bytes:
    """Serialise a frame; raises FrameError when the payload is too large."""
    if len(frame.payload) > MAX_PAYLOAD:
        raise FrameError(
            f"a payload of {len(frame.payload)} bytes, more than ttRPC's "
            f"{MAX_PAYLOAD >> 20} MiB message limit"
        )
    return HEADER.pack(len(frame.payload), frame.stream_id, frame.type, frame.flags) + frame.payload


def decode_header(header: bytes) -> tuple[int, int, int, int]:
    """Return (length, stream_id, type, flags); raises FrameError on a bad header."""
    if len(header) != HEADER_SIZE:
        raise FrameError(f"truncated header: {len(header)} of {HEADER_SIZE} bytes")
    length, stream_id, ftype, flags = HEADER.unpack(header)
    if length > MAX_PAYLOAD:
        raise FrameError(
            f"a frame of {length} bytes, more than ttRPC's {MAX_PAYLOAD >> 20} MiB message limit"
        )
    return length, stream_id, ftype, flags


def decode(data: bytes) -> tuple[Frame, bytes]:
    """Decode one frame from the front of ``data``; return it and the rest.

    Raises FrameError when ``data`` holds less than a whole frame.
    """
    length, stream_id, ftype, flags = decode_header(data[:HEADER_SIZE])
    end = HEADER_SIZE + length
    if len(data) < end:
        raise FrameError(f"truncated payload: {len(data) - HEADER_SIZE} of {length} bytes")
    return Frame(stream_id, ftype, flags, bytes(data[HEADER_SIZE:end])), data[end:]
