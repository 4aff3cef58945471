"""Checkpoint a running sandbox VM into an image dir, and restore one from it.

Checkpoint: refuse what cannot be saved (:func:`cocoon.checkpoint.manifest.refusal`),
record the devices, quiesce the agent link (the guest drops its long polls and
unmounts the host share, lifting QEMU's 9p migration blocker), stop the VM,
stream RAM + device state through a gzip pipe, copy the disks, write the
manifest; then either continue (``--leave-running``) or end every process with
137 and stop the VM, as CRIU's dump kills the tree.

Restore: a new QEMU of the same shape with ``-incoming defer``; the same devices
hot-plugged at the same addresses (vCPUs, DIMMs, NICs on the new namespace's
taps, the disks copied back); the stream loaded; ``cont``; the agent reconnected
and the clock stepped; the records rebuilt. Every file reaches QEMU as an fd.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cocoon import __version__
from cocoon.checkpoint import image
from cocoon.checkpoint import manifest as mf
from cocoon.errors import CocoonError, FailedPrecondition, InvalidArgument
from cocoon.hypervisor.cmdline import SharePlan
from cocoon.resources.sizing import Workload
from cocoon.storage import blockroot

if TYPE_CHECKING:
    from cocoon.hypervisor.qemu import QemuVM
    from cocoon.service.disks import ContainerDisks
    from cocoon.service.sandbox import ContainerRecord, Sandbox

log = logging.getLogger("cocoon.snapshot")
CHECKPOINT_EXIT = 128 + signal.SIGKILL  # what the engine sees, as after CRIU's dump


def _obstacles(sb: Sandbox, asked: str, pods: bool) -> str:
    rows = []
    for c in sb.containers.values():
        rootfs = c.disks.rootfs
        own = {rootfs.image.node, rootfs.scratch.node} if rootfs is not None else set()
        rows.append(
            {
                "id": c.id,
                "role": mf.MEMBER if c.member else mf.HOME,
                "status": c.status,
                "rootfs_block": rootfs is not None,
                "host_binds": c.host_binds,
                "host_devices": [n for n, _ in c.disks.plugged if n not in own],
            }
        )
    if sb.pending:  # restored members not yet claimed: their records are the manifest's
        names = ", ".join(repr(i) for i in sb.pending)
        return f"containers {names} of the restored pod await their restore"
    return mf.refusal(sb.settings.to_dict(), rows, asked, pods)


def check(sb: Sandbox, asked: str = "", pods: bool = True) -> None:
    """Raise FailedPrecondition naming why ``sb`` cannot be checkpointed now (``asked``:
    the container the request named; ``pods``: a pod may be taken whole)."""
    why = _obstacles(sb, asked, pods)
    if why:
        raise FailedPrecondition(f"cannot checkpoint: {why}")


def cpu_arg(plan_argv: list[str]) -> str:
    return plan_argv[plan_argv.index("-cpu") + 1] if "-cpu" in plan_argv else ""


def host_mismatch(sb: Sandbox, manifest: mf.Manifest) -> str:
    """Why ``sb`` (its settings already the checkpoint's) cannot load ``manifest`` (""
    if it can): the CLI checks this before it spawns the service; the shim, which hosts
    the Sandbox itself, here. QEMU's version is checked once it runs (incoming_vm)."""
    from cocoon.hypervisor.cmdline import build_argv

    plan = sb._vm_plan(SharePlan("9p", path=sb.share.shared_dir))
    host = mf.Host(
        qemu_version=manifest.qemu_version,
        accel=sb.accel,
        assets_key=sb.assets.key,
        cpu=cpu_arg(build_argv(plan)),
        machine=sb.settings.machine,
    )
    return mf.mismatch(manifest, host)


