"""The service's doors: ttRPC for verbs, and a unix socket that receives stdio fds.

The CLI hands over the fds it was given (SCM_RIGHTS) so that the service, which
outlives the CLI, relays the container's stdio into them directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from cocoon.errors import (
    AlreadyExists,
    CocoonError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from cocoon.service.sandbox import Sandbox
from cocoon.ttrpc.server import Server
from cocoon.ttrpc.status import Code, RPCError
from cocoon.wire import codec
from cocoon.wire import service as s

log = logging.getLogger("cocoon.service")

_CODES: list[tuple[type[CocoonError], Code]] = [
    (NotFound, Code.NOT_FOUND),
    (AlreadyExists, Code.ALREADY_EXISTS),
    (InvalidArgument, Code.INVALID_ARGUMENT),
    (FailedPrecondition, Code.FAILED_PRECONDITION),
    (Unavailable, Code.UNAVAILABLE),
]


def to_rpc_error(exc: CocoonError) -> RPCError:
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return RPCError(code, str(exc))
    return RPCError(Code.UNKNOWN, str(exc))


class ServiceAPI:
    def __init__(self, sandbox: Sandbox, on_empty: Callable[[], None]) -> None:
        self.sandbox = sandbox
        self.on_empty = on_empty

    async def Create(self, req: s.CreateRequest) -> s.CreateResponse:
        await self.sandbox.create_container(req.container_id, req.bundle, req.stdin)
        return s.CreateResponse(self.sandbox.take_warnings())

    async def Join(self, req: s.CreateRequest) -> s.CreateResponse:
        await self.sandbox.join_container(req.container_id, req.bundle, req.stdin)
        return s.CreateResponse(self.sandbox.take_warnings())

    async def Start(self, req: s.ContainerRef) -> s.Empty:
        await self.sandbox.start_container(req.container_id)
        return s.Empty()

    async def State(self, req: s.ContainerRef) -> s.ContainerStatus:
        ctr = self.sandbox.get(req.container_id)
        # runc's rule: a stopped container has no PID (whichever way it stopped).
        pid = 0 if ctr.status == "stopped" else ctr.host_pids.get("", 0)
        return s.ContainerStatus(
            ctr.id,
            ctr.status,
            pid,
            str(ctr.bundle),
            "",
            ctr.annotations,
            self.sandbox.exit_status(ctr.id),
        )

    async def Kill(self, req: s.KillRequest) -> s.Empty:
        await self.sandbox.kill(req.container_id, req.exec_id, req.signal, req.all)
        return s.Empty()

    async def Wait(self, req: s.ContainerRef) -> s.WaitResponse:
        try:
            status, at = await self.sandbox.wait(req.container_id, req.exec_id)
        except Unavailable as exc:
            return s.WaitResponse(status=255, error=str(exc))
        t = self.sandbox.timings
        t0 = t.get("boot_start", 0.0)
        return s.WaitResponse(status, at, timings={k: v - t0 for k, v in t.items()})

    async def Delete(self, req: s.DeleteRequest) -> s.Empty:
        await self.sandbox.delete_container(req.container_id, req.force)
        if not self.sandbox.containers:
            await self.sandbox.shutdown()
            self.on_empty()
        return s.Empty()

    async def RegisterProcess(self, req: s.RegisterProcessRequest) -> s.Empty:
        self.sandbox.register_process(req.container_id, req.exec_id, req.host_pid, req.join_cgroup)
        return s.Empty()

    async def Exec(self, req: s.ExecRequest) -> s.Empty:
        await self.sandbox.exec(req.container_id, req.exec_id, req.process, req.stdin)
        return s.Empty()

    async def Resize(self, req: s.ResizeRequest) -> s.Empty:
        await self.sandbox.resize(req.container_id, req.exec_id, req.rows, req.cols)
        return s.Empty()

    async def Pause(self, req: s.ContainerRef) -> s.Empty:
        await self.sandbox.pause(req.container_id)
        return s.Empty()

    async def Resume(self, req: s.ContainerRef) -> s.Empty:
        await self.sandbox.resume(req.container_id)
        return s.Empty()

    async def Update(self, req: s.UpdateRequest) -> s.Empty:
        await self.sandbox.update(req.container_id, req.resources)
        return s.Empty()

    async def Ps(self, req: s.ContainerRef) -> s.PsResponse:
        host, guest = await self.sandbox.ps(req.container_id)
        return s.PsResponse(host, [s.GuestProcess(p.pid, p.args) for p in guest])

    async def Stats(self, req: s.ContainerRef) -> Any:
        return await self.sandbox.stats(req.container_id)

    async def AttachNetwork(self, req: s.AttachNetworkRequest) -> s.Empty:
        await self.sandbox.attach_network(req.netns)
        return s.Empty()

    async def Checkpoint(self, req: s.CheckpointRequest) -> s.CheckpointResponse:
        from pathlib import Path

        self.sandbox.get(req.container_id)
        stats = await self.sandbox.checkpoint(
            Path(req.image_path), req.leave_running, req.container_id
        )
        return s.CheckpointResponse(stats)

    async def Migrate(self, req: s.MigrateRequest) -> s.CheckpointResponse:
        self.sandbox.get(req.container_id)
        stats = await self.sandbox.migrate(req.to)
        self.on_empty()  # moved: this service ends, removing the sandbox's state
        return s.CheckpointResponse(stats)

    async def Restored(self, req: s.ContainerRef) -> s.CreateResponse:
        await self.sandbox.ready()
        self.sandbox.get(req.container_id)
        return s.CreateResponse(self.sandbox.take_warnings())

    async def RestoreMember(self, req: s.RestoreMemberRequest) -> s.CreateResponse:
        await self.sandbox.restore_member(req.container_id, req.bundle, req.saved_id)
        return s.CreateResponse(self.sandbox.take_warnings())

    async def Shutdown(self, _: s.Empty) -> s.Empty:
        await self.sandbox.shutdown()
        self.on_empty()
        return s.Empty()

    def register(self, server: Server) -> None:
        for name, (req_type, _) in s.METHODS.items():
            server.register(s.SERVICE, name, _adapt(getattr(self, name), req_type))


def _adapt(method: Callable[[Any], Awaitable[Any]], req_type: type) -> Any:
    async def handler(payload: bytes) -> bytes:
        try:
            req: Any = codec.decode(req_type, payload)
        except codec.SchemaError as exc:
            raise RPCError(Code.INVALID_ARGUMENT, str(exc)) from exc
        try:
            return codec.encode(await method(req))
        except CocoonError as exc:
            raise to_rpc_error(exc) from exc

    return handler


class StdioSocket:
    """Receives ``{"container_id", "exec_id", "streams": [...]}`` plus fds; replies ``ok``.

    A plain blocking socket in a daemon thread: asyncio's stream transports read
    the data without its ancillary fds, so they cannot carry SCM_RIGHTS.
    """

    def __init__(self, sandbox: Sandbox, path: str) -> None:
        self.sandbox = sandbox
        self.loop = asyncio.get_running_loop()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.bind(path)
        os.chmod(path, 0o600)
        self.sock.listen(16)
        threading.Thread(target=self._accept_loop, daemon=True, name="stdio-accept").start()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                reply = self._handle(conn)
                with contextlib.suppress(OSError):
                    conn.sendall(reply.encode() + b"\n")

    def _handle(self, conn: socket.socket) -> str:
        fds: list[int] = []
        try:
            msg, fds, _, _ = socket.recv_fds(conn, 65536, 8)
            header = json.loads(msg)
            streams = header.get("streams", [])
            if len(streams) != len(fds) or not set(streams) <= {"stdin", "stdout", "stderr"}:
                raise InvalidArgument("stdio handoff: streams and fds do not match")
            by_name = dict(zip(streams, fds, strict=True))

            async def attach() -> None:
                self.sandbox.attach_stdio(
                    str(header["container_id"]),
                    str(header.get("exec_id", "")),
                    by_name.get("stdin"),
                    by_name.get("stdout"),
                    by_name.get("stderr"),
                )

            asyncio.run_coroutine_threadsafe(attach(), self.loop).result(30)
            fds = []
            return "ok"
        except (CocoonError, ValueError, KeyError, OSError, TimeoutError) as exc:
            return f"error: {exc}"
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
