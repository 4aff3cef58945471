"""What the host parses from the guest (untrusted): ttRPC frames, envelopes, the
agent's JSON answers, the virtio-serial byte stream. Only the project's own errors
come out, never another exception or a hang."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cocoon.ttrpc import framing
from cocoon.ttrpc.client import Client
from cocoon.ttrpc.envelope import DecodeError, Request, Response
from cocoon.ttrpc.status import ConnectionLost, RPCError
from cocoon.wire import agent as w
from cocoon.wire import codec
from cocoon.wire import service as s
from tests.unit.fuzz.strategies import FUZZ, near

REPLY_TYPES = sorted({resp for _, resp in w.METHODS.values()}, key=lambda t: t.__name__)
REQUEST_TYPES = sorted(
    {req for req, _ in (*w.METHODS.values(), *s.METHODS.values())}, key=lambda t: t.__name__
)


@FUZZ
@given(st.binary(max_size=64))
def test_frames(data: bytes) -> None:
    try:
        frame, rest = framing.decode(data)
    except framing.FrameError:
        return
    assert framing.encode(frame) + rest == data


@FUZZ
@given(st.binary(max_size=128))
def test_envelopes(data: bytes) -> None:
    for cls in (Request, Response):
        with contextlib.suppress(DecodeError):
            cls.decode(data)


@FUZZ
@given(st.sampled_from(REPLY_TYPES).flatmap(lambda t: st.tuples(st.just(t), near(t))))
def test_agent_answers(case: tuple[type, object]) -> None:
    cls, value = case
    try:
        payload = json.dumps(value).encode()
    except (ValueError, OverflowError):
        return
    with contextlib.suppress(codec.SchemaError):
        codec.decode(cls, payload)


@FUZZ
@given(st.sampled_from(REQUEST_TYPES + REPLY_TYPES), st.binary(max_size=64))
def test_agent_answers_as_raw_bytes(cls: type, data: bytes) -> None:
    with contextlib.suppress(codec.SchemaError):
        codec.decode(cls, data)


@FUZZ
@given(st.sampled_from(REQUEST_TYPES).flatmap(lambda t: st.tuples(st.just(t), near(t))))
def test_requests_the_guest_agent_and_the_service_decode(case: tuple[type, object]) -> None:
    cls, value = case
    try:
        payload = json.dumps(value).encode()
    except (ValueError, OverflowError):
        return
    with contextlib.suppress(codec.SchemaError):
        codec.decode(cls, payload)


class _Stream:
    """A transport replaying fixed bytes, then end of stream (a guest's virtio-serial)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.written = b""

    async def read_exactly(self, n: int) -> bytes:
        if len(self.data) < n:
            raise ConnectionLost("connection closed by peer")
        out, self.data = self.data[:n], self.data[n:]
        return out

    async def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.data = b""


def _frames(parts: list[tuple[int, int, int, bytes]]) -> bytes:
    return b"".join(
        framing.HEADER.pack(len(p), sid, ftype, flags) + p for sid, ftype, flags, p in parts
    )


STREAMS = st.binary(max_size=96) | st.lists(
    st.tuples(
        st.sampled_from([1, 3, 2, 0, 2**32 - 1]),
        st.integers(0, 255),
        st.integers(0, 255),
        st.binary(max_size=32),
    ),
    max_size=4,
).map(_frames)


@FUZZ
@given(STREAMS)
def test_the_virtio_serial_stream(data: bytes) -> None:
    """A pending call ends with an error of ours; the reader never fails unexpectedly."""

    async def main() -> None:
        client = Client(_Stream(data), "fuzzed guest")
        with contextlib.suppress(RPCError, ConnectionLost, TimeoutError):
            await client.call("grpc.AgentService", "Check", b"", timeout=2)
        await client.conn.wait_closed()
        assert not client.conn.close_reason.startswith("reader failed"), client.conn.close_reason
        await client.close()

    asyncio.run(main())


def test_a_valid_answer_still_gets_through() -> None:
    """The fuzzed stream's harness works: a well-formed answer is accepted."""
    answer = w.CheckResponse(version="1", kernel="6.1", uptime=1.0)
    reply = Response(payload=codec.encode(answer)).encode()

    async def main() -> bytes:
        client = Client(_Stream(_frames([(1, framing.FrameType.RESPONSE, 0, reply)])), "guest")
        try:
            return await client.call("grpc.AgentService", "Check", b"", timeout=2)
        finally:
            await client.close()

    assert codec.decode(w.CheckResponse, asyncio.run(main())) == answer


@FUZZ
@given(
    st.integers(min_value=1, max_value=400_000),
    st.sampled_from([b"[", b'{"a":', b'{"processes":[']),
)
def test_deeply_nested_answers(depth: int, opener: bytes) -> None:
    """A guest can nest JSON deeper than Python's recursion limit within 4 MiB."""
    for cls in (w.CheckResponse, w.ListProcessesResponse, w.StatsResponse):
        with pytest.raises(codec.SchemaError):
            codec.decode(cls, opener * depth)


@FUZZ
@given(st.integers(min_value=4000, max_value=100_000))
def test_huge_numbers(digits: int) -> None:
    with pytest.raises(codec.SchemaError):
        codec.decode(w.WaitProcessResponse, b'{"status": ' + b"9" * digits + b"}")
