from __future__ import annotations

import struct

import pytest

from cocoon.ttrpc import framing
from cocoon.ttrpc.envelope import DecodeError, Request, Response, Status


def test_frame_round_trip() -> None:
    frame = framing.Frame(7, framing.FrameType.REQUEST, 0, b"hello")
    data = framing.encode(frame)
    assert data[:10] == struct.pack(">IIBB", 5, 7, 1, 0)
    out, rest = framing.decode(data + b"extra")
    assert out == frame
    assert rest == b"extra"


def test_truncated_header_and_payload() -> None:
    data = framing.encode(framing.Frame(1, 1, 0, b"abcdef"))
    with pytest.raises(framing.FrameError, match="truncated header"):
        framing.decode(data[:5])
    with pytest.raises(framing.FrameError, match="truncated payload"):
        framing.decode(data[:12])


def test_oversized_frames_are_refused_both_ways() -> None:
    with pytest.raises(framing.FrameError, match="4 MiB message limit"):
        framing.encode(framing.Frame(1, 1, 0, b"x" * (framing.MAX_PAYLOAD + 1)))
    header = struct.pack(">IIBB", framing.MAX_PAYLOAD + 1, 1, 1, 0)
    with pytest.raises(framing.FrameError, match="4 MiB message limit"):
        framing.decode_header(header)


def test_request_envelope_round_trip() -> None:
    req = Request(
        "containerd.task.v2.Task",
        "Create",
        b"\x00\x01payload",
        5_000_000_000,
        [("k", "v"), ("a", "b")],
    )
    assert Request.decode(req.encode()) == req


def test_request_field_numbers_match_ttrpc() -> None:
    # service=1 (0x0a), method=2 (0x12), payload=3 (0x1a), timeout=4 (0x20)
    raw = Request("s", "m", b"p", 1).encode()
    assert raw == b"\x0a\x01s\x12\x01m\x1a\x01p\x20\x01"


def test_response_with_status() -> None:
    resp = Response(Status(5, "not found"), b"")
    out = Response.decode(resp.encode())
    assert out.status.code == 5 and out.status.message == "not found"
    ok = Response(payload=b"data")
    assert Response.decode(ok.encode()).payload == b"data"
    assert Response.decode(ok.encode()).status.code == 0


def test_malformed_envelope() -> None:
    with pytest.raises(DecodeError):
        Request.decode(b"\x0a\x05ab")  # length 5, only 2 bytes
    with pytest.raises(DecodeError):
        Request.decode(b"\x0b")  # wire type 3 (groups) unsupported
