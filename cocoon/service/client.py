"""The CLI's side of the sandbox service: typed ttRPC calls and the stdio handoff."""

from __future__ import annotations

import json
import os
import socket
from typing import Any, TypeVar

from cocoon.errors import (
    AlreadyExists,
    CocoonError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from cocoon.service.persist import SandboxPaths
from cocoon.ttrpc.client import Client
from cocoon.ttrpc.status import Code, ConnectionLost, RPCError
from cocoon.ttrpc.transport import connect_unix
from cocoon.wire import agent as agent_w
from cocoon.wire import codec
from cocoon.wire import service as s

R = TypeVar("R")

_ERRORS: dict[int, type[CocoonError]] = {
    Code.NOT_FOUND: NotFound,
    Code.ALREADY_EXISTS: AlreadyExists,
    Code.INVALID_ARGUMENT: InvalidArgument,
    Code.FAILED_PRECONDITION: FailedPrecondition,
    Code.UNAVAILABLE: Unavailable,
}


class ServiceGone(Unavailable):
    """The sandbox service process is not there (crashed, or never started)."""


class ServiceClient:
    def __init__(self, client: Client) -> None:
        self._client = client

    @classmethod
    async def connect(cls, paths: SandboxPaths) -> ServiceClient:
        try:
            transport = await connect_unix(str(paths.service_sock))
        except OSError as exc:
            raise ServiceGone(f"sandbox service of {paths.id!r} is not running", exc) from exc
        return cls(Client(transport, f"sandbox service {paths.id}"))

    async def call(self, method: str, req: Any, resp_type: type[R], timeout: float | None) -> R:
        try:
            payload = await self._client.call(s.SERVICE, method, codec.encode(req), timeout)
        except RPCError as exc:
            raise _ERRORS.get(exc.code, CocoonError)(exc.message) from exc
        except ConnectionLost as exc:
            raise ServiceGone(f"the sandbox service died during {method}") from exc
        return codec.decode(resp_type, payload)

    async def close(self) -> None:
        await self._client.close()

    async def create(self, cid: str, bundle: str, stdin: bool = True) -> list[str]:
        """Create the container; the warnings are for the user (e.g. a template skipped)."""
        req = s.CreateRequest(cid, bundle, stdin)
        return (await self.call("Create", req, s.CreateResponse, 300)).warnings

    async def start(self, cid: str) -> None:
        await self.call("Start", s.ContainerRef(cid), s.Empty, 120)

    async def state(self, cid: str) -> s.ContainerStatus:
        return await self.call("State", s.ContainerRef(cid), s.ContainerStatus, 30)

    async def kill(self, cid: str, sig: int, all: bool = False, exec_id: str = "") -> None:
        await self.call("Kill", s.KillRequest(cid, sig, exec_id, all), s.Empty, 30)

    async def wait(self, cid: str, exec_id: str = "") -> s.WaitResponse:
        return await self.call("Wait", s.ContainerRef(cid, exec_id), s.WaitResponse, None)

    async def delete(self, cid: str, force: bool = False) -> None:
        await self.call("Delete", s.DeleteRequest(cid, force), s.Empty, 60)

    async def shutdown(self) -> None:
        await self.call("Shutdown", s.Empty(), s.Empty, 60)

    async def register_process(
        self, cid: str, exec_id: str, host_pid: int, join_cgroup: bool = False
    ) -> None:
        req = s.RegisterProcessRequest(cid, exec_id, host_pid, join_cgroup)
        await self.call("RegisterProcess", req, s.Empty, 30)

    async def exec(self, cid: str, exec_id: str, process: dict[str, Any], stdin: bool) -> None:
        await self.call("Exec", s.ExecRequest(cid, exec_id, process, stdin), s.Empty, 120)

    async def resize(self, cid: str, exec_id: str, rows: int, cols: int) -> None:
        await self.call("Resize", s.ResizeRequest(cid, exec_id, rows, cols), s.Empty, 30)

    async def pause(self, cid: str) -> None:
        await self.call("Pause", s.ContainerRef(cid), s.Empty, 60)

    async def resume(self, cid: str) -> None:
        await self.call("Resume", s.ContainerRef(cid), s.Empty, 60)

    async def update(self, cid: str, resources: dict[str, Any]) -> None:
        await self.call("Update", s.UpdateRequest(cid, resources), s.Empty, 60)

    async def stats(self, cid: str) -> agent_w.StatsResponse:
        return await self.call("Stats", s.ContainerRef(cid), agent_w.StatsResponse, 30)

    async def ps(self, cid: str) -> s.PsResponse:
        return await self.call("Ps", s.ContainerRef(cid), s.PsResponse, 30)


def send_stdio(paths: SandboxPaths, cid: str, exec_id: str, fds: dict[str, int]) -> None:
    """Hand our stdio fds to the service, which relays the process's streams into them."""
    header = json.dumps({"container_id": cid, "exec_id": exec_id, "streams": list(fds)}).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        try:
            sock.connect(str(paths.stdio_sock))
            socket.send_fds(sock, [header], list(fds.values()))
            reply = sock.makefile("rb").readline().decode(errors="replace").strip()
        except OSError as exc:
            raise ServiceGone("cannot hand stdio to the sandbox service", exc) from exc
    if reply != "ok":
        raise CocoonError(reply.removeprefix("error: ") or "stdio handoff failed")


def dup_stdio() -> dict[str, int]:
    """Our fds 0/1/2 duplicated (the service closes what it receives)."""
    out: dict[str, int] = {}
    for name, fd in (("stdin", 0), ("stdout", 1), ("stderr", 2)):
        try:
            out[name] = os.dup(fd)
        except OSError:
            continue
    return out
