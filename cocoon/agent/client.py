"""Typed calls to the guest agent over ttRPC, with a timeout on every call.

Long polls (Wait, ReadStdout/ReadStderr) have no timeout of their own; they end
when the process does or when the connection dies, which the sandbox service
forces as soon as QEMU exits. So no caller ever hangs on a dead guest.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

from cocoon.errors import CocoonError, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from cocoon.ttrpc.client import Client
from cocoon.ttrpc.status import Code, ConnectionLost, RPCError
from cocoon.ttrpc.transport import connect_unix
from cocoon.wire import agent as w
from cocoon.wire import codec

R = TypeVar("R")
DEFAULT_TIMEOUT = 30.0
CREATE_TIMEOUT = 60.0
# What a Detach drops in the guest (the agent's LONG_POLLS); asked again after resume.
LONG_POLLS = frozenset({"WaitProcess", "ReadStdout", "ReadStderr"})


def _translate(method: str, exc: RPCError) -> CocoonError:
    msg = f"agent {method}: {exc.message}"
    if exc.code == Code.NOT_FOUND:
        return NotFound(msg)
    if exc.code == Code.INVALID_ARGUMENT:
        return InvalidArgument(msg)
    if exc.code in (Code.FAILED_PRECONDITION, Code.ALREADY_EXISTS):
        return FailedPrecondition(msg)
    return CocoonError(msg)


class AgentClient:
    """A detach (:meth:`detach`) closes a gate: calls wait there until :meth:`resume`,
    and the long polls the guest dropped are asked again then, transparently."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._open = asyncio.Event()
        self._open.set()
        self._generation = 0  # bumped by each detach: a poll cancelled by it is re-asked
        self._polls: set[asyncio.Future[bytes]] = set()

    @classmethod
    async def connect(cls, socket_path: str, timeout: float) -> AgentClient:
        """Connect to the agent socket and wait until the agent answers Check.

        Raises Unavailable if it does not answer within ``timeout`` seconds.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        transport = await connect_unix(socket_path)
        agent = cls(Client(transport, "guest agent"))
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                await agent.close()
                raise Unavailable(f"the guest agent did not answer within {timeout:g}s")
            try:
                await agent.check(timeout=min(remaining, 1.0))
                return agent
            except TimeoutError:
                continue
            except Unavailable:
                await agent.close()
                raise

    async def call(
        self,
        method: str,
        req: Any,
        resp_type: type[R],
        timeout: float | None,
        through_gate: bool = False,
    ) -> R:
        body = codec.encode(req)
        while True:
            if not through_gate:
                await self._open.wait()
            generation = self._generation
            task = asyncio.ensure_future(self._client.call(w.SERVICE, method, body, timeout))
            if method in LONG_POLLS:
                self._polls.add(task)
            try:
                try:
                    await asyncio.wait({task})
                except asyncio.CancelledError:
                    task.cancel()
                    raise
            finally:
                self._polls.discard(task)
            if not task.cancelled():
                break
            if generation == self._generation:
                raise asyncio.CancelledError
            # dropped by a detach: asked again once the gate opens
        try:
            payload = task.result()
        except RPCError as exc:
            raise _translate(method, exc) from exc
        except ConnectionLost as exc:
            raise Unavailable(f"agent {method}: {exc}") from exc
        try:
            return codec.decode(resp_type, payload)
        except codec.SchemaError as exc:
            raise Unavailable(f"agent {method}: malformed reply: {exc}") from exc

    async def close(self) -> None:
        await self._client.close()
        self._open.set()  # whoever waits at the gate now fails on the closed link

    async def detach(self, release_share: bool) -> w.DetachResponse:
        """Quiesce the link for a snapshot: new calls wait at the gate, the guest drops
        its long polls (ours are re-asked after :meth:`resume`) and answers the rest."""
        self._open.clear()
        try:
            resp = await self.call(
                "Detach", w.DetachRequest(release_share), w.DetachResponse, 30, True
            )
        except BaseException:
            self._open.set()
            raise
        self._generation += 1
        for task in list(self._polls):
            task.cancel()
        return resp

    def resume(self) -> None:
        self._open.set()

    async def rename_container(self, old: str, new: str) -> None:
        req = w.RenameContainerRequest(old, new)
        await self.call("RenameContainer", req, w.Empty, DEFAULT_TIMEOUT)

    async def check(self, timeout: float = DEFAULT_TIMEOUT) -> w.CheckResponse:
        return await self.call("Check", w.Empty(), w.CheckResponse, timeout)

    async def create_sandbox(self, req: w.CreateSandboxRequest) -> None:
        await self.call("CreateSandbox", req, w.Empty, DEFAULT_TIMEOUT)

    async def destroy_sandbox(self) -> None:
        await self.call("DestroySandbox", w.Empty(), w.Empty, DEFAULT_TIMEOUT)

    async def create_container(self, req: w.CreateContainerRequest) -> None:
        await self.call("CreateContainer", req, w.Empty, CREATE_TIMEOUT)

    async def start_container(self, cid: str) -> None:
        await self.call("StartContainer", w.ContainerRequest(cid), w.Empty, CREATE_TIMEOUT)

    async def remove_container(self, cid: str) -> None:
        await self.call("RemoveContainer", w.ContainerRequest(cid), w.Empty, CREATE_TIMEOUT)

    async def exec_process(self, req: w.ExecProcessRequest) -> None:
        await self.call("ExecProcess", req, w.Empty, CREATE_TIMEOUT)

    async def remove_process(self, cid: str, exec_id: str) -> None:
        req = w.ProcessRequest(cid, exec_id)
        await self.call("RemoveProcess", req, w.Empty, DEFAULT_TIMEOUT)

    async def signal_process(self, cid: str, exec_id: str, sig: int, all: bool = False) -> None:
        req = w.SignalProcessRequest(cid, exec_id, sig, all)
        await self.call("SignalProcess", req, w.Empty, DEFAULT_TIMEOUT)

    async def wait_process(self, cid: str, exec_id: str = "") -> w.WaitProcessResponse:
        req = w.ProcessRequest(cid, exec_id)
        return await self.call("WaitProcess", req, w.WaitProcessResponse, None)

    async def write_stdin(self, cid: str, exec_id: str, data: bytes) -> int:
        req = w.WriteStreamRequest(cid, exec_id, data)
        resp = await self.call("WriteStdin", req, w.WriteStreamResponse, DEFAULT_TIMEOUT)
        return resp.length

    async def close_stdin(self, cid: str, exec_id: str = "") -> None:
        req = w.ProcessRequest(cid, exec_id)
        await self.call("CloseStdin", req, w.Empty, DEFAULT_TIMEOUT)

    async def read_stream(
        self, which: str, cid: str, exec_id: str = "", max_len: int = 65536
    ) -> w.ReadStreamResponse:
        method = "ReadStdout" if which == "stdout" else "ReadStderr"
        req = w.ReadStreamRequest(cid, exec_id, max_len)
        return await self.call(method, req, w.ReadStreamResponse, None)

    async def resize(self, cid: str, exec_id: str, rows: int, cols: int) -> None:
        req = w.TtyWinResizeRequest(cid, exec_id, rows, cols)
        await self.call("TtyWinResize", req, w.Empty, DEFAULT_TIMEOUT)

    async def list_processes(self, cid: str) -> list[w.ProcessInfo]:
        req = w.ContainerRequest(cid)
        resp = await self.call("ListProcesses", req, w.ListProcessesResponse, DEFAULT_TIMEOUT)
        return resp.processes

    async def pause_container(self, cid: str) -> None:
        await self.call("PauseContainer", w.ContainerRequest(cid), w.Empty, DEFAULT_TIMEOUT)

    async def resume_container(self, cid: str) -> None:
        await self.call("ResumeContainer", w.ContainerRequest(cid), w.Empty, DEFAULT_TIMEOUT)

    async def update_container(self, cid: str, resources: dict[str, Any]) -> None:
        req = w.UpdateContainerRequest(cid, resources)
        await self.call("UpdateContainer", req, w.Empty, DEFAULT_TIMEOUT)

    async def stats(self, cid: str) -> w.StatsResponse:
        req = w.ContainerRequest(cid)
        return await self.call("StatsContainer", req, w.StatsResponse, DEFAULT_TIMEOUT)

    async def online_cpu_mem(self, nb_cpus: int, timeout: float = 10.0) -> w.OnlineCPUMemResponse:
        req = w.OnlineCPUMemRequest(nb_cpus, timeout)
        return await self.call("OnlineCPUMem", req, w.OnlineCPUMemResponse, timeout + 10)

    async def read_clock(self, timeout: float = 5.0) -> int:
        """The guest's CLOCK_REALTIME in ns."""
        return (await self.call("ReadClock", w.Empty(), w.ReadClockResponse, timeout)).time_ns

    async def adjust_clock(self, delta_ns: int, step: bool, timeout: float = 5.0) -> None:
        """Step or slew the guest's CLOCK_REALTIME by ``delta_ns``."""
        await self.call("AdjustClock", w.AdjustClockRequest(delta_ns, step), w.Empty, timeout)

    async def update_network(self, req: w.UpdateNetworkRequest) -> None:
        """Configure the guest's NICs (found by MAC), routes and neighbours."""
        await self.call("UpdateNetwork", req, w.Empty, req.timeout + DEFAULT_TIMEOUT)
