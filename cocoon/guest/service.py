"""The agent's RPC handlers: decode with the shared schemas, call the manager."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from cocoon import __version__
from cocoon.guest import network, system, volumes
from cocoon.guest.containers import ContainerManager
from cocoon.guest.reaper import Reaper
from cocoon.ttrpc.server import Server
from cocoon.ttrpc.status import Code, RPCError
from cocoon.wire import agent as w
from cocoon.wire import codec

log = logging.getLogger("cocoon.guest")
STORAGE_ROOT = "/run/cocoon/storage"
# File binds carried by value (CreateContainerRequest.files) live here.
FILES_ROOT = "/run/cocoon/files/"
# The calls a Detach drops: the host re-issues them after the save (or a restore).
LONG_POLLS = frozenset({"WaitProcess", "ReadStdout", "ReadStderr"})


class AgentService:
    def __init__(self, reaper: Reaper) -> None:
        self.reaper = reaper
        self.containers = ContainerManager(reaper)
        self.sandbox_id = ""
        self.mounts: list[str] = []
        self._server: Server | None = None

    # -- sandbox -----------------------------------------------------------
    async def Check(self, _: w.Empty) -> w.CheckResponse:
        return w.CheckResponse(__version__, os.uname().release, system.uptime())

    async def CreateSandbox(self, req: w.CreateSandboxRequest) -> w.Empty:
        if self.sandbox_id and self.sandbox_id != req.sandbox_id:
            raise RPCError(Code.ALREADY_EXISTS, f"this VM already serves {self.sandbox_id!r}")
        if req.time_ns:
            system.set_clock(req.time_ns)
        system.reseed_random(req.seed)
        # A template's clones all resume the same Python state: reseed ours too.
        if "random" in sys.modules:
            sys.modules["random"].seed(os.urandom(32))
        if req.hostname:
            system.sethostname(req.hostname)
        try:
            network.write_name_files(req.hostname, req.dns, self._bind_file)
        except OSError as exc:  # the guest's own name files: not worth failing a sandbox
            log.warning("cannot write /etc/hosts or /etc/resolv.conf: %s", exc)
        try:
            # Pod members sharing the VM's namespace (host-network pods) talk over lo.
            network.loopback_up()
        except OSError as exc:
            log.warning("cannot bring lo up: %s", exc)
        for st in req.storages:
            self._mount_storage(st)
        for spec in req.kernel_modules:
            await self._load_module(spec)
        self.sandbox_id = req.sandbox_id
        return w.Empty()

    async def _load_module(self, spec: str) -> None:
        """modprobe one ``[agent] kernel_modules`` entry; a failure fails the sandbox."""
        try:
            argv = system.module_argv(spec)
        except ValueError as exc:
            raise RPCError(Code.INVALID_ARGUMENT, str(exc)) from exc
        code, out = await self.reaper.run(argv)
        if code != 0:
            last = out.splitlines()[-1] if out else f"modprobe exited with {code}"
            raise RPCError(Code.INVALID_ARGUMENT, f"kernel module {argv[2]}: {last}")

    async def ReadClock(self, _: w.Empty) -> w.ReadClockResponse:
        return w.ReadClockResponse(time.clock_gettime_ns(time.CLOCK_REALTIME))

    async def AdjustClock(self, req: w.AdjustClockRequest) -> w.Empty:
        system.adjust_clock(req.delta_ns, req.step)
        return w.Empty()

    @staticmethod
    def _bind_file(source: str, target: str) -> None:
        if not system.is_mounted(target):
            system.mount(source, target, "", system.MS_BIND)

    async def UpdateNetwork(self, req: w.UpdateNetworkRequest) -> w.Empty:
        await network.update(self.reaper, req)
        return w.Empty()

    def _mount_storage(self, st: w.Storage) -> None:
        if not st.mount_point.startswith("/run/"):
            raise RPCError(Code.INVALID_ARGUMENT, f"mount point {st.mount_point} is not under /run")
        if system.is_mounted(st.mount_point):
            return
        os.makedirs(st.mount_point, exist_ok=True)
        flags = system.MS_RDONLY if st.readonly else 0
        if st.driver == "9p":
            opts = ["trans=virtio", "version=9p2000.L", "msize=524288", *st.options]
            system.mount(st.source, st.mount_point, "9p", flags, ",".join(opts))
        elif st.driver == "virtiofs":
            system.mount(st.source, st.mount_point, "virtiofs", flags, ",".join(st.options))
        else:
            raise RPCError(Code.INVALID_ARGUMENT, f"unknown storage driver {st.driver!r}")
        self.mounts.append(st.mount_point)

    async def Detach(self, req: w.DetachRequest) -> w.DetachResponse:
        dropped = await self._server.quiesce(LONG_POLLS) if self._server is not None else 0
        released = False
        if req.release_share:
            for mp in [m for m in self.mounts if m.startswith("/run/cocoon/shared")]:
                try:
                    system.umount(mp)
                except OSError as exc:
                    raise RPCError(
                        Code.FAILED_PRECONDITION, f"the host share {mp} is in use: {exc}"
                    ) from exc
                self.mounts.remove(mp)
                released = True
        log.info("detached: %d long polls dropped, share released: %s", dropped, released)
        return w.DetachResponse(dropped, released)

    async def RemoveProcess(self, req: w.ProcessRequest) -> w.Empty:
        await self.containers.forget(req.container_id, req.exec_id)
        return w.Empty()

    async def RenameContainer(self, req: w.RenameContainerRequest) -> w.Empty:
        self.containers.rename(req.old_id, req.new_id)
        return w.Empty()

    @staticmethod
    def _write_files(files: list[w.GuestFile]) -> None:
        for f in files:
            path = os.path.normpath(f.path)
            if not path.startswith(FILES_ROOT) or "\0" in path:
                raise RPCError(Code.INVALID_ARGUMENT, f"file {f.path} is not under {FILES_ROOT}")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, f.data)
                os.fchmod(fd, f.mode & 0o7777)
            finally:
                os.close(fd)

    async def DestroySandbox(self, _: w.Empty) -> w.Empty:
        await self.containers.remove_all()
        for mp in reversed(self.mounts):
            with contextlib.suppress(OSError):
                system.umount(mp)
        asyncio.get_running_loop().call_later(0.05, system.power_off)
        return w.Empty()

    # -- containers ----------------------------------------------------------
    async def CreateContainer(self, req: w.CreateContainerRequest) -> w.Empty:
        if req.share is not None:
            self._mount_storage(req.share)
        self._write_files(req.files)
        for vol in req.volumes:
            try:
                volumes.ensure(vol)
            except (ValueError, OSError) as exc:
                raise RPCError(Code.INVALID_ARGUMENT, str(exc)) from exc
        await self.containers.create(
            req.container_id,
            req.spec,
            req.rootfs,
            req.stdin,
            req.terminal,
            req.pod_sandbox,
            req.pod_namespaces,
            req.pod_exact,
            block_rootfs=(
                (req.block_rootfs.image_serial, req.block_rootfs.scratch_serial)
                if req.block_rootfs is not None
                else None
            ),
            block_devices={d.serial: (d.host_major, d.host_minor) for d in req.block_devices},
            guest_devices=req.guest_devices,
        )
        return w.Empty()

    async def StartContainer(self, req: w.ContainerRequest) -> w.Empty:
        await self.containers.start(req.container_id)
        return w.Empty()

    async def RemoveContainer(self, req: w.ContainerRequest) -> w.Empty:
        await self.containers.remove(req.container_id)
        return w.Empty()

    async def ExecProcess(self, req: w.ExecProcessRequest) -> w.Empty:
        await self.containers.exec(
            req.container_id, req.exec_id, req.process, req.stdin, req.terminal
        )
        return w.Empty()

    async def SignalProcess(self, req: w.SignalProcessRequest) -> w.Empty:
        await self.containers.signal(req.container_id, req.exec_id, req.signal, req.all)
        return w.Empty()

    async def WaitProcess(self, req: w.ProcessRequest) -> w.WaitProcessResponse:
        code, at = await self.containers.wait(req.container_id, req.exec_id)
        return w.WaitProcessResponse(code, at)

    async def WriteStdin(self, req: w.WriteStreamRequest) -> w.WriteStreamResponse:
        n = await self.containers.write(req.container_id, req.exec_id, req.data)
        return w.WriteStreamResponse(n)

    async def CloseStdin(self, req: w.ProcessRequest) -> w.Empty:
        self.containers.close_stdin(req.container_id, req.exec_id)
        return w.Empty()

    async def ReadStdout(self, req: w.ReadStreamRequest) -> w.ReadStreamResponse:
        data, eof = await self.containers.read(req.container_id, req.exec_id, "stdout", req.max_len)
        return w.ReadStreamResponse(data, eof)

    async def ReadStderr(self, req: w.ReadStreamRequest) -> w.ReadStreamResponse:
        data, eof = await self.containers.read(req.container_id, req.exec_id, "stderr", req.max_len)
        return w.ReadStreamResponse(data, eof)

    async def TtyWinResize(self, req: w.TtyWinResizeRequest) -> w.Empty:
        self.containers.resize(req.container_id, req.exec_id, req.rows, req.cols)
        return w.Empty()

    async def ListProcesses(self, req: w.ContainerRequest) -> w.ListProcessesResponse:
        procs = self.containers.processes(req.container_id)
        return w.ListProcessesResponse([w.ProcessInfo(pid, args) for pid, args in procs])

    async def PauseContainer(self, req: w.ContainerRequest) -> w.Empty:
        await self.containers.pause(req.container_id)
        return w.Empty()

    async def ResumeContainer(self, req: w.ContainerRequest) -> w.Empty:
        await self.containers.resume(req.container_id)
        return w.Empty()

    async def UpdateContainer(self, req: w.UpdateContainerRequest) -> w.Empty:
        await self.containers.update(req.container_id, req.resources)
        return w.Empty()

    async def StatsContainer(self, req: w.ContainerRequest) -> w.StatsResponse:
        from cocoon.guest.stats import read_stats

        return read_stats(self.containers.cgroup_dir(req.container_id))

    async def OnlineCPUMem(self, req: w.OnlineCPUMemRequest) -> w.OnlineCPUMemResponse:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + req.timeout
        while True:
            cpus, mem = system.online_cpus_and_memory()
            if cpus >= req.nb_cpus or loop.time() > deadline:
                return w.OnlineCPUMemResponse(cpus, mem)
            await asyncio.sleep(0.02)  # the ACPI hotplug event is still on its way

    # -- wiring ----------------------------------------------------------------
    def register(self, server: Server) -> None:
        self._server = server
        for name, (req_type, _resp_type) in w.METHODS.items():
            method: Callable[[Any], Awaitable[Any]] = getattr(self, name)
            server.register(w.SERVICE, name, _adapt(method, req_type))


def _adapt(method: Callable[[Any], Awaitable[Any]], req_type: type) -> Any:
    async def handler(payload: bytes) -> bytes:
        try:
            req = codec.decode(req_type, payload)
        except codec.SchemaError as exc:
            raise RPCError(Code.INVALID_ARGUMENT, str(exc)) from exc
        try:
            return codec.encode(await method(req))
        except OSError as exc:
            raise RPCError(Code.INTERNAL, str(exc)) from exc

    return handler
