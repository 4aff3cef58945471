"""One sandbox: its VM, fs daemon, agent link, containers and processes.

Sandbox states: NEW → BOOTING → READY → STOPPING → STOPPED, or DEAD when the
VM exits on its own (then every waiter learns why). The VM starts generic, as
a clone of a template (cocoon.factory) or by a cold boot, and learns who it is
afterwards (CreateSandbox: clock, randomness, hostname, the share).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import secrets
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cocoon.agent.client import AgentClient
from cocoon.assets import GuestAssets
from cocoon.config.settings import Settings
from cocoon.errors import (
    AlreadyExists,
    CocoonError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from cocoon.hypervisor.cmdline import MEMORY_BLOCK_MIB, SHARE_TAG, SharePlan, VMPlan
from cocoon.hypervisor.plan import vm_plan
from cocoon.hypervisor.qemu import QemuVM, describe_exit
from cocoon.network.pod import PodNetwork
from cocoon.oci.ids import validate_exec_id, validate_id
from cocoon.oci.spec import load_bundle
from cocoon.resources.sizing import (
    Workload,
    container_workload,
    dynamic_size,
    updated_workload,
)
from cocoon.service import persist
from cocoon.service.disks import ContainerDisks
from cocoon.service.membership import JoinPlan
from cocoon.service.stdio import Relays
from cocoon.storage.blockroot import BlockRootfs
from cocoon.storage.devices import DevicePlan
from cocoon.storage.share import GUEST_SHARE, ContainerShare, SharedDir, plan_container
from cocoon.storage.virtiofsd import Virtiofsd
from cocoon.wire import agent as w

if TYPE_CHECKING:
    from cocoon.checkpoint.manifest import ContainerImage

log = logging.getLogger("cocoon.sandbox")
IO_DRAIN_TIMEOUT = 5.0
# A clone's agent answers ~0.3 s after restore (a few seconds on a loaded host);
# far later means the template is broken, and it is removed.
CLONE_AGENT_TIMEOUT = 15.0


def _last_lines(path: Path, n: int, limit: int = 400) -> str:
    """The last ``n`` non-empty lines of a log, joined into one line; the kernel's
    panic line instead when there is one (a panic ends in a stack dump). The guest
    wrote the console: control characters are dropped and the length is capped."""
    import re

    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - 16384))
            text = fh.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [
        re.sub(r"^\[\s*\d+\.\d+\]\s*", "", "".join(c for c in ln if c.isprintable())).strip()
        for ln in text.splitlines()
    ]
    lines = [ln for ln in lines if ln]
    panic = [ln for ln in lines if ln.startswith("Kernel panic")]
    out = panic[-1] if panic else " | ".join(lines[-n:])
    return out if len(out) <= limit else out[: limit - 3] + "..."


class SandboxState(enum.Enum):
    NEW = "new"
    BOOTING = "booting"
    READY = "ready"
    STOPPING = "stopping"
    STOPPED = "stopped"
    DEAD = "dead"


@dataclass
class ProcessRecord:
    cid: str
    exec_id: str
    exit: asyncio.Future[tuple[int, int]]
    relays: Relays | None = None
    waiter: asyncio.Task[None] | None = None
    host_watch: int = -1  # pidfd of the host process standing for it (the stub)


@dataclass
class ContainerRecord:
    id: str
    bundle: Path
    status: str = "created"  # created | running | stopped
    init: ProcessRecord | None = None
    execs: dict[str, ProcessRecord] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    host_pids: dict[str, int] = field(default_factory=dict)  # exec id ("" = init) → stub
    terminal: bool = False
    workload: Workload = field(default_factory=Workload)  # what dynamic sizing counts
    resources: dict[str, Any] = field(default_factory=dict)  # linux.resources, as updated
    disks: ContainerDisks = field(default_factory=ContainerDisks)  # its virtio-blk disks
    host_binds: list[str] = field(default_factory=list)  # sources live in the share
    # A container of another CLI invocation that joined this VM (cocoon.service.membership):
    member: bool = False
    joins: str = ""  # the container whose IPC/UTS/PID namespaces it joined ("" = none)
    namespaces: list[str] = field(default_factory=list)  # the kinds it shares with the pod


class Sandbox:
    def __init__(
        self, paths: persist.SandboxPaths, settings: Settings, assets: GuestAssets, accel: str
    ) -> None:
        self.paths = paths
        self.settings = settings
        self.assets = assets
        self.accel = accel
        self.state = SandboxState.NEW
        self.vm: QemuVM | None = None
        self.fsd: Virtiofsd | None = None
        self.agent: AgentClient | None = None
        self.share = SharedDir(paths.dir)
        self.containers: dict[str, ContainerRecord] = {}
        self.death_reason = ""
        self.stopped = asyncio.Event()
        self._boot_task: asyncio.Task[None] | None = None
        self._clock_task: asyncio.Task[None] | None = None
        self.timings: dict[str, float] = {}
        # Called with each host PID that stands for a guest process (the stubs),
        # so it joins the VMM's host cgroup.
        self.on_host_process: Callable[[int], None] | None = None
        # Called with the guest's new memory (MiB) before it grows (the host limit).
        self.on_memory_growth: Callable[[int], None] | None = None
        # Called after an update reached the guest: the host cgroup's share of it.
        self.on_resources_update: Callable[[str, dict[str, Any]], None] | None = None
        self.joined = False  # containers of other CLI invocations joined this VM
        self.vcpus = settings.vcpus
        self.memory_mib = settings.memory_mib
        self._dimms = 0
        self._resize_lock = asyncio.Lock()
        self._disk_index = 0  # names the containers' virtio-blk disks (their serials)
        # The pod network namespace the VM carries ("" = loopback only). Set by
        # the creator before the boot: the CLI's service daemon from state.json
        # (resolved from the bundle's spec at create, cocoon.network.netns).
        self.netns = ""
        self.network: PodNetwork | None = None
        self.warnings: list[str] = []
        # A restore (cocoon.service.snapshot): (image dir, container ID, bundle); the
        # boot then loads the checkpoint instead of starting a VM afresh.
        self.restore_from: tuple[Path, str, Path] | None = None
        # A live migration's destination (cocoon.service.migrate): (HOST:PORT to
        # listen on, container ID, bundle); the boot receives the running VM.
        self.migrate_from: tuple[str, str, Path] | None = None
        # A restored pod (the CLI's): a checkpoint of several containers may be loaded;
        # its members' records wait here (saved ID → record, disks) until `cocoon
        # restore` of each claims them (restore_member); their guest processes run on.
        self.restore_pods = False
        self.pending: dict[str, tuple[ContainerImage, ContainerDisks]] = {}
        self.renamed: dict[str, str] = {}  # saved ID → restored ID

    # -- boot ----------------------------------------------------------------
    def start_boot(self) -> None:
        if self._boot_task is None:
            self._boot_task = asyncio.get_running_loop().create_task(self._boot())

    async def ready(self) -> AgentClient:
        """Wait for the boot; raise the boot's error, or Unavailable if the VM died."""
        self.start_boot()
        assert self._boot_task is not None
        await asyncio.shield(self._boot_task)
        if self.state != SandboxState.READY or self.agent is None:
            raise Unavailable(self.death_reason or f"sandbox is {self.state.value}")
        return self.agent

    def _mark(self, name: str) -> None:
        self.timings[name] = time.monotonic()

    async def _boot(self) -> None:
        self.state = SandboxState.BOOTING
        self._mark("boot_start")
        if self.restore_from is not None:
            from cocoon.service import snapshot

            await snapshot.restore(self, *self.restore_from)
            self._now_ready()
            return
        if self.migrate_from is not None:
            from cocoon.service import migrate

            await migrate.receive(self, *self.migrate_from)
            self._now_ready()
            return
        self.share.setup()
        share: SharePlan
        if self.settings.shared_fs == "virtiofs":
            self.fsd = Virtiofsd(
                self.settings.virtiofsd,
                self.share.shared_dir,
                self.paths.vfs_sock,
                self.paths.virtiofsd_log,
            )
            await self.fsd.start()
            share = SharePlan("virtiofs", socket=self.paths.vfs_sock)
        else:
            share = SharePlan("9p", path=self.share.shared_dir)
        self.network = PodNetwork(
            self.netns, self.settings.internetworking_model, self.settings.machine
        )
        nics = await self.network.cold_nics()  # taps now; argv NICs on microvm only
        plan = self._vm_plan(share)
        if nics and self.settings.template:
            log.info("cold boot: NICs on the command line (microvm) cannot come from a template")
        if not (self.settings.template and not nics and await self._start_clone(plan)):
            await self._start_cold(replace(plan, nics=nics))
        assert self.agent is not None
        self._mark("agent_ready")
        if (self.vcpus, self.memory_mib) != (self.settings.vcpus, self.settings.memory_mib):
            await self.grow_to([])  # cloned from a smaller template: up to our own size
        await self._attach_network()
        await self.agent.create_sandbox(
            w.CreateSandboxRequest(
                sandbox_id=self.paths.id,
                # The node's name, as runc's containers inherit it; a spec's own
                # hostname is set by crun in the container's UTS namespace.
                hostname=socket.gethostname(),
                # Block rootfs mode mounts the share only for a container that has
                # directory binds (CreateContainerRequest.share): a VM with nothing
                # mounted from the host can be checkpointed.
                storages=[] if self.settings.rootfs_mode == "block" else [self._share_storage()],
                time_ns=time.time_ns(),
                seed=secrets.token_bytes(64),
                kernel_modules=list(self.settings.kernel_modules),
            )
        )
        self._mark("sandbox_ready")
        self._now_ready()

    def _now_ready(self) -> None:
        self.state = SandboxState.READY
        if self.settings.clock_sync_interval > 0:
            self._clock_task = asyncio.get_running_loop().create_task(self._clock_loop())
        t0 = self.timings["boot_start"]
        log.info("ready: %s", " ".join(f"{k}=+{v - t0:.3f}s" for k, v in self.timings.items()))

    def _share_storage(self) -> w.Storage:
        nine = self.settings.shared_fs != "virtiofs"
        return w.Storage(
            driver="9p" if nine else "virtiofs",
            source=SHARE_TAG,
            mount_point=GUEST_SHARE,
            options=["cache=mmap"] if nine else [],
        )

    async def _clock_loop(self) -> None:
        """Keep the guest's clock on the host's for the VM's whole life (a safety net)."""
        from cocoon.service.clocksync import sync_once

        while self.state == SandboxState.READY and self.agent is not None:
            await asyncio.sleep(self.settings.clock_sync_interval)
            if self.state != SandboxState.READY or self.agent is None:
                return
            try:
                await sync_once(self.agent)
            except (CocoonError, TimeoutError) as exc:
                log.info("guest clock: this round failed: %s", exc)

    def _vm_plan(self, share: SharePlan) -> VMPlan:
        return vm_plan(
            self.settings,
            self.assets,
            self.accel,
            qmp_socket=self.paths.qmp_sock,
            agent_socket=self.paths.agent_sock,
            console_log=self.paths.console_log,
            share=share,
            debug_socket=self.paths.debug_sock,
        )

    async def _attach_network(self) -> None:
        """The pod NICs into the VM and the guest, before CreateSandbox (Kata's order)."""
        assert self.vm is not None and self.agent is not None and self.network is not None
        await self.network.attach(self.vm, self.agent)
        self._mark("network_ready")

    async def attach_network(self, netns: str) -> None:
        """Carry ``netns`` into the running VM: the namespace a hook configured after
        the boot (docker's libnetwork-setkey fills the stub's). Raises CocoonError."""
        agent = await self.ready()
        assert self.vm is not None
        if self.network is not None and not self.network.plan.empty:
            raise FailedPrecondition(f"the VM already carries {self.network.netns}")
        late = PodNetwork(netns, self.settings.internetworking_model, self.settings.machine)
        try:
            await late.attach(self.vm, agent, hotplug_only=True)
        except BaseException:
            await late.teardown()
            raise
        if self.network is not None:
            await self.network.teardown()
        self.network = late

    async def _start_cold(self, plan: VMPlan) -> None:
        for sock in (plan.qmp_socket, plan.agent_socket, plan.debug_socket):  # a failed clone's
            if sock is None:
                continue
            sock.unlink(missing_ok=True)
        self.vm = QemuVM(plan, self.paths.qemu_log, self._jail_dir())
        await self.vm.start(pass_fds=tuple(n.fd for n in plan.nics))
        self._mark("qemu_started")
        asyncio.get_running_loop().create_task(self._watch_vm())
        self._persist_pids()
        try:
            self.agent = await self._connect_agent(self.settings.agent_timeout)
        except CocoonError:
            await self.vm.kill()
            raise

    async def _start_clone(self, plan: VMPlan) -> bool:
        """Start as a clone of a template; False (logged, maybe a warning) means cold boot."""
        from cocoon.factory.bound import Bound
        from cocoon.factory.choose import choose
        from cocoon.factory.store import Store

        s = self.settings
        store = Store(Path(s.template_dir), Bound(s.max_templates, s.max_template_mib << 20))
        choice = await choose(store, plan, create=True, boot_timeout=self.settings.agent_timeout)
        self._mark("template_chosen")
        if choice.template is None:
            self._warn(choice.reason) if choice.warning else log.info("%s", choice.reason)
            return False
        log.info("%s", choice.reason)
        tmpl = choice.template
        clone = replace(
            plan,
            vcpus=tmpl.meta.vcpus,
            memory_mib=tmpl.meta.memory_mib,
            memory_file=tmpl.memory,
            memory_shared=False,
            incoming=True,
        )
        self.vm = vm = QemuVM(clone, self.paths.qemu_log, self._jail_dir())
        try:
            await vm.start()
            self._mark("qemu_started")
            self._persist_pids()
            await vm.restore(tmpl.state)
            self._mark("restored")
            self.agent = await self._connect_agent(CLONE_AGENT_TIMEOUT)
        except CocoonError as exc:
            await vm.kill()
            self.vm = None
            self._warn(f"the clone of template {tmpl.meta.key[:12]} failed ({exc}): cold boot")
            with contextlib.suppress(CocoonError):
                async with store.locked(self.settings.agent_timeout):
                    store.remove(tmpl.dir)  # the next start makes a sound one
                    store.record(f"removed template {tmpl.meta.key[:12]}: a clone failed: {exc}")
            return False
        asyncio.get_running_loop().create_task(self._watch_vm())
        self.vcpus, self.memory_mib = tmpl.meta.vcpus, tmpl.meta.memory_mib
        return True

    def _jail_dir(self) -> Path:
        """QEMU's chroot: empty but for a procfs of processes only (its 9p server
        chmods through /proc/self/fd); no /proc/sys, no sysrq-trigger."""
        jail = self.paths.dir / "jail"
        proc = jail / "proc"
        if not proc.is_dir():
            proc.mkdir(parents=True)
            from cocoon.storage import mounts

            mounts.mount(
                "proc",
                str(proc),
                "proc",
                mounts.MS_NOSUID | mounts.MS_NODEV | mounts.MS_NOEXEC,
                "subset=pid,hidepid=invisible",
            )
        return jail

    def _warn(self, message: str) -> None:
        log.warning("%s", message)
        self.warnings.append(message)

    def take_warnings(self) -> list[str]:
        """Warnings for the user not yet reported (each is reported once)."""
        out, self.warnings = self.warnings, []
        return out

    async def _connect_agent(self, timeout: float) -> AgentClient:
        """The agent's client once it answers; if QEMU exits first (a guest that
        panicked, QEMU that failed), Unavailable with QEMU's exit and the console's
        last lines, not the broken socket that was its symptom."""
        assert self.vm is not None
        connect = asyncio.ensure_future(AgentClient.connect(str(self.paths.agent_sock), timeout))
        died = asyncio.ensure_future(self.vm.exited.wait())
        done, _ = await asyncio.wait({connect, died}, return_when=asyncio.FIRST_COMPLETED)
        if connect in done:
            died.cancel()
            try:
                return connect.result()
            except CocoonError:
                # The agent's socket breaks a moment before QEMU is reaped: wait
                # for that exit, which says what really happened.
                if await self.vm.wait(2.0) is None:
                    raise
        else:
            connect.cancel()
            with contextlib.suppress(BaseException):
                await connect
        raise Unavailable(self._boot_death_reason())

    def _boot_death_reason(self) -> str:
        assert self.vm is not None
        reason = f"the VM {describe_exit(self.vm.exit_code)} while booting"
        console = _last_lines(self.paths.console_log, 3)
        qemu = _last_lines(self.paths.qemu_log, 1)
        if qemu:
            reason += f"; QEMU said: {qemu}"
        if console:
            reason += f"; console: {console}"
        return reason

    def _persist_pids(self) -> None:
        try:
            st = persist.load(self.paths)
        except CocoonError:
            return
        st.qemu_pid = self.vm.pid if self.vm else 0
        st.virtiofsd_pid = self.fsd.pid if self.fsd else 0
        persist.save(self.paths, st)

    async def _watch_vm(self) -> None:
        assert self.vm is not None
        await self.vm.exited.wait()
        if self.state in (SandboxState.STOPPING, SandboxState.STOPPED):
            return
        self.state = SandboxState.DEAD
        if self._clock_task is not None:
            self._clock_task.cancel()
        self.death_reason = self._death_reason()
        log.error("%s", self.death_reason)
        if self.agent is not None:
            await self.agent.close()
        for ctr in self.containers.values():
            for proc in (ctr.init, *ctr.execs.values()):
                if proc is not None and not proc.exit.done():
                    proc.exit.set_exception(Unavailable(self.death_reason))
            ctr.status = "stopped"
        if self.fsd is not None:
            await self.fsd.stop()

    def _death_reason(self) -> str:
        code = self.vm.exit_code if self.vm is not None else None
        return f"the VM exited unexpectedly: QEMU {describe_exit(code)}"

    # -- containers ------------------------------------------------------------
    def get(self, cid: str) -> ContainerRecord:
        ctr = self.containers.get(cid)
        if ctr is None:
            raise NotFound(f"container {cid!r} does not exist")
        return ctr

    def _process(self, cid: str, exec_id: str) -> ProcessRecord:
        ctr = self.get(cid)
        proc = ctr.init if not exec_id else ctr.execs.get(exec_id)
        if proc is None:
            raise NotFound(f"process {exec_id or 'init'} of container {cid!r} does not exist")
        return proc

    async def join_container(self, cid: str, bundle_dir: str, stdin: bool) -> None:
        """A container of another CLI invocation into this VM: the VM's network, and
        the IPC/UTS/PID namespaces its spec names by a container's stub PID
        (cocoon.service.membership)."""
        from cocoon.service.membership import join_plan

        validate_id(cid)
        stubs = {
            pid: c.id
            for c in self.containers.values()
            if (pid := c.host_pids.get("", 0)) and c.status != "stopped"
        }
        join = join_plan(load_bundle(bundle_dir).spec, stubs)
        await self.create_container(cid, bundle_dir, stdin, join=join)
        self.joined = True
        if self.on_resources_update is not None:  # the VM's host CPU follows its members
            self.on_resources_update(cid, {})

    async def create_container(
        self,
        cid: str,
        bundle_dir: str,
        stdin: bool,
        pod_sandbox: str = "",
        local_rootfs: bool = False,
        join: JoinPlan | None = None,
    ) -> None:
        """Create a container in the guest; ``pod_sandbox`` names the container of this
        sandbox whose IPC, UTS and network namespaces it joins (a pod member), and
        its PID namespace too when the spec names the pod's. ``local_rootfs``: this
        process mounted the rootfs itself (the shim), so it is taken from its own
        mount namespace; every other source from the host's. ``join``: a joiner's
        plan (exactly the namespaces it names, see join_container)."""
        validate_id(cid)  # the shim's ids come straight from containerd
        if cid in self.containers:
            raise AlreadyExists(f"container {cid!r} already exists")
        bundle = load_bundle(bundle_dir)
        # A member's namespace paths name the pod's containers by the PID the shim
        # reports for them all: the VM's.
        vm_pid = self.vm.pid if self.vm is not None and pod_sandbox else 0
        plan = plan_container(
            cid,
            bundle.spec,
            bundle.rootfs,
            bundle.readonly_rootfs,
            join.pod_pids if join else frozenset({vm_pid}) if vm_pid else frozenset(),
        )
        if join is not None:
            pod_sandbox = join.target
            if join.new_network:  # its own, loopback only (docker's --network none)
                plan.guest_spec["linux"]["namespaces"].append({"type": "network"})
        plan, block, dev_plan = self._plan_disks(cid, plan)
        agent = await self.ready()
        assert self.vm is not None
        workload = container_workload(bundle.spec)
        await self.grow_to([*self._workloads(), workload])
        local = frozenset({bundle.rootfs}) if local_rootfs else frozenset()
        plan = self.share.emptydir_subpaths(plan, bundle.spec.get("annotations") or {})
        media = self.share.probe_emptydirs(plan.emptydirs)
        guest_volumes = [
            w.GuestVolume(e.guest_path, e.size, medium, dict(e.subdirs))
            for e, medium in zip(plan.emptydirs, media, strict=True)
        ]
        # A block rootfs is writable (its overlay): crun makes its own mount points.
        guest_mounts = None if block else plan.guest_spec.get("mounts") or []
        binds, guest_spec = plan.binds, plan.guest_spec
        files: list[tuple[str, bytes, int]] = []
        if block is not None:
            binds, guest_spec = self.share.shm_in_guest(binds[1:], guest_spec, local)
            binds, files, guest_spec = self.share.copy_files(binds, guest_spec, local)
        self.share.apply_binds(binds, local, guest_mounts)
        disks = ContainerDisks()
        try:
            if block is not None:
                await disks.build_rootfs(block, bundle.rootfs, local_rootfs)
                self._mark("rootfs_image_built")
                await disks.plug(self.vm, block.image)
                await disks.plug(self.vm, block.scratch)
            for dev in dev_plan.blocks:
                await disks.plug(self.vm, dev)
            await agent.create_container(
                w.CreateContainerRequest(
                    container_id=cid,
                    spec=guest_spec,
                    rootfs=plan.guest_rootfs,
                    stdin=stdin,
                    terminal=bundle.terminal,
                    pod_sandbox=pod_sandbox,
                    pod_namespaces=plan.pod_namespaces,
                    block_rootfs=(
                        w.BlockRootfs(block.image.serial, block.scratch.serial) if block else None
                    ),
                    block_devices=[
                        w.BlockDevice(d.serial, d.major, d.minor) for d in dev_plan.blocks
                    ],
                    guest_devices=dev_plan.guest_devices,
                    volumes=guest_volumes,
                    pod_exact=join is not None,
                    files=[w.GuestFile(path, data, mode) for path, data, mode in files],
                    share=self._share_storage() if block is not None and binds else None,
                )
            )
        except BaseException:
            await disks.remove(self.vm)
            self.share.remove_binds(cid)
            raise
        self._mark("container_created")
        ctr = ContainerRecord(
            cid,
            bundle.path,
            annotations=bundle.annotations,
            terminal=bundle.terminal,
            workload=workload,
            resources=dict((bundle.spec.get("linux") or {}).get("resources") or {}),
            disks=disks,
            host_binds=[str(b.source) for b in (binds if block is not None else binds[1:])],
        )
        if join is not None:
            ctr.member, ctr.joins = True, join.target
            ctr.namespaces = [*([] if join.new_network else ["network"]), *plan.pod_namespaces]
        ctr.init = self._track(cid, "")
        self.containers[cid] = ctr

    def _plan_disks(
        self, cid: str, plan: ContainerShare
    ) -> tuple[ContainerShare, BlockRootfs | None, DevicePlan]:
        """The container's virtio-blk disks: host block devices of ``linux.devices``,
        and the rootfs image in block mode (then the rootfs is not shared)."""
        from cocoon.storage import blockroot, devices

        linux = plan.guest_spec.get("linux") or {}
        nodes = devices.host_dev_nodes() if linux.get("devices") else set()
        dev_plan = devices.plan(plan.guest_spec, self._disk_index, nodes, devices.host_block_path)
        self._disk_index += len(dev_plan.blocks)
        plan = replace(plan, guest_spec={**plan.guest_spec, "linux": dev_plan.linux})
        if dev_plan.blocks:
            log.info("%s: host block devices %s", cid, devices.describe(dev_plan.blocks))
        if self.settings.rootfs_mode != "block":
            return plan, None, dev_plan
        blockroot.check_mode("block", self.settings.machine)
        block = blockroot.plan(self.paths.dir / "disks", cid, self._disk_index)
        self._disk_index += 1
        # The rootfs bind (binds[0]) stays in the plan for the volume planning that
        # counts on it; it is not applied (create_container).
        plan = replace(plan, guest_rootfs=block.guest_rootfs)
        return plan, block, dev_plan

    def _track(self, cid: str, exec_id: str) -> ProcessRecord:
        loop = asyncio.get_running_loop()
        proc = ProcessRecord(cid, exec_id, loop.create_future())

        async def waiter() -> None:
            assert self.agent is not None
            try:
                resp = await self.agent.wait_process(cid, exec_id)
            except CocoonError as exc:
                # The agent link usually breaks a moment before QEMU is reaped:
                # give the VM's exit a chance to explain what happened.
                reason = str(exc)
                if self.vm is not None and await self.vm.wait(2.0) is not None:
                    reason = self._death_reason()
                if not proc.exit.done():
                    proc.exit.set_exception(Unavailable(reason))
                return
            status = resp.status
            if not 0 <= status <= 255:  # the guest said so: it is not trusted
                log.warning("%s/%s: exit status %d from the guest: 255", cid, exec_id, status)
                status = 255
            if not proc.exit.done():
                proc.exit.set_result((status, resp.exited_at_ns))
            if exec_id and cid in self.containers:
                self.containers[cid].host_pids.pop(exec_id, None)
            if not exec_id:
                self.containers[cid].status = "stopped"
                self._mark("container_exited")

        proc.waiter = loop.create_task(waiter())
        proc.exit.add_done_callback(lambda f: f.exception() if not f.cancelled() else None)
        return proc

    def attach_stdio(
        self, cid: str, exec_id: str, stdin: int | None, stdout: int | None, stderr: int | None
    ) -> None:
        proc = self._process(cid, exec_id)
        if proc.relays is not None:
            raise FailedPrecondition(f"stdio of {cid}/{exec_id or 'init'} is already attached")
        if self.agent is None:
            raise Unavailable(self.death_reason or "the sandbox is not running")
        proc.relays = Relays(asyncio.get_running_loop(), self.agent, cid, exec_id)
        proc.relays.start(stdin, stdout, stderr)

    def attach_stdin(self, cid: str, exec_id: str, fd: int) -> None:
        """Add a stdin relay to a process whose outputs are attached (FIFOs open late)."""
        proc = self._process(cid, exec_id)
        if proc.relays is None:
            raise FailedPrecondition(f"stdio of {cid}/{exec_id or 'init'} is not attached")
        proc.relays.start_stdin(fd)

    async def close_stdin(self, cid: str, exec_id: str) -> None:
        """End the process's stdin (the caller's writer went away)."""
        self._process(cid, exec_id)
        agent = await self.ready()
        await agent.close_stdin(cid, exec_id)

    async def delete_exec(self, cid: str, exec_id: str) -> None:
        """Forget an exec'd process that has exited, here and in the guest (its id may
        be used again); FailedPrecondition while it runs."""
        proc = self._process(cid, exec_id)
        if not exec_id:
            raise InvalidArgument("the init process is deleted with its container")
        if not proc.exit.done():
            raise FailedPrecondition(f"exec {exec_id!r} of {cid!r} is still running")
        del self.get(cid).execs[exec_id]
        if self.state == SandboxState.READY and self.agent is not None:
            with contextlib.suppress(CocoonError):
                await self.agent.remove_process(cid, exec_id)

    async def start_container(self, cid: str) -> None:
        ctr = self.get(cid)
        if ctr.status != "created":
            raise FailedPrecondition(f"container {cid!r} is {ctr.status}, not created")
        agent = await self.ready()
        await agent.start_container(cid)
        self._mark("container_started")
        if ctr.status == "created":
            ctr.status = "running"

    async def exec(self, cid: str, exec_id: str, process: dict[str, Any], stdin: bool) -> None:
        ctr = self.get(cid)
        if ctr.status != "running":
            raise FailedPrecondition(f"cannot exec in container {cid!r}: it is {ctr.status}")
        validate_exec_id(exec_id)  # it names files in the guest
        if exec_id in ctr.execs:
            raise AlreadyExists(f"exec id {exec_id!r} of {cid!r} is in use")
        agent = await self.ready()
        terminal = bool(process.get("terminal", False))
        await agent.exec_process(w.ExecProcessRequest(cid, exec_id, process, stdin, terminal))
        ctr.execs[exec_id] = self._track(cid, exec_id)

    def register_process(self, cid: str, exec_id: str, host_pid: int, join: bool) -> None:
        """Record the host PID that stands for a guest process (what the engine reaps).

        Its death means the process has exited as far as the engine knows, so
        the guest process is killed then (runc's container dies with its PID).
        """
        proc = self._process(cid, exec_id)
        self.get(cid).host_pids[exec_id] = host_pid
        if join and self.on_host_process is not None:
            self.on_host_process(host_pid)
        self._watch_host_process(proc, host_pid)

    def _watch_host_process(self, proc: ProcessRecord, host_pid: int) -> None:
        self._unwatch(proc)
        if proc.exit.done():
            return
        loop = asyncio.get_running_loop()
        try:
            proc.host_watch = os.pidfd_open(host_pid)
        except OSError:  # already gone (ESRCH), or no pidfd: nothing stands for it
            log.warning("host PID %d of %s/%s is gone", host_pid, proc.cid, proc.exec_id or "init")
            loop.call_soon(self._host_process_died, proc, host_pid)
            return
        loop.add_reader(proc.host_watch, self._host_process_died, proc, host_pid)
        proc.exit.add_done_callback(lambda _f: self._unwatch(proc))

    def _unwatch(self, proc: ProcessRecord) -> None:
        if proc.host_watch < 0:
            return
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(proc.host_watch)
        with contextlib.suppress(OSError):
            os.close(proc.host_watch)
        proc.host_watch = -1

    def _host_process_died(self, proc: ProcessRecord, host_pid: int) -> None:
        self._unwatch(proc)
        if proc.exit.done():
            return  # the usual order: the guest process exited, then its stub
        what = f"{proc.cid}/{proc.exec_id or 'init'}"
        log.warning("host PID %d standing for %s died: killing it in the guest", host_pid, what)

        async def kill() -> None:
            if self.state != SandboxState.READY or self.agent is None:
                return
            try:
                await self.agent.signal_process(
                    proc.cid, proc.exec_id, signal.SIGKILL, not proc.exec_id
                )
            except CocoonError as exc:
                log.warning("could not kill %s: %s", what, exc)

        task = asyncio.get_running_loop().create_task(kill())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def resize(self, cid: str, exec_id: str, rows: int, cols: int) -> None:
        self._process(cid, exec_id)
        agent = await self.ready()
        await agent.resize(cid, exec_id, rows, cols)

    async def pause(self, cid: str) -> None:
        ctr = self.get(cid)
        if ctr.status != "running":
            raise FailedPrecondition(f"container {cid!r} is {ctr.status}, not running")
        agent = await self.ready()
        await agent.pause_container(cid)
        ctr.status = "paused"

    async def resume(self, cid: str) -> None:
        ctr = self.get(cid)
        if ctr.status != "paused":
            raise FailedPrecondition(f"container {cid!r} is {ctr.status}, not paused")
        agent = await self.ready()
        await agent.resume_container(cid)
        if ctr.status == "paused":
            ctr.status = "running"

    async def update(self, cid: str, resources: dict[str, Any]) -> None:
        ctr = self.get(cid)
        if ctr.status == "stopped":
            raise FailedPrecondition(f"container {cid!r} is stopped")
        agent = await self.ready()
        merged, workload = updated_workload(ctr.resources, resources)
        others = [
            c.workload for c in self.containers.values() if c.id != cid and c.status != "stopped"
        ]
        await self.grow_to([*others, workload])  # grow first, so the new limits fit
        await agent.update_container(cid, resources)
        ctr.workload, ctr.resources = workload, merged
        if self.on_resources_update is not None:
            self.on_resources_update(cid, resources)

    def _workloads(self) -> list[Workload]:
        return [c.workload for c in self.containers.values() if c.status != "stopped"]

    async def grow_to(self, workloads: list[Workload]) -> None:
        """Grow the VM (dynamic sizing, pc): Kata's formula over the running containers.

        Never shrinks. Raises CocoonError naming what could not be added; what was
        added stays (and is reported in the error).
        """
        if not self.settings.dynamic or self.vm is None or self.agent is None:
            return
        target = dynamic_size(
            self.settings.vcpus,
            self.settings.memory_mib,
            workloads,
            self.settings.max_vcpus,
            self.settings.max_memory_mib,
        )
        async with self._resize_lock:
            if target.vcpus > self.vcpus:
                plugged = await self.vm.hotplug_vcpus(target.vcpus)
                online = await self.agent.online_cpu_mem(plugged)
                self.vcpus = online.online_cpus
                log.info("vCPUs: %d online (wanted %d)", self.vcpus, target.vcpus)
                if self.vcpus < target.vcpus:
                    raise CocoonError(f"only {self.vcpus} of {target.vcpus} vCPUs came online")
            grow = target.memory_mib - self.memory_mib
            room = self.settings.max_memory_mib - self.memory_mib
            if grow > 0 and self._dimms < self.settings.memory_slots:
                size = min(
                    -(-grow // MEMORY_BLOCK_MIB) * MEMORY_BLOCK_MIB,
                    room // MEMORY_BLOCK_MIB * MEMORY_BLOCK_MIB,
                )
                if size > 0:
                    if self.on_memory_growth is not None:
                        self.on_memory_growth(self.memory_mib + size)
                    await self.vm.hotplug_memory(size, self._dimms)
                    self._dimms += 1
                    self.memory_mib += size
                    online = await self.agent.online_cpu_mem(self.vcpus)
                    log.info("memory: +%d MiB, guest MemTotal %d kB", size, online.mem_total_kib)
            self._mark("resized")

    async def ps(self, cid: str) -> tuple[list[int], list[w.ProcessInfo]]:
        ctr = self.get(cid)
        if ctr.status == "stopped":
            raise FailedPrecondition(f"container {cid!r} is not running")
        agent = await self.ready()
        return sorted(set(ctr.host_pids.values())), await agent.list_processes(cid)

    async def stats(self, cid: str) -> w.StatsResponse:
        ctr = self.get(cid)
        if ctr.status == "stopped":
            raise FailedPrecondition(f"container {cid!r} is not running")
        agent = await self.ready()
        return await agent.stats(cid)

    async def oom_kills(self, cid: str) -> int:
        """How many processes the guest's OOM killer killed in the container's cgroup.

        Works after the container's init exited too (until it is deleted), so an
        OOM that ended the container is still seen. Raises Unavailable, NotFound.
        """
        self.get(cid)
        agent = await self.ready()
        return (await agent.stats(cid)).memory_events.get("oom_kill", 0)

    def exit_status(self, cid: str) -> int:
        init = self.get(cid).init
        if init is None or not init.exit.done() or init.exit.exception() is not None:
            return -1
        return init.exit.result()[0]

    async def kill(self, cid: str, exec_id: str, sig: int, all_procs: bool) -> None:
        proc = self._process(cid, exec_id)
        if proc.exit.done():
            raise FailedPrecondition(f"container {cid!r} is not running")
        agent = await self.ready()
        await agent.signal_process(cid, exec_id, sig, all_procs)

    async def wait(self, cid: str, exec_id: str) -> tuple[int, int]:
        """The exit status (after output is drained); raises Unavailable if the VM died."""
        proc = self._process(cid, exec_id)
        status = await asyncio.shield(proc.exit)
        if proc.relays is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.relays.done.wait(), IO_DRAIN_TIMEOUT)
        return status

    async def delete_container(self, cid: str, force: bool) -> None:
        ctr = self.get(cid)
        if ctr.status == "running" and not force:
            raise FailedPrecondition(f"container {cid!r} is running; stop it or use --force")
        if self.state == SandboxState.READY and self.agent is not None:
            assert ctr.init is not None
            if not ctr.init.exit.done():
                with contextlib.suppress(CocoonError):
                    await self.agent.signal_process(cid, "", signal.SIGKILL, True)
                with contextlib.suppress(CocoonError, TimeoutError):
                    await asyncio.wait_for(asyncio.shield(ctr.init.exit), 10)
            with contextlib.suppress(CocoonError):
                await self.agent.remove_container(cid)
        live = self.vm if self.state == SandboxState.READY else None
        await ctr.disks.remove(live)
        self.share.remove_binds(cid)
        del self.containers[cid]

    async def checkpoint(
        self, directory: Path, leave_running: bool, asked: str = ""
    ) -> dict[str, Any]:
        """The whole sandbox into ``directory`` (cocoon.service.snapshot); its figures.
        ``asked``: the container the request named (a member alone is refused)."""
        from cocoon.service import snapshot

        manifest = await snapshot.checkpoint(self, directory, leave_running, asked)
        return dict(manifest.stats)

    async def restore_member(self, cid: str, bundle_dir: str, saved_id: str) -> None:
        """``cocoon restore`` of a member of this restored pod: its records rebuilt from
        the checkpoint's (renamed in the guest when ``cid`` differs from ``saved_id``)."""
        from cocoon.service import snapshot

        validate_id(cid)
        await self.ready()
        await snapshot.restore_member(self, saved_id, cid, Path(bundle_dir))
        if self.on_resources_update is not None:  # the VM's host CPU follows its members
            self.on_resources_update(cid, {})

    def persist_awaiting(self) -> None:
        """Record in the home's state which members await their restore (what a
        member's ``cocoon restore`` looks for)."""
        try:
            st = persist.load(self.paths)
            st.awaiting = [{"id": i, "bundle": c.bundle} for i, (c, _) in self.pending.items()]
            persist.save(self.paths, st)
        except (CocoonError, OSError) as exc:
            log.warning("cannot record the members awaiting their restore: %s", exc)

    async def migrate(self, to: str) -> dict[str, Any]:
        """Move the running sandbox to the destination listening on ``to``
        (cocoon.service.migrate); on success this VM is gone, on failure it runs on."""
        from cocoon.service import migrate

        return await migrate.send(self, to)

    # -- teardown ------------------------------------------------------------
    async def shutdown(self) -> None:
        """Stop the VM and the fs daemon; idempotent, never raises."""
        if self.state == SandboxState.STOPPED:
            return
        was_ready = self.state == SandboxState.READY
        self.state = SandboxState.STOPPING
        if self._clock_task is not None:
            self._clock_task.cancel()
        if self._boot_task is not None and not self._boot_task.done():
            self._boot_task.cancel()
            with contextlib.suppress(BaseException):
                await self._boot_task
        if self.vm is not None:
            if was_ready and self.agent is not None:
                with contextlib.suppress(CocoonError, TimeoutError):
                    await asyncio.wait_for(self.agent.destroy_sandbox(), 5)
                await self.vm.wait(5)
            await self.vm.stop()
        if self.agent is not None:
            await self.agent.close()
        if self.fsd is not None:
            await self.fsd.stop()
        for ctr in self.containers.values():
            await ctr.disks.remove(None)  # QEMU is gone: only the files
        for _, disks in self.pending.values():  # members never restored end with the VM
            await disks.remove(None)
        if self.network is not None:
            await self.network.teardown()  # after QEMU: it held the taps
        self.state = SandboxState.STOPPED
        self.stopped.set()
