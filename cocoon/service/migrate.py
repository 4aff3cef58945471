"""Live migration of a running sandbox to another host: ``cocoon migrate ID --to
HOST:PORT`` on the source, ``cocoon restore --listen HOST:PORT --bundle B ID`` on the
destination (whose service is started like a restore's, ``listen`` in its state).

One control TCP connection from the source to the destination carries, in frames
(4-byte length, JSON; the disk images as raw bytes after their header):

1. source → destination: the manifest (:func:`cocoon.service.snapshot.record`, as a
   checkpoint writes it, without a state file), each container's read-only rootfs
   image packed (:func:`cocoon.checkpoint.image.pack_disk`) and each scratch disk's
   size;
2. destination: checks the host against the manifest, starts QEMU with ``-incoming
   defer -S`` and the manifest's devices (:func:`cocoon.service.snapshot.incoming_vm`,
   the pod network on this host's namespace, an empty sparse scratch disk of the
   same size), serves the scratch disks over NBD (QEMU listens on a passed socket),
   and answers ``ready`` with the NBD and migration ports;
3. source: detaches its agent link (the guest unmounts the share), opens the NBD
   connections and the migration connection (fds passed to QEMU), mirrors the
   scratch disks, pre-copies RAM with pause-before-switchover, completes the
   mirrors at the switchover (:mod:`cocoon.hypervisor.migration`), and says ``sent``;
4. destination: once the stream is complete and the source said ``sent``, stops
   the NBD export, continues the guest, reconnects the agent, steps the clock,
   rebuilds its records (:func:`cocoon.service.snapshot.resumed`), answers
   ``running``;
5. source: only then ends its processes (the engine's PID exits) and its VM; its
   service ends and removes the sandbox's state, as a delete would.

Any failure before ``running``: the source cancels (:func:`migration.abort_out`),
continues its guest and re-opens its agent link, untouched; the destination kills
its QEMU and its service is torn down by its CLI, leaving nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import socket
import struct
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cocoon.checkpoint import image
from cocoon.checkpoint import manifest as mf
from cocoon.errors import CocoonError, FailedPrecondition, InvalidArgument, Unavailable
from cocoon.hypervisor import migration
from cocoon.service import snapshot

if TYPE_CHECKING:
    from cocoon.service.sandbox import Sandbox

log = logging.getLogger("cocoon.migrate")

ACCEPT_TIMEOUT = 600.0  # s a destination waits for its source
CONNECT_TIMEOUT = 5.0  # s a source keeps trying to reach the destination
REPLY_TIMEOUT = 300.0  # s for the destination's ready / running
MAX_FRAME = 16 << 20
MAX_IMAGE = 1 << 40  # bytes: a peer's image or scratch size beyond this is not believed
CHUNK = 1 << 20


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT``) → (host, port); InvalidArgument otherwise."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(f"{text!r} is not HOST:PORT")
    return host, int(port)


# -- framing ------------------------------------------------------------------------


async def send_frame(w: asyncio.StreamWriter, msg: dict[str, Any]) -> None:
    data = json.dumps(msg).encode()
    w.write(struct.pack(">I", len(data)) + data)
    await w.drain()


async def read_frame(r: asyncio.StreamReader, what: str) -> dict[str, Any]:
    """One JSON frame; Unavailable when the peer closed the connection."""
    try:
        (n,) = struct.unpack(">I", await r.readexactly(4))
        if n > MAX_FRAME:
            raise InvalidArgument(f"{what}: a frame of {n} bytes")
        msg = json.loads(await r.readexactly(n))
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise Unavailable(f"{what}: the connection closed") from exc
    except ValueError as exc:
        raise InvalidArgument(f"{what}: unreadable message") from exc
    if not isinstance(msg, dict):
        raise InvalidArgument(f"{what}: unreadable message")
    return msg


async def _say_error(w: asyncio.StreamWriter, exc: BaseException) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(send_frame(w, {"error": str(exc) or type(exc).__name__}), 2)


def _refused(msg: dict[str, Any], what: str) -> CocoonError:
    return CocoonError(f"{what}: {msg.get('error') or 'unexpected ' + json.dumps(msg)[:200]}")


# -- source ---------------------------------------------------------------------------


async def _connect(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    deadline = time.monotonic() + CONNECT_TIMEOUT
    while True:
        try:
            return await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            if time.monotonic() > deadline:
                raise Unavailable(f"cannot reach the destination {host}:{port}: {exc}") from exc
            await asyncio.sleep(0.2)


def _tcp(host: str, port: int) -> socket.socket:
    try:
        sock = socket.create_connection((host, port), timeout=10)
    except OSError as exc:
        raise Unavailable(f"cannot connect to the destination {host}:{port}: {exc}") from exc
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


async def send(sb: Sandbox, to: str) -> dict[str, Any]:
    """Move ``sb`` to the destination listening on ``to``; its figures. Raises
    CocoonError with the sandbox running on here as it was."""
    host, port = parse_address(to)
    agent = await sb.ready()
    vm = sb.vm
    assert vm is not None
    snapshot.check(sb, pods=False)  # a pod is checkpointed and restored, not migrated
    t0 = time.monotonic()
    async with sb._resize_lock:  # no hot-plug while the devices are recorded and moved
        slots = await vm.pci_slots()
        containers = [snapshot.container_image(c, slots) for c in sb.containers.values()]
        manifest = await snapshot.record(sb, slots, containers)
        r, w = await _connect(host, port)
        outgoing = sb.paths.dir / "outgoing"
        try:
            await _send_header(sb, manifest, w, outgoing)
            t_header = time.monotonic()
            ready = await asyncio.wait_for(read_frame(r, "the destination"), REPLY_TIMEOUT)
            if not ready.get("ready"):
                raise _refused(ready, "the destination refused the migration")
            t_ready = time.monotonic()
            figures = await _move(sb, host, ready, r, w)
        except BaseException as exc:
            await _say_error(w, exc)
            raise
        finally:
            w.close()
            shutil.rmtree(outgoing, ignore_errors=True)
    t_running = time.monotonic()
    # The destination runs: this VM must never run again.
    snapshot.end_processes(sb)
    sb.agent = None
    await agent.close()
    await sb.shutdown()
    stats = {
        **figures,
        "header_s": round(t_header - t0, 3),
        "destination_ready_s": round(t_ready - t0, 3),
        "total_s": round(t_running - t0, 3),
    }
    log.info("migrated to %s: %s", to, " ".join(f"{k}={v}" for k, v in stats.items()))
    return stats


async def _send_header(
    sb: Sandbox, manifest: mf.Manifest, w: asyncio.StreamWriter, outgoing: Path
) -> None:
    """The manifest, the scratch sizes, then each packed rootfs image's bytes."""
    outgoing.mkdir(exist_ok=True)
    images: list[dict[str, Any]] = []
    scratch: dict[str, int] = {}
    for ctr in sb.containers.values():
        rootfs = ctr.disks.rootfs
        if rootfs is None:
            continue
        packed = outgoing / snapshot.pack_name(rootfs.image)
        await asyncio.to_thread(image.pack_disk, rootfs.image.path, packed)
        images.append({"file": packed.name, "size": packed.stat().st_size})
        scratch[snapshot.pack_name(rootfs.scratch)] = rootfs.scratch.path.stat().st_size
    await send_frame(w, {"manifest": asdict(manifest), "images": images, "scratch": scratch})
    for entry in images:
        with open(outgoing / entry["file"], "rb") as fh:
            while chunk := fh.read(CHUNK):
                w.write(chunk)
                await w.drain()


