"""containerd's Task service (``containerd.task.v2.Task``) over one pod's Sandbox.

Every verb maps onto the same :class:`~cocoon.service.sandbox.Sandbox` methods the
CLI's service uses; this layer only adds what containerd expects on top: rootfs
mounts, stdio FIFOs, exec processes that are registered before they start, exit
records that outlive the guest process, events, and the OOM watch.

Process pids: guest PIDs mean nothing on the host, so (as Kata does) every task
and exec reports the VM's QEMU pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import empty_pb2
from google.protobuf.message import DecodeError, Message

from cocoon.errors import (
    AlreadyExists,
    CocoonError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from cocoon.service.api import to_rpc_error
from cocoon.service.sandbox import Sandbox, SandboxState
from cocoon.shim import hooks, stdio
from cocoon.shim.events import Publisher, timestamp
from cocoon.shim.metrics import pack_metrics
from cocoon.shim.pods import pod_role
from cocoon.shim.proto import events_pb2 as ev
from cocoon.shim.proto import shim_pb2 as pb
from cocoon.shim.proto import task_types_pb2 as tt
from cocoon.storage.mounts import umount
from cocoon.ttrpc.server import Server
from cocoon.ttrpc.status import Code, RPCError

log = logging.getLogger("cocoon.shim.task")
SERVICE = "containerd.task.v2.Task"
VERSION = "cocoon-shim 0.1.0"
OOM_POLL_INTERVAL = 2.0
DEAD_VM_STATUS = 255  # a process whose VM died exits with this
EXEC_FAILED_STATUS = 126  # an exec whose start failed ("cannot execute", as shells say)
_STATUS = {
    "created": tt.CREATED,
    "running": tt.RUNNING,
    "paused": tt.PAUSED,
    "stopped": tt.STOPPED,
}


@dataclass
class ShimProcess:
    """What containerd knows of a process: its IO paths and, once it ends, its exit."""

    cid: str
    exec_id: str
    io: stdio.ProcessIO
    exited: asyncio.Future[tuple[int, int]]
    spec: dict[str, Any] | None = None  # an exec's process, until it starts
    started: bool = False


@dataclass
class ShimContainer:
    id: str
    bundle: str
    rootfs: Path | None  # where we mounted containerd's rootfs, to unmount at Delete
    init: ShimProcess
    execs: dict[str, ShimProcess] = field(default_factory=dict)
    oom_kills: int = 0
    spec: dict[str, Any] = field(default_factory=dict)  # config.json, for its hooks
    # Created from a checkpoint (containerd's unpacked image dir): restored at Start,
    # as containerd's runc shim runs `runc restore` there.
    restore: str = ""


class TaskService:
    def __init__(
        self,
        sandbox: Sandbox,
        publisher: Publisher,
        pod_id: str,
        on_shutdown: Callable[[], None],
    ) -> None:
        self.sandbox = sandbox
        self.events = publisher
        self.pod_id = pod_id
        self.on_shutdown = on_shutdown
        self.containers: dict[str, ShimContainer] = {}
        self._creating: set[str] = set()
        self._oom_task: asyncio.Task[None] | None = None

    # -- helpers -------------------------------------------------------------
    def _ctr(self, cid: str) -> ShimContainer:
        ctr = self.containers.get(cid)
        if ctr is None:
            raise NotFound(f"container {cid!r} does not exist in this pod's shim")
        return ctr

    def _proc(self, cid: str, exec_id: str) -> ShimProcess:
        ctr = self._ctr(cid)
        proc = ctr.init if not exec_id else ctr.execs.get(exec_id)
        if proc is None:
            raise NotFound(f"exec {exec_id!r} of container {cid!r} does not exist")
        return proc

    @property
    def pid(self) -> int:
        vm = self.sandbox.vm
        return vm.pid if vm is not None and vm.pid else 0

    def _watch_exit(self, proc: ShimProcess) -> None:
        """Record the process's exit (or the VM's death) and publish TaskExit."""

        async def watch() -> None:
            try:
                status, at = await self.sandbox.wait(proc.cid, proc.exec_id)
            except Unavailable as exc:
                log.warning("%s/%s: %s", proc.cid, proc.exec_id or "init", exc)
                status, at = DEAD_VM_STATUS, time.time_ns()
            except NotFound:
                status, at = DEAD_VM_STATUS, time.time_ns()
            if not proc.exec_id and status != DEAD_VM_STATUS:
                await self._check_oom(proc.cid)  # an OOM kill that ended the container
            if not proc.exited.done():
                proc.exited.set_result((status, at))
            self.events.publish(
                ev.TaskExit(
                    container_id=proc.cid,
                    id=proc.exec_id or proc.cid,
                    pid=self.pid,
                    exit_status=status,
                    exited_at=timestamp(at),
                )
            )

        asyncio.get_running_loop().create_task(watch())

    def _end_unstarted(self, proc: ShimProcess) -> None:
        """End an exec whose start failed: Wait returns, TaskExit goes out, and the
        readers of its output FIFOs see EOF (no output will ever come)."""
        if proc.exited.done():
            return
        stdio.release_outputs(proc.io)
        at = time.time_ns()
        proc.exited.set_result((EXEC_FAILED_STATUS, at))
        self.events.publish(
            ev.TaskExit(
                container_id=proc.cid,
                id=proc.exec_id,
                pid=self.pid,
                exit_status=EXEC_FAILED_STATUS,
                exited_at=timestamp(at),
            )
        )

    def _exit_of(self, proc: ShimProcess) -> tuple[int, int]:
        if proc.exited.done():
            return proc.exited.result()
        return 0, 0

    # -- verbs ---------------------------------------------------------------
    async def Create(self, req: pb.CreateTaskRequest) -> pb.CreateTaskResponse:
        cid = req.id
        if cid in self.containers or cid in self._creating:
            raise AlreadyExists(f"container {cid!r} already exists")
        if req.checkpoint:
            return await self._create_restored(req)
        # The VM boots from here on, while the rootfs is mounted and the disks planned
        # (not at the shim's start: a Create from a checkpoint boots from the image).
        self.sandbox.start_boot()
        try:
            spec = json.loads((Path(req.bundle) / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise InvalidArgument(f"cannot read {req.bundle}/config.json: {exc}") from exc
        if not isinstance(spec, dict):
            raise InvalidArgument(f"{req.bundle}/config.json is not a JSON object")
        if spec.get("hooks"):
            from cocoon.oci.hooks import validate_hooks

            validate_hooks(spec)
        role = pod_role(cid, spec.get("annotations") or {})
        if role.pod_id != self.pod_id:
            raise InvalidArgument(f"container {cid!r} belongs to pod {role.pod_id!r}, not here")
        pod_sandbox = ""
        if not role.is_sandbox:
            if self.pod_id not in self.containers:
                raise FailedPrecondition(f"pod sandbox {self.pod_id!r} does not exist")
            pod_sandbox = self.pod_id
        self._creating.add(cid)
        rootfs: Path | None = None
        try:
            if req.rootfs:
                rootfs = Path(req.bundle) / "rootfs"
                await asyncio.to_thread(mount_rootfs, list(req.rootfs), rootfs)
            try:
                await self.sandbox.create_container(
                    cid,
                    req.bundle,
                    bool(req.stdin),
                    pod_sandbox=pod_sandbox,
                    local_rootfs=rootfs is not None,
                )
            except BaseException:
                if rootfs is not None:
                    unmount_rootfs(rootfs)
                raise
        finally:
            self._creating.discard(cid)
        io = stdio.ProcessIO(req.stdin, req.stdout, req.stderr, req.terminal)
        init = ShimProcess(cid, "", io, asyncio.get_running_loop().create_future(), started=True)
        try:
            stdio.attach(self.sandbox, cid, "", io)
            state = hooks.oci_state(cid, "created", self.pid, req.bundle, spec)
            await hooks.run_stage("createRuntime", spec, state)  # prestart's too
            await hooks.run_stage("createContainer", spec, state)
        except (OSError, CocoonError) as exc:
            with contextlib.suppress(CocoonError):
                await self.sandbox.delete_container(cid, force=True)
            if rootfs is not None:
                unmount_rootfs(rootfs)
            if isinstance(exc, CocoonError):
                raise
            raise InvalidArgument(f"cannot open the stdio of {cid!r}: {exc}") from exc
        self.containers[cid] = ShimContainer(cid, req.bundle, rootfs, init, spec=spec)
        self._watch_exit(init)
        self._publish_create(req, pid=self.pid)
        self._start_oom_watch()
        return pb.CreateTaskResponse(pid=self.pid)

    async def _create_restored(self, req: pb.CreateTaskRequest) -> pb.CreateTaskResponse:
        """Create from a checkpoint: only recorded (state created, pid 0, as runc's shim);
        the VM is loaded from the image at Start. A checkpoint holds a whole sandbox: it
        is restored as a pod of its own, never into a running one."""
        cid = req.id
        spec = _read_spec(req.bundle)
        if self.containers or self.sandbox.state != SandboxState.NEW:
            raise FailedPrecondition(
                f"container {cid!r}: a checkpoint is restored as a sandbox of its own, "
                f"not into pod {self.pod_id!r}"
            )
        if pod_role(cid, spec.get("annotations") or {}).pod_id != self.pod_id:
            raise InvalidArgument(f"container {cid!r} does not belong to pod {self.pod_id!r}")
        from cocoon.checkpoint import manifest as mf

        mf.load(Path(req.checkpoint))  # complete and readable, or one line now
        rootfs: Path | None = None
        if req.rootfs:  # unused (the writes ride in the image), unmounted at Delete
            rootfs = Path(req.bundle) / "rootfs"
            await asyncio.to_thread(mount_rootfs, list(req.rootfs), rootfs)
        io = stdio.ProcessIO(req.stdin, req.stdout, req.stderr, req.terminal)
        init = ShimProcess(cid, "", io, asyncio.get_running_loop().create_future())
        self.containers[cid] = ShimContainer(
            cid, req.bundle, rootfs, init, spec=spec, restore=req.checkpoint
        )
        self._publish_create(req, checkpoint=req.checkpoint)
        return pb.CreateTaskResponse(pid=0)

    def _publish_create(self, req: pb.CreateTaskRequest, **extra: Any) -> None:
        self.events.publish(
            ev.TaskCreate(
                container_id=req.id,
                bundle=req.bundle,
                rootfs=list(req.rootfs),
                io=ev.TaskIO(
                    stdin=req.stdin, stdout=req.stdout, stderr=req.stderr, terminal=req.terminal
                ),
                **extra,
            )
        )

    async def _restore(self, ctr: ShimContainer) -> None:
        """Boot the sandbox from ``ctr.restore`` (cocoon.service.snapshot.restore): the
        guest's container, renamed to this id, continues where it was saved."""
        from cocoon.checkpoint import manifest as mf
        from cocoon.config.settings import Settings
        from cocoon.service import snapshot

        proc = ctr.init
        directory = Path(ctr.restore)
        try:
            manifest = mf.load(directory)
            sb = self.sandbox
            sb.settings = Settings.from_dict(manifest.settings)  # the VM's, as saved
            why = snapshot.host_mismatch(sb, manifest)
            if why:
                raise FailedPrecondition(f"cannot restore {directory}: {why}")
            sb.restore_from = (directory, ctr.id, Path(ctr.bundle))
            t0 = time.monotonic()
            await sb.ready()
            log.info("%s: restored from %s in %.2fs", ctr.id, directory, time.monotonic() - t0)
            for warning in sb.take_warnings():
                log.warning("%s: %s", ctr.id, warning)
            ctr.restore = ""
            proc.started = True
            stdio.attach(sb, ctr.id, "", proc.io)
        except BaseException:
            if not proc.exited.done():
                proc.exited.set_result((EXEC_FAILED_STATUS, time.time_ns()))
            raise
        self._watch_exit(proc)
        self._start_oom_watch()

    async def Start(self, req: pb.StartRequest) -> pb.StartResponse:
        proc = self._proc(req.id, req.exec_id)
        if not req.exec_id:
            ctr = self._ctr(req.id)
            if ctr.restore:
                await self._restore(ctr)
                self.events.publish(ev.TaskStart(container_id=req.id, pid=self.pid))
                return pb.StartResponse(pid=self.pid)
            if proc.exited.done():
                raise FailedPrecondition(f"container {req.id!r} has stopped")
            state = hooks.oci_state(req.id, "created", self.pid, ctr.bundle, ctr.spec)
            await hooks.run_stage("startContainer", ctr.spec, state)
            await self.sandbox.start_container(req.id)
            self.events.publish(ev.TaskStart(container_id=req.id, pid=self.pid))
            # After the start, as runc runs them: the container's process runs.
            await hooks.run_stage("poststart", ctr.spec, {**state, "status": "running"})
            return pb.StartResponse(pid=self.pid)
        if proc.started:
            raise FailedPrecondition(f"exec {req.exec_id!r} of {req.id!r} is already started")
        assert proc.spec is not None
        proc.started = True
        try:
            await self.sandbox.exec(req.id, req.exec_id, proc.spec, bool(proc.io.stdin))
        except BaseException:
            # The exec ends here (as runc's shim ends one whose runc exec failed):
            # its waiters return and its exit is published, so containerd's cleanup
            # (Kill answers NotFound, then Wait, then Delete) does not wait it out.
            self._end_unstarted(proc)
            raise
        stdio.attach(self.sandbox, req.id, req.exec_id, proc.io)
        self._watch_exit(proc)
        self.events.publish(
            ev.TaskExecStarted(container_id=req.id, exec_id=req.exec_id, pid=self.pid)
        )
        return pb.StartResponse(pid=self.pid)

    async def State(self, req: pb.StateRequest) -> pb.StateResponse:
        proc = self._proc(req.id, req.exec_id)
        ctr = self._ctr(req.id)
        if req.exec_id:
            status = (
                tt.STOPPED if proc.exited.done() else tt.RUNNING if proc.started else tt.CREATED
            )
        else:
            record = self.sandbox.containers.get(req.id)
            status = _STATUS.get(record.status if record else "stopped", tt.UNKNOWN)
            if ctr.restore:
                status = tt.CREATED
            if proc.exited.done():
                status = tt.STOPPED
        code, at = self._exit_of(proc)
        resp = pb.StateResponse(
            id=req.id,
            bundle=ctr.bundle,
            pid=self.pid,
            status=status,
            stdin=proc.io.stdin,
            stdout=proc.io.stdout,
            stderr=proc.io.stderr,
            terminal=proc.io.terminal,
            exit_status=code,
            exec_id=req.exec_id,
        )
        if at:
            resp.exited_at.CopyFrom(timestamp(at))
        return resp

    async def Delete(self, req: pb.DeleteRequest) -> pb.DeleteResponse:
        proc = self._proc(req.id, req.exec_id)
        ctr = self._ctr(req.id)
        if req.exec_id:
            if proc.started and not proc.exited.done():
                raise FailedPrecondition(f"exec {req.exec_id!r} of {req.id!r} is running")
            if proc.started:
                with contextlib.suppress(NotFound):
                    await self.sandbox.delete_exec(req.id, req.exec_id)
            elif not proc.exited.done():
                proc.exited.set_result((0, time.time_ns()))  # never ran: release waiters
            del ctr.execs[req.exec_id]
        else:
            record = self.sandbox.containers.get(req.id)
            if record is not None and record.status in ("running", "paused"):
                raise FailedPrecondition(f"cannot delete running task {req.id!r}")
            if req.id == self.pod_id:
                await self._kill_pod_members()
            if record is not None:
                await self.sandbox.delete_container(req.id, force=True)
            elif not proc.exited.done():  # never started (a restore not done)
                proc.exited.set_result((0, time.time_ns()))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(proc.exited), 15)
            if ctr.rootfs is not None:
                unmount_rootfs(ctr.rootfs)
            del self.containers[req.id]
            state = hooks.oci_state(req.id, "stopped", self.pid, ctr.bundle, ctr.spec)
            await hooks.run_stage("poststop", ctr.spec, state)
        code, at = self._exit_of(proc)
        resp = pb.DeleteResponse(pid=self.pid, exit_status=code)
        if at:
            resp.exited_at.CopyFrom(timestamp(at))
        if not req.exec_id:
            self.events.publish(
                ev.TaskDelete(
                    container_id=req.id,
                    pid=self.pid,
                    exit_status=code,
                    exited_at=resp.exited_at,
                    id=req.id,
                )
            )
            if not self.containers:
                # The pod is gone: stop the VM now; the process exits at Shutdown.
                await self.sandbox.shutdown()
        return resp

    async def _kill_pod_members(self) -> None:
        """The pod's sandbox goes: its other containers go down with it (they get their
        TaskExit; containerd deletes them, and the last Delete stops the VM)."""
        for cid, ctr in self.containers.items():
            if cid != self.pod_id and not ctr.init.exited.done():
                with contextlib.suppress(CocoonError):
                    await self.sandbox.kill(cid, "", signal.SIGKILL, True)

    async def Pids(self, req: pb.PidsRequest) -> pb.PidsResponse:
        self._ctr(req.id)
        _, guest = await self.sandbox.ps(req.id)
        return pb.PidsResponse(processes=[tt.ProcessInfo(pid=p.pid) for p in guest])

    async def Pause(self, req: pb.PauseRequest) -> empty_pb2.Empty:
        self._ctr(req.id)
        await self.sandbox.pause(req.id)
        self.events.publish(ev.TaskPaused(container_id=req.id))
        return empty_pb2.Empty()

    async def Resume(self, req: pb.ResumeRequest) -> empty_pb2.Empty:
        self._ctr(req.id)
        await self.sandbox.resume(req.id)
        self.events.publish(ev.TaskResumed(container_id=req.id))
        return empty_pb2.Empty()

    async def Checkpoint(self, req: pb.CheckpointTaskRequest) -> empty_pb2.Empty:
        """The whole sandbox VM into ``path`` (cocoon.service.snapshot.checkpoint), the
        image dir ``cocoon checkpoint`` writes. containerd sends runc's options only to
        runc's shims: without them the task is left running (ctr's default)."""
        self._ctr(req.id)
        if req.id != self.pod_id or len(self.containers) > 1:
            raise FailedPrecondition(
                f"container {req.id!r} shares the VM of pod {self.pod_id!r}: a pod is "
                "checkpointed whole, not by member"
            )
        exit_after, image_path = checkpoint_options(req.options.type_url, req.options.value)
        directory = Path(image_path or req.path)
        if not directory.is_absolute():
            raise InvalidArgument(f"checkpoint path {str(directory)!r} is not absolute")
        t0 = time.monotonic()
        stats = await self.sandbox.checkpoint(directory, leave_running=not exit_after)
        log.info(
            "%s: checkpoint into %s in %.2fs (%s)",
            req.id,
            directory,
            time.monotonic() - t0,
            " ".join(f"{k}={v}" for k, v in stats.items()),
        )
        return empty_pb2.Empty()

    async def Kill(self, req: pb.KillRequest) -> empty_pb2.Empty:
        proc = self._proc(req.id, req.exec_id)
        if proc.exited.done() or not proc.started:
            # containerd (and the CRI) read NotFound as "already stopped".
            raise NotFound(f"process {req.exec_id or req.id!r} already finished")
        try:
            await self.sandbox.kill(req.id, req.exec_id, req.signal, req.all)
        except FailedPrecondition as exc:
            raise NotFound(f"process {req.exec_id or req.id!r} already finished") from exc
        return empty_pb2.Empty()

    async def Exec(self, req: pb.ExecProcessRequest) -> empty_pb2.Empty:
        ctr = self._ctr(req.id)
        if not req.exec_id:
            raise InvalidArgument("exec id must not be empty")
        if req.exec_id in ctr.execs:
            raise AlreadyExists(f"exec {req.exec_id!r} of {req.id!r} already exists")
        record = self.sandbox.containers.get(req.id)
        if record is None or record.status != "running":
            raise FailedPrecondition(f"container {req.id!r} is not running")
        try:
            process = json.loads(req.spec.value)
        except ValueError as exc:
            raise InvalidArgument(f"exec spec is not valid JSON: {exc}") from exc
        if not isinstance(process, dict) or not process.get("args"):
            raise InvalidArgument("exec spec must be an OCI process with args")
        process["terminal"] = req.terminal
        io = stdio.ProcessIO(req.stdin, req.stdout, req.stderr, req.terminal)
        loop = asyncio.get_running_loop()
        ctr.execs[req.exec_id] = ShimProcess(
            req.id, req.exec_id, io, loop.create_future(), spec=process
        )
        self.events.publish(ev.TaskExecAdded(container_id=req.id, exec_id=req.exec_id))
        return empty_pb2.Empty()

    async def ResizePty(self, req: pb.ResizePtyRequest) -> empty_pb2.Empty:
        proc = self._proc(req.id, req.exec_id)
        if not proc.io.terminal:
            raise FailedPrecondition(f"{req.exec_id or req.id!r} has no terminal")
        await self.sandbox.resize(req.id, req.exec_id, req.height, req.width)
        return empty_pb2.Empty()

    async def CloseIO(self, req: pb.CloseIORequest) -> empty_pb2.Empty:
        proc = self._proc(req.id, req.exec_id)
        if req.stdin and proc.started and not proc.exited.done():
            with contextlib.suppress(CocoonError):  # the relay may have closed it already
                await self.sandbox.close_stdin(req.id, req.exec_id)
        return empty_pb2.Empty()

    async def Update(self, req: pb.UpdateTaskRequest) -> empty_pb2.Empty:
        self._ctr(req.id)
        try:
            resources = json.loads(req.resources.value or b"{}")
        except ValueError as exc:
            raise InvalidArgument(f"resources are not valid JSON: {exc}") from exc
        if not isinstance(resources, dict):
            raise InvalidArgument("resources must be an OCI LinuxResources object")
        await self.sandbox.update(req.id, resources)
        return empty_pb2.Empty()

    async def Wait(self, req: pb.WaitRequest) -> pb.WaitResponse:
        proc = self._proc(req.id, req.exec_id)
        # ctr waits on an exec before it starts it: this simply waits longer.
        code, at = await asyncio.shield(proc.exited)
        return pb.WaitResponse(exit_status=code, exited_at=timestamp(at))

    async def Stats(self, req: pb.StatsRequest) -> pb.StatsResponse:
        self._ctr(req.id)
        return pb.StatsResponse(stats=pack_metrics(await self.sandbox.stats(req.id)))

    async def Connect(self, req: pb.ConnectRequest) -> pb.ConnectResponse:
        return pb.ConnectResponse(shim_pid=os.getpid(), task_pid=self.pid, version=VERSION)

    async def Shutdown(self, req: pb.ShutdownRequest) -> empty_pb2.Empty:
        if self.containers and not req.now:
            return empty_pb2.Empty()  # other containers of the pod still live here
        self.on_shutdown()
        return empty_pb2.Empty()

    # -- OOM -----------------------------------------------------------------
    def _start_oom_watch(self) -> None:
        if self._oom_task is None:
            self._oom_task = asyncio.get_running_loop().create_task(self._watch_oom())

    async def _watch_oom(self) -> None:
        """Turn a rising ``memory.events`` oom_kill of a guest cgroup into TaskOOM.

        The guest kernel counts OOM kills per cgroup; the host polls the count with
        the stats call (cheap, and the guest runs no watcher of its own), and checks
        once more when a container's init exits, so an OOM that ended it is seen.
        """
        while self.sandbox.state not in (SandboxState.STOPPED, SandboxState.DEAD):
            await asyncio.sleep(OOM_POLL_INTERVAL)
            for cid in list(self.containers):
                record = self.sandbox.containers.get(cid)
                if record is not None and record.status == "running":
                    await self._check_oom(cid)

    async def _check_oom(self, cid: str) -> None:
        ctr = self.containers.get(cid)
        try:
            kills = await self.sandbox.oom_kills(cid)
        except CocoonError:
            return
        if ctr is not None and kills > ctr.oom_kills:
            ctr.oom_kills = kills
            self.events.publish(ev.TaskOOM(container_id=cid))

    # -- ttRPC ---------------------------------------------------------------
    def register(self, server: Server) -> None:
        for method in pb.DESCRIPTOR.services_by_name["Task"].methods:
            handler = getattr(self, method.name)
            req_type: type[Message] = getattr(pb, method.input_type.name)
            server.register(SERVICE, method.name, _adapt(handler, req_type))