async def record(
    sb: Sandbox,
    slots: dict[str, str],
    containers: list[mf.ContainerImage],
    stats: dict[str, Any] | None = None,
) -> mf.Manifest:
    """The manifest of ``sb`` as it is now (its boot shape, every hot-plugged device at
    its PCI slot in ``slots``, the network identity, ``containers``' records): what a
    checkpoint writes beside its state file and a live migration sends ahead."""
    from cocoon.hypervisor.cmdline import build_argv

    vm = sb.vm
    assert vm is not None
    net = sb.network
    nics = [
        mf.NicImage(n.netdev_id, n.device_id, n.mac, slots.get(n.device_id, ""))
        for n in (net.plan.nics if net is not None else [])
    ]
    return mf.Manifest(
        format=mf.FORMAT,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        cocoon_version=__version__,
        qemu_version=await vm.version(),
        accel=sb.accel,
        assets_key=sb.assets.key,
        cpu=cpu_arg(build_argv(vm.plan)),
        machine=sb.settings.machine,
        settings=sb.settings.to_dict(),
        boot_vcpus=vm.plan.vcpus,
        boot_memory_mib=vm.plan.memory_mib,
        memory_object=vm.plan.memory_file is not None or vm.plan.memory_ram_object,
        cpus=await vm.plugged_cpus(),
        dimms=await vm.memory_devices(),
        nics=nics,
        guest_network=asdict(net.plan.guest) if net is not None else {},
        containers=containers,
        disk_index=sb._disk_index,
        vcpus=sb.vcpus,
        memory_mib=sb.memory_mib,
        netns=sb.netns,
        stats=dict(stats or {}),
    )


async def checkpoint(
    sb: Sandbox, directory: Path, leave_running: bool, asked: str = ""
) -> mf.Manifest:
    """Save the whole sandbox into ``directory`` (a pod: every container in its VM);
    raises CocoonError, leaving the VM running as it was when anything fails before
    the state is written."""
    from cocoon.service.clocksync import sync_once

    agent = await sb.ready()
    vm = sb.vm
    assert vm is not None
    check(sb, asked)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)  # the guest's memory
    (directory / mf.DISKS).mkdir(mode=0o700, exist_ok=True)
    for stale in (directory / mf.MANIFEST, directory / mf.STATE):
        stale.unlink(missing_ok=True)
    slots = await vm.pci_slots()
    t0 = time.monotonic()
    for c in sb.containers.values():  # read-only: saved while the VM still runs
        if c.disks.rootfs is not None:
            img = c.disks.rootfs.image
            packed = directory / mf.DISKS / pack_name(img)
            await asyncio.to_thread(image.pack_disk, img.path, packed)
    # What podman checks for before it calls restore (CRIU's index file); ours is
    # the manifest, this only says what the directory is.
    (directory / "inventory.img").write_text("cocoon checkpoint: see manifest.json\n")
    t_images = time.monotonic()
    await agent.detach(release_share=True)
    paused = False
    try:
        await vm.execute("stop")
        paused = True
        t_stop = time.monotonic()
        r, w = os.pipe2(os.O_CLOEXEC)
        pump = image.compress_from(r, directory / mf.STATE)
        try:
            figures = await vm.snapshot_to(w)
        finally:
            os.close(w)
        await asyncio.to_thread(pump.join, 120)
        t_saved = time.monotonic()
        containers = [await _save_container(c, directory, slots) for c in sb.containers.values()]
        t_disks = time.monotonic()
        manifest = await record(
            sb,
            slots,
            containers,
            {
                "ram_stream_bytes": pump.bytes_in,
                "state_file_bytes": pump.bytes_out,
                "ram_transferred": int(figures.get("ram", {}).get("transferred", 0)),
                "images_s": round(t_images - t0, 3),
                "pause_to_saved_s": round(t_saved - t_stop, 3),
                "disks_s": round(t_disks - t_saved, 3),
            },
        )
        mf.save(directory, manifest)
    except BaseException:
        if paused:
            with contextlib.suppress(CocoonError):
                await vm.execute("cont")
        agent.resume()
        raise
    if leave_running:
        await vm.execute("cont")
        agent.resume()
        with contextlib.suppress(CocoonError, TimeoutError):
            await sync_once(agent)
        log.info("checkpoint in %.2fs, left running", time.monotonic() - t0)
        return manifest
    end_processes(sb)
    # The saved VM is never continued: no goodbye to its agent (the link is detached).
    sb.agent = None
    await agent.close()
    await sb.shutdown()
    log.info("checkpoint in %.2fs, VM stopped", time.monotonic() - t0)
    return manifest