def _scratch_nodes(sb: Sandbox) -> list[str]:
    return [c.disks.rootfs.scratch.node for c in sb.containers.values() if c.disks.rootfs]


async def _move(
    sb: Sandbox,
    host: str,
    ready: dict[str, Any],
    r: asyncio.StreamReader,
    w: asyncio.StreamWriter,
) -> dict[str, Any]:
    """Mirror, migrate, hand over; on any failure the source runs on (and it raises)."""
    vm = sb.vm
    assert vm is not None and sb.agent is not None
    agent = sb.agent
    await agent.detach(release_share=True)
    socks: list[socket.socket] = []
    nodes: list[str] = []
    try:
        targets = []
        for node in _scratch_nodes(sb):
            socks.append(_tcp(host, int(ready["nbd_port"])))
            targets.append((node, socks[-1].fileno()))
        t_mirror = time.monotonic()
        nodes = await migration.mirror_disks(vm, targets)
        t_mirrored = time.monotonic()
        socks.append(_tcp(host, int(ready["migrate_port"])))
        stats = await migration.migrate_out(vm, socks[-1].fileno(), nodes)
        t_sent = time.monotonic()
        await send_frame(w, {"sent": True, "downtime_ms": stats.downtime_ms})
        running = await asyncio.wait_for(read_frame(r, "the destination"), REPLY_TIMEOUT)
        if not running.get("running"):
            raise _refused(running, "the destination failed to run the VM")
    except BaseException as exc:
        log.warning("live migration failed, the source runs on: %s", exc)
        await migration.abort_out(vm, nodes, was_running=True)
        agent.resume()
        raise
    finally:
        for s in socks:
            s.close()
    return {
        "mirror_ready_s": round(t_mirrored - t_mirror, 3),
        "migrate_s": round(t_sent - t_mirrored, 3),
        "handover_s": round(time.monotonic() - t_sent, 3),
        "qemu_downtime_ms": stats.downtime_ms,
        "qemu_total_ms": stats.qemu_total_ms,
        "switchover_s": round(stats.switchover_seconds, 3),
        "ram_transferred": stats.transferred,
        "ram_total": stats.ram_total,
        "dirty_sync_count": stats.dirty_sync_count,
        "disk_bytes": sum(stats.disk_bytes.values()),
        "guest_memory_mib": sb.memory_mib,
    }


