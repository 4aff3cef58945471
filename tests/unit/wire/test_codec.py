from __future__ import annotations

import pytest

from cocoon.wire import agent as w
from cocoon.wire import codec
from cocoon.wire import service as s


def test_every_agent_schema_round_trips() -> None:
    samples = [
        w.CreateSandboxRequest(
            "sb",
            "host",
            [w.Storage("9p", "cocoon", "/run/x", ["a"])],
            123,
            b"\x00\xffseed",
            ["1.1.1.1"],
        ),
        w.CreateContainerRequest("c1", {"process": {"args": ["sh"]}}, "/run/r", True, False),
        w.ReadStreamResponse(b"\x00binary\xff", True),
        w.WaitProcessResponse(137, 42),
        w.ListProcessesResponse([w.ProcessInfo(1, ["sh", "-c", "x"])]),
        s.WaitResponse(7, 1, "", {"boot": 1.5}),
    ]
    for obj in samples:
        assert codec.decode(type(obj), codec.encode(obj)) == obj


def test_methods_tables_name_dataclasses() -> None:
    import dataclasses

    for table in (w.METHODS, s.METHODS):
        for req, resp in table.values():
            assert dataclasses.is_dataclass(req) and dataclasses.is_dataclass(resp)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b'{"container_id": 5}', "container_id: expected str"),
        (b'{"container_id": "c", "signal": "9"}', "signal: expected an integer"),
        (b'{"container_id": "c", "signal": true}', "signal: expected an integer"),
        (b"[]", "expected an object"),
        (b"{not json", "invalid JSON"),
        (b"{}", "missing field 'container_id'"),
    ],
)
def test_bad_messages_name_the_field(payload: bytes, message: str) -> None:
    with pytest.raises(codec.SchemaError, match=message):
        codec.decode(w.SignalProcessRequest, payload)


def test_bad_base64_and_nested() -> None:
    with pytest.raises(codec.SchemaError, match="data: invalid base64"):
        codec.decode(w.ReadStreamResponse, b'{"data": "***"}')
    with pytest.raises(codec.SchemaError, match=r"storages\[0\]: missing field 'driver'"):
        codec.decode(w.CreateSandboxRequest, b'{"sandbox_id": "x", "storages": [{}]}')


def test_unknown_fields_are_ignored_for_compatibility() -> None:
    out = codec.decode(w.ContainerRequest, b'{"container_id": "c", "future": 1}')
    assert out == w.ContainerRequest("c")
