from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

from cocoon.shim.events import EVENTS_SERVICE, TOPICS, Publisher, envelope, pack
from cocoon.shim.proto import events_pb2 as ev
from cocoon.shim.proto import shim_pb2 as pb
from cocoon.shim.proto import ttrpc_events_pb2 as tev
from cocoon.ttrpc.server import Server


def test_every_task_event_has_containerd_topic() -> None:
    names = {m.DESCRIPTOR.name: t for m, t in TOPICS.items()}
    assert names["TaskExit"] == "/tasks/exit"
    assert names["TaskExecAdded"] == "/tasks/exec-added"
    assert names["TaskOOM"] == "/tasks/oom"
    assert set(names) == set(ev.DESCRIPTOR.message_types_by_name) - {"TaskIO"}


def test_envelope_carries_a_typeurl_any() -> None:
    req = envelope("k8s.io", ev.TaskExit(container_id="c", id="c", exit_status=3), 5_000_000_001)
    assert req.envelope.namespace == "k8s.io"
    assert req.envelope.topic == "/tasks/exit"
    assert (req.envelope.timestamp.seconds, req.envelope.timestamp.nanos) == (5, 1)
    # containerd's typeurl registers gogo messages by bare full name (no type.googleapis.com/).
    assert req.envelope.event.type_url == "containerd.events.TaskExit"
    assert ev.TaskExit.FromString(req.envelope.event.value).exit_status == 3
    assert pack(pb.StartResponse(pid=1)).type_url == "containerd.task.v2.StartResponse"


def test_publisher_forwards_over_ttrpc_in_order(tmp_path: Path) -> None:
    got: list[tev.ForwardRequest] = []

    async def main() -> list[str]:
        server = Server()

        async def forward(payload: bytes) -> bytes:
            got.append(tev.ForwardRequest.FromString(payload))
            return b""

        server.register(EVENTS_SERVICE, "Forward", forward)
        srv = await server.listen_unix(str(tmp_path / "ttrpc.sock"))
        pub = Publisher("ns1", f"unix://{tmp_path / 'ttrpc.sock'}", "", "/unused")
        pub.publish(ev.TaskStart(container_id="c", pid=1))
        pub.publish(ev.TaskExit(container_id="c", id="c", exit_status=1))
        await pub.close()
        srv.close()
        await srv.wait_closed()
        for _ in range(100):  # the server side sees the client go and ends its tasks
            if len(asyncio.all_tasks()) <= 1:
                break
            await asyncio.sleep(0.01)
        return pub.sent

    assert asyncio.run(main()) == ["/tasks/start", "/tasks/exit"]
    assert [g.envelope.topic for g in got] == ["/tasks/start", "/tasks/exit"]
    assert all(g.envelope.namespace == "ns1" for g in got)


def test_publisher_falls_back_to_the_publish_binary(tmp_path: Path) -> None:
    """Without a ttRPC address: ``<binary> --address A publish --topic T --namespace N``."""
    out = tmp_path / "published"
    binary = tmp_path / "containerd"
    binary.write_text(f'#!/bin/sh\necho "$@" > {out}.args\ncat > {out}\n')
    os.chmod(binary, stat.S_IRWXU)

    async def main() -> list[str]:
        pub = Publisher("ns1", str(tmp_path / "missing.sock"), str(binary), "/c.sock")
        pub.publish(ev.TaskOOM(container_id="c9"))
        await pub.close()
        return pub.sent

    assert asyncio.run(main()) == ["/tasks/oom"]
    assert (tmp_path / "published.args").read_text().split() == [
        "--address", "/c.sock", "publish", "--topic", "/tasks/oom", "--namespace", "ns1",
    ]  # fmt: skip
    from google.protobuf import any_pb2

    event = any_pb2.Any.FromString(out.read_bytes())
    assert event.type_url == "containerd.events.TaskOOM"
    assert ev.TaskOOM.FromString(event.value).container_id == "c9"