def pack_name(disk: blockroot.Disk) -> str:
    return f"{disk.path.name}.gz"


def end_processes(sb: Sandbox) -> None:
    now = time.time_ns()
    for ctr in sb.containers.values():
        for proc in (ctr.init, *ctr.execs.values()):
            if proc is not None and not proc.exit.done():
                proc.exit.set_result((CHECKPOINT_EXIT, now))
        ctr.status = "stopped"


async def _save_container(
    ctr: ContainerRecord,
    directory: Path,
    slots: dict[str, str],
) -> mf.ContainerImage:
    saved = container_image(ctr, slots)
    if ctr.disks.rootfs is not None and saved.scratch is not None:
        packed = directory / mf.DISKS / saved.scratch.file
        await asyncio.to_thread(image.pack_disk, ctr.disks.rootfs.scratch.path, packed)
    return saved


def container_image(ctr: ContainerRecord, slots: dict[str, str]) -> mf.ContainerImage:
    """The record of ``ctr`` a manifest holds (its disks named as packed files)."""
    rootfs = ctr.disks.rootfs
    img = scr = None
    if rootfs is not None:
        img = mf.DiskImage(
            rootfs.image.node,
            rootfs.image.serial,
            pack_name(rootfs.image),
            True,
            slots.get(rootfs.image.node, ""),
        )
        scr = mf.DiskImage(
            rootfs.scratch.node,
            rootfs.scratch.serial,
            pack_name(rootfs.scratch),
            False,
            slots.get(rootfs.scratch.node, ""),
        )
    # The restore ends them: their host stand-ins are gone with this service.
    running = [e for e, p in ctr.execs.items() if not p.exit.done()]
    return mf.ContainerImage(
        id=ctr.id,
        bundle=str(ctr.bundle),
        status=ctr.status,
        terminal=ctr.terminal,
        annotations=dict(ctr.annotations),
        resources=dict(ctr.resources),
        workload=asdict(ctr.workload),
        image=img,
        scratch=scr,
        execs=running,
        role=mf.MEMBER if ctr.member else mf.HOME,
        joins=ctr.joins,
        namespaces=list(ctr.namespaces),
    )


# -- restore -------------------------------------------------------------------------
DiskSource = Callable[[mf.DiskImage, Path], Awaitable[None]]
Records = list[tuple[mf.ContainerImage, "ContainerDisks"]]


async def restore(sb: Sandbox, directory: Path, cid: str, bundle: Path) -> None:
    """The boot of a restored sandbox (Sandbox._boot's other path); raises CocoonError
    with nothing left running."""
    manifest = mf.load(directory)

    async def unpack(packed: mf.DiskImage, path: Path) -> None:
        try:
            await asyncio.to_thread(image.unpack_disk, directory / mf.DISKS / packed.file, path)
        except ValueError as exc:
            raise InvalidArgument(f"checkpoint {directory}: {exc}") from exc

    vm, records = await incoming_vm(sb, manifest, unpack)
    try:
        r, w = os.pipe2(os.O_CLOEXEC)
        pump = image.decompress_into(directory / mf.STATE, w)
        try:
            await vm.load_from(r)
        finally:
            os.close(r)
        await asyncio.to_thread(pump.join, 120)
        sb._mark("restored")
        await vm.execute("cont")
    except BaseException:
        await abandon(vm, records)
        raise
    await resumed(sb, manifest, records, cid, bundle)


