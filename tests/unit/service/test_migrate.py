"""Live migration's control protocol (cocoon.service.migrate): addresses and frames."""

from __future__ import annotations

import asyncio
from dataclasses import asdict

import pytest

from cocoon.checkpoint import manifest as mf
from cocoon.errors import InvalidArgument, Unavailable
from cocoon.service import migrate


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("10.0.0.2:7000", ("10.0.0.2", 7000)),
        ("[fd00::2]:1", ("fd00::2", 1)),
        ("h:65535", ("h", 65535)),
    ],
)
def test_addresses(text: str, want: tuple[str, int]) -> None:
    assert migrate.parse_address(text) == want


@pytest.mark.parametrize("text", ["10.0.0.2", ":7000", "h:0", "h:70000", "h:x"])
def test_bad_addresses(text: str) -> None:
    with pytest.raises(InvalidArgument):
        migrate.parse_address(text)


def test_frames_round_trip_and_a_closed_peer_is_unavailable() -> None:
    async def go() -> None:
        reader = asyncio.StreamReader()

        class W:
            def write(self, data: bytes) -> None:
                reader.feed_data(data)

            async def drain(self) -> None:
                pass

        await migrate.send_frame(W(), {"ready": True, "nbd_port": 5})  # type: ignore[arg-type]
        assert await migrate.read_frame(reader, "x") == {"ready": True, "nbd_port": 5}
        reader.feed_data(b"\0\0")
        reader.feed_eof()
        with pytest.raises(Unavailable, match="x: the connection closed"):
            await migrate.read_frame(reader, "x")

    asyncio.run(go())


def test_a_manifest_crosses_as_json() -> None:
    m = mf.Manifest(1, "t", "v", "q", "tcg", "k", "qemu64", "pc", {}, 1, 256, False)
    m.nics = [mf.NicImage("n0", "d0", "02:00:00:00:00:01", "0x5")]
    assert mf.parse(asdict(m), "h") == m
    with pytest.raises(InvalidArgument, match="format 2"):
        mf.parse({**asdict(m), "format": 2}, "h")
