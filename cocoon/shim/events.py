"""Task events to containerd: over ttRPC to ``TTRPC_ADDRESS``, else via the publish binary.

containerd's CRI plugin learns that a container exited only from ``/tasks/exit``,
so events are queued and sent in order by one task; a failed ttRPC send falls
back to ``<publish-binary> --address A publish --topic T --namespace N`` with the
event (a protobuf Any) on stdin, which is how containerd's own shims do it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from google.protobuf import any_pb2, timestamp_pb2
from google.protobuf.message import Message

from cocoon.shim.proto import events_pb2 as ev
from cocoon.shim.proto import ttrpc_events_pb2 as tev
from cocoon.ttrpc.client import Client
from cocoon.ttrpc.status import ConnectionLost, RPCError
from cocoon.ttrpc.transport import connect_unix

log = logging.getLogger("cocoon.shim.events")
EVENTS_SERVICE = "containerd.services.events.ttrpc.v1.Events"
SEND_TIMEOUT = 5.0

# containerd's runtime topics (runtime/events.go), by event message.
TOPICS: dict[type[Message], str] = {
    ev.TaskCreate: "/tasks/create",
    ev.TaskStart: "/tasks/start",
    ev.TaskExecAdded: "/tasks/exec-added",
    ev.TaskExecStarted: "/tasks/exec-started",
    ev.TaskExit: "/tasks/exit",
    ev.TaskDelete: "/tasks/delete",
    ev.TaskPaused: "/tasks/paused",
    ev.TaskResumed: "/tasks/resumed",
    ev.TaskOOM: "/tasks/oom",
    ev.TaskCheckpointed: "/tasks/checkpointed",
}


def pack(msg: Message) -> any_pb2.Any:
    """An Any as containerd's typeurl writes it: the bare full name as the type URL."""
    return any_pb2.Any(type_url=msg.DESCRIPTOR.full_name, value=msg.SerializeToString())


def timestamp(ns: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


def envelope(namespace: str, msg: Message, now_ns: int | None = None) -> tev.ForwardRequest:
    return tev.ForwardRequest(
        envelope=tev.Envelope(
            timestamp=timestamp(time.time_ns() if now_ns is None else now_ns),
            namespace=namespace,
            topic=TOPICS[type(msg)],
            event=pack(msg),
        )
    )


class Publisher:
    def __init__(
        self, namespace: str, ttrpc_address: str, publish_binary: str, containerd_address: str
    ) -> None:
        self.namespace = namespace
        self.ttrpc_address = ttrpc_address.removeprefix("unix://")
        self.publish_binary = publish_binary
        self.containerd_address = containerd_address
        self._queue: asyncio.Queue[Message] = asyncio.Queue()
        self._client: Client | None = None
        self._task = asyncio.get_running_loop().create_task(self._run())
        self.sent: list[str] = []  # topics, for the log and the tests

    def publish(self, msg: Message) -> None:
        log.info("event %s %s", TOPICS[type(msg)], str(msg).replace("\n", " "))
        self._queue.put_nowait(msg)

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait until every queued event is sent (before the shim exits)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout)

    async def close(self) -> None:
        await self.drain()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self._client is not None:
            await self._client.close()

    async def _run(self) -> None:
        while True:
            msg = await self._queue.get()
            try:
                await self._send(msg)
            except Exception:
                log.exception("cannot publish %s", TOPICS[type(msg)])
            finally:
                self._queue.task_done()

    async def _send(self, msg: Message) -> None:
        req = envelope(self.namespace, msg)
        if self.ttrpc_address:
            try:
                if self._client is None or self._client.closed:
                    self._client = Client(await connect_unix(self.ttrpc_address), "containerd")
                await self._client.call(
                    EVENTS_SERVICE, "Forward", req.SerializeToString(), SEND_TIMEOUT
                )
                self.sent.append(req.envelope.topic)
                return
            except (OSError, RPCError, ConnectionLost, TimeoutError) as exc:
                log.warning("ttRPC publish failed (%s): falling back to the publish binary", exc)
                self._client = None
        await self._exec_publish(req.envelope.topic, req.envelope.event)

    async def _exec_publish(self, topic: str, event: Any) -> None:
        if not self.publish_binary:
            raise RuntimeError("no TTRPC_ADDRESS and no -publish-binary")
        proc = await asyncio.create_subprocess_exec(
            self.publish_binary,
            "--address",
            self.containerd_address,
            "publish",
            "--topic",
            topic,
            "--namespace",
            self.namespace,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(event.SerializeToString()), 30)
        if proc.returncode != 0:
            raise RuntimeError(f"{self.publish_binary} publish: {err.decode(errors='replace')}")
        self.sent.append(topic)