async def incoming_vm(
    sb: Sandbox, manifest: mf.Manifest, disk_source: DiskSource, start_paused: bool = False
) -> tuple[QemuVM, Records]:
    """A QEMU of the checkpoint's shape waiting for its state (``-incoming defer``),
    with every device of the manifest at its address: vCPUs, DIMMs, the NICs on this
    sandbox's namespace, and each container's disks (``disk_source`` writes a disk's
    file). Raises CocoonError with nothing left running. ``start_paused``: ``-S`` (a
    live migration's destination stays paused once the stream is in)."""
    from cocoon.hypervisor.qemu import QemuVM
    from cocoon.network.pod import PodNetwork
    from cocoon.service.disks import ContainerDisks

    if not sb.restore_pods and len(manifest.containers) != 1:
        raise FailedPrecondition(
            "a checkpoint of several containers (a pod) is restored through the CLI: "
            "`cocoon restore` of its home, then of each member"
        )
    sb.share.setup()
    sb.network = PodNetwork(sb.netns, sb.settings.internetworking_model, sb.settings.machine)
    await sb.network.prepare()
    plan = replace(
        sb._vm_plan(SharePlan("9p", path=sb.share.shared_dir)),
        vcpus=manifest.boot_vcpus,
        memory_mib=manifest.boot_memory_mib,
        memory_ram_object=manifest.memory_object,
        incoming=True,
        start_paused=start_paused,
    )
    for sock in (plan.qmp_socket, plan.agent_socket, plan.debug_socket):
        if sock is not None:
            sock.unlink(missing_ok=True)
    sb.vm = vm = QemuVM(plan, sb.paths.qemu_log, sb._jail_dir())
    records: Records = []
    try:
        await vm.start()
        sb._mark("qemu_started")
        sb._persist_pids()
        version = await vm.version()
        if version != manifest.qemu_version:
            raise FailedPrecondition(
                f"the checkpoint was made with QEMU {manifest.qemu_version}; "
                f"this host has {version}"
            )
        for props in manifest.cpus:
            await vm.plug_cpu(props)
        memory = manifest.boot_memory_mib
        for dimm_id, size, addr in manifest.dimms:
            memory += size >> 20
            if sb.on_memory_growth is not None:
                sb.on_memory_growth(memory)
            await vm.hotplug_memory(size >> 20, int(dimm_id.removeprefix("dimm")), addr)
        await sb.network.attach_restored(
            vm, [(n.netdev_id, n.device_id, n.mac, n.addr) for n in manifest.nics]
        )
        disks_dir = sb.paths.dir / "disks"
        disks_dir.mkdir(exist_ok=True)
        for saved in manifest.containers:
            disks = ContainerDisks()
            records.append((saved, disks))
            if saved.image is not None and saved.scratch is not None:
                disks.rootfs = _rootfs(disks_dir, saved.image, saved.scratch)
                await disk_source(saved.image, disks.rootfs.image.path)
                await disk_source(saved.scratch, disks.rootfs.scratch.path)
                await disks.plug(vm, disks.rootfs.image, saved.image.addr)
                await disks.plug(vm, disks.rootfs.scratch, saved.scratch.addr)
        sb._mark("devices_ready")
    except BaseException:
        await abandon(vm, records)
        raise
    return vm, records


async def abandon(vm: QemuVM, records: Records) -> None:
    """Undo :func:`incoming_vm`: the VM killed, the disk files removed."""
    await vm.kill()
    for _, disks in records:
        await disks.remove(None)