def _adapt(method: Callable[[Any], Awaitable[Message]], req_type: type[Message]) -> Any:
    async def handler(payload: bytes) -> bytes:
        req = req_type()
        try:
            req.ParseFromString(payload)
        except DecodeError as exc:
            raise RPCError(Code.INVALID_ARGUMENT, f"malformed request: {exc}") from exc
        try:
            resp = await method(req)
        except CocoonError as exc:
            raise to_rpc_error(exc) from exc
        return resp.SerializeToString()

    return handler


def _read_spec(bundle: str) -> dict[str, Any]:
    try:
        spec = json.loads((Path(bundle) / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"cannot read {bundle}/config.json: {exc}") from exc
    if not isinstance(spec, dict):
        raise InvalidArgument(f"{bundle}/config.json is not a JSON object")
    return spec


# containerd.runc.v1.CheckpointOptions (containerd's runc options, sent to runc's shims):
# field 1 ``exit`` (bool), field 8 ``image_path`` (string).
_CHECKPOINT_OPTIONS = "containerd.runc.v1.CheckpointOptions"


def checkpoint_options(type_url: str, value: bytes) -> tuple[bool, str]:
    """(exit, image_path) of a Checkpoint request's options; (False, "") when none are
    given or they are of another type. Raises InvalidArgument on malformed bytes."""
    if not value or not type_url.endswith(_CHECKPOINT_OPTIONS):
        return False, ""
    exit_after, image_path = False, ""
    i = 0
    try:
        while i < len(value):
            key, i = _varint(value, i)
            field_no, wire = key >> 3, key & 7
            if wire == 0:
                v, i = _varint(value, i)
                if field_no == 1:
                    exit_after = bool(v)
            elif wire == 2:
                n, i = _varint(value, i)
                if i + n > len(value):
                    raise IndexError
                if field_no == 8:
                    image_path = value[i : i + n].decode()
                i += n
            elif wire == 5:
                i += 4
            elif wire == 1:
                i += 8
            else:
                raise IndexError
    except (IndexError, UnicodeDecodeError) as exc:
        raise InvalidArgument("malformed checkpoint options") from exc
    return exit_after, image_path


def _varint(data: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = data[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def mount_rootfs(mounts: list[Any], target: Path) -> None:
    """Mount containerd's rootfs mounts (usually one overlay) on the bundle's rootfs."""
    target.mkdir(exist_ok=True)
    for m in mounts:
        argv = ["mount", "-t", m.type or "none"]
        if m.options:
            argv += ["-o", ",".join(m.options)]
        p = subprocess.run(
            [*argv, m.source, str(target)], capture_output=True, text=True, check=False
        )
        if p.returncode != 0:
            unmount_rootfs(target)
            raise InvalidArgument(f"cannot mount rootfs ({m.type}): {p.stderr.strip()}")


def unmount_rootfs(target: Path) -> None:
    for _ in range(8):
        try:
            umount(str(target))
        except OSError:
            return