# -- destination ------------------------------------------------------------------


def _listener(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(8)
    except OSError as exc:
        sock.close()
        raise InvalidArgument(f"cannot listen on {host}:{port}", exc) from exc
    sock.setblocking(False)
    return sock


async def _accept(sock: socket.socket, timeout: float, what: str) -> socket.socket:
    try:
        conn, _ = await asyncio.wait_for(asyncio.get_running_loop().sock_accept(sock), timeout)
    except TimeoutError:
        raise Unavailable(f"no {what} within {timeout:g}s") from None
    conn.setblocking(True)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


def _host_mismatch(sb: Sandbox, manifest: mf.Manifest) -> str:
    from cocoon.cli.checkpoint import host_qemu_version, normalise_version
    from cocoon.config.settings import Settings
    from cocoon.hypervisor.cmdline import build_argv
    from cocoon.hypervisor.plan import vm_plan

    # The source's VM shape, with this host's binaries (the peer never names one).
    settings = Settings.from_dict(mf.restored_settings(manifest.settings, sb.settings.to_dict()))
    plan = vm_plan(
        settings,
        sb.assets,
        sb.accel,
        qmp_socket=sb.paths.qmp_sock,
        agent_socket=sb.paths.agent_sock,
        console_log=sb.paths.console_log,
        share=None,
        debug_socket=None,
    )
    host = mf.Host(
        qemu_version=host_qemu_version(settings.qemu),
        accel=sb.accel,
        assets_key=sb.assets.key,
        cpu=snapshot.cpu_arg(build_argv(plan)),
        machine=settings.machine,
    )
    saved = mf.parse(asdict(manifest), "the source's manifest")
    saved.qemu_version = normalise_version(saved.qemu_version)
    return mf.mismatch(saved, host)


async def receive(sb: Sandbox, address: str, cid: str, bundle: Path) -> None:
    """The boot of a migration's destination: listen on ``address``, receive the
    sandbox, run it. Raises CocoonError with no VM left (the caller tears down)."""
    host, port = parse_address(address)
    control = _listener(host, port)
    try:
        conn = await _accept(control, ACCEPT_TIMEOUT, f"source connected to {address}")
    finally:
        control.close()
    r, w = await asyncio.open_connection(sock=conn)
    incoming = sb.paths.dir / "incoming"
    try:
        await _receive(sb, host, r, w, incoming, cid, bundle)
    except BaseException as exc:
        await _say_error(w, exc)
        raise
    finally:
        w.close()
        shutil.rmtree(incoming, ignore_errors=True)


async def _receive(
    sb: Sandbox,
    host: str,
    r: asyncio.StreamReader,
    w: asyncio.StreamWriter,
    incoming: Path,
    cid: str,
    bundle: Path,
) -> None:
    from cocoon.config.settings import Settings
    from cocoon.service import persist
    from cocoon.storage import blockroot

    header = await asyncio.wait_for(read_frame(r, "the source"), 60)
    manifest = mf.parse(header.get("manifest"), "the source's manifest")
    why = _host_mismatch(sb, manifest)
    if why:
        raise FailedPrecondition(f"cannot receive the migration: {why}")
    merged = mf.restored_settings(manifest.settings, sb.settings.to_dict())
    sb.settings = Settings.from_dict(merged)
    with contextlib.suppress(CocoonError):
        st = persist.load(sb.paths)
        st.settings = merged
        persist.save(sb.paths, st)
    incoming.mkdir(exist_ok=True)
    expected = {c.image.file for c in manifest.containers if c.image is not None}
    for entry in header.get("images", []):
        name = str(entry["file"])
        remaining = int(entry["size"])
        if name not in expected or not 0 <= remaining <= MAX_IMAGE:
            raise InvalidArgument(f"the source sends an unexpected image {name!r} ({remaining} B)")
        with open(incoming / name, "wb") as fh:
            while remaining:
                try:
                    chunk = await r.readexactly(min(CHUNK, remaining))
                except asyncio.IncompleteReadError as exc:
                    raise Unavailable("the source closed the connection mid-image") from exc
                fh.write(chunk)
                remaining -= len(chunk)
    sizes = {str(k): int(v) for k, v in dict(header.get("scratch", {})).items()}
    if not all(0 < v <= MAX_IMAGE for v in sizes.values()):
        raise InvalidArgument("the source names a scratch disk of an impossible size")

    async def disk_source(packed: mf.DiskImage, path: Path) -> None:
        if packed.readonly:
            try:
                await asyncio.to_thread(image.unpack_disk, incoming / packed.file, path)
            except (ValueError, OSError) as exc:
                raise InvalidArgument(f"the source's image {packed.file}: {exc}") from exc
        else:  # filled by the source's mirror
            blockroot.create_scratch(path, sizes.get(packed.file, blockroot.SCRATCH_BYTES))

    vm, records = await snapshot.incoming_vm(sb, manifest, disk_source, start_paused=True)
    socks: list[socket.socket] = []
    try:
        nodes = [s.scratch.node for s, _ in records if s.scratch is not None]
        nbd = _listener(host, 0)
        socks.append(nbd)
        await migration.serve_disks(vm, nbd.fileno(), nodes)
        mig = _listener(host, 0)
        socks.append(mig)
        await send_frame(
            w,
            {"ready": True, "nbd_port": nbd.getsockname()[1], "migrate_port": mig.getsockname()[1]},
        )
        conn = await _accept(mig, REPLY_TIMEOUT, "migration connection")
        socks.append(conn)
        stream = asyncio.ensure_future(migration.migrate_in(vm, conn.fileno()))
        said = asyncio.ensure_future(read_frame(r, "the source"))
        try:
            done, _ = await asyncio.wait({stream, said}, return_when=asyncio.FIRST_COMPLETED)
            if said in done:
                msg = said.result()
                if not msg.get("sent"):
                    raise _refused(msg, "the source gave up")
                await asyncio.wait_for(stream, 60)
            else:
                stream.result()
                msg = await asyncio.wait_for(said, REPLY_TIMEOUT)
                if not msg.get("sent"):
                    raise _refused(msg, "the source gave up")
        finally:
            for task in (stream, said):
                task.cancel()
        await migration.finish_in(vm, disks=bool(nodes))  # every byte is here: run
        sb._mark("restored")
    except BaseException:
        await snapshot.abandon(vm, records)
        raise
    finally:
        for s in socks:
            s.close()
    try:
        await snapshot.resumed(sb, manifest, records, cid, bundle)
        await send_frame(w, {"running": True})
    except BaseException:
        await snapshot.abandon(vm, records)
        raise
    log.info("received the migration; downtime on the source's side %s ms", msg.get("downtime_ms"))