async def resumed(
    sb: Sandbox, manifest: mf.Manifest, records: Records, cid: str, bundle: Path
) -> None:
    """After the VM continues: the agent, the clock, the network, the records."""
    from cocoon.service.clocksync import sync_once

    assert sb.vm is not None and sb.network is not None
    asyncio.get_running_loop().create_task(sb._watch_vm())
    try:
        sb.agent = await sb._connect_agent(sb.settings.agent_timeout)
    except BaseException:
        await abandon(sb.vm, records)
        raise
    agent = sb.agent
    sb._mark("agent_ready")
    with contextlib.suppress(CocoonError, TimeoutError):
        await sync_once(agent)  # the guest's clock stood still since the checkpoint
    guest_net = asdict(sb.network.plan.guest)
    if manifest.nics and guest_net != manifest.guest_network:
        sb._warn(
            f"network namespace {sb.netns} differs from the checkpoint's: the guest is "
            "reconfigured, and its open connections may not survive"
        )
        await agent.update_network(sb.network.plan.guest)
    sb.vcpus, sb.memory_mib = manifest.vcpus, manifest.memory_mib
    sb._dimms = len(manifest.dimms)
    sb._disk_index = manifest.disk_index
    home = next((saved.id for saved, _ in records if saved.role == mf.HOME), cid)
    sb.renamed = {home: cid}
    for saved, disks in records:
        if saved.role == mf.HOME:
            await _rebuild(sb, saved, disks, cid, bundle)
        else:  # its guest processes run on; `cocoon restore` of it makes its records
            sb.pending[saved.id] = (saved, disks)
    if sb.pending:
        sb.joined = True
        log.info("members awaiting their restore: %s", ", ".join(sb.pending))
        sb.persist_awaiting()


async def restore_member(sb: Sandbox, saved_id: str, cid: str, bundle: Path) -> None:
    """A member of a restored pod gets its records (``cocoon restore`` of it): as its
    ``create`` joined the VM, without creating anything in the guest."""
    if cid in sb.containers:
        from cocoon.errors import AlreadyExists

        raise AlreadyExists(f"container {cid!r} already exists")
    if saved_id not in sb.pending:
        raise FailedPrecondition(f"no container {saved_id!r} of the restored pod awaits a restore")
    if saved_id != cid and cid in sb.pending:
        raise FailedPrecondition(f"container {cid!r} of the restored pod awaits its own restore")
    saved, disks = sb.pending.pop(saved_id)
    try:
        await _rebuild(sb, saved, disks, cid, bundle)
    except BaseException:
        sb.pending[saved_id] = (saved, disks)
        raise
    sb.renamed[saved_id] = cid
    sb.persist_awaiting()


def _rootfs(disks_dir: Path, img: mf.DiskImage, scr: mf.DiskImage) -> blockroot.BlockRootfs:
    return blockroot.BlockRootfs(
        image=blockroot.Disk(img.node, img.serial, disks_dir / img.file.removesuffix(".gz"), True),
        scratch=blockroot.Disk(
            scr.node, scr.serial, disks_dir / scr.file.removesuffix(".gz"), False
        ),
        guest_rootfs="",
    )


async def _rebuild(
    sb: Sandbox, saved: mf.ContainerImage, disks: ContainerDisks, cid: str, bundle: Path
) -> None:
    from cocoon.oci.spec import load_bundle
    from cocoon.service.sandbox import ContainerRecord

    assert sb.agent is not None
    if saved.id != cid:
        await sb.agent.rename_container(saved.id, cid)
    for exec_id in saved.execs:  # their host stand-ins are gone with the old service
        with contextlib.suppress(CocoonError):
            await sb.agent.remove_process(cid, exec_id)
    if saved.status == "paused":  # engines pause before a checkpoint; none resumes after
        await sb.agent.resume_container(cid)
    spec = load_bundle(str(bundle))
    ctr = ContainerRecord(
        cid,
        spec.path,
        status="running",
        annotations=spec.annotations,
        terminal=saved.terminal,
        workload=Workload(**saved.workload),
        resources=dict(saved.resources),
        disks=disks,
        member=saved.role == mf.MEMBER,
        joins=sb.renamed.get(saved.joins, saved.joins),
        namespaces=list(saved.namespaces),
    )
    ctr.init = sb._track(cid, "")
    sb.containers[cid] = ctr
