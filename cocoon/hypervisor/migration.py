"""Live migration of a running VM to another QEMU: RAM pre-copy and disk mirroring.

QEMU is jailed (own uid, seccomp with ``spawn=deny``, chrooted into an empty
directory), so every socket reaches it as an fd passed over QMP (``getfd``),
never as a path, an address to open or an ``exec:`` URI. The caller (the
service) makes the TCP connections; this module drives the two QEMUs:

Destination (a VM of the same argv shape started with ``-incoming defer``,
normally ``start_paused``, its disks hot-plugged as on the source):

1. :func:`serve_disks`: ``nbd-server-start`` on a passed *listening* socket,
   ``nbd-server-add`` (writable) of each disk's own node;
2. :func:`migrate_in`: ``migrate-incoming fd:`` on an *accepted* connection,
   until the stream is complete (the VM is then paused, with ``-S``);
3. :func:`finish_in`: ``nbd-server-stop``, then ``cont``.

Source (the running VM):

1. :func:`mirror_disks`: per disk, an NBD client node on a passed *connected*
   socket and ``blockdev-mirror`` (sync=full) of the disk's node into it, until
   every job is ``ready``; the mirrors then follow the guest's writes;
2. :func:`migrate_out`: ``migrate fd:`` with ``pause-before-switchover``: when
   RAM has converged and QEMU has stopped the guest, the mirrors are completed
   without pivoting (``block-job-cancel`` of a ready job: the target becomes an
   exact copy; the source keeps its own disk, so a later failure loses nothing),
   then ``migrate-continue``. Any failure: :func:`abort_out` (``migrate_cancel``,
   force-cancel the mirrors, drop the NBD nodes, ``cont`` if the guest was left
   paused): the source runs on, untouched.

The capabilities and parameters are plain data (:class:`Tuning`), tested as a table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cocoon.errors import CocoonError, Unavailable
from cocoon.hypervisor.qemu import QemuVM, describe_exit

log = logging.getLogger("cocoon.migration")

MIGRATE_OUT_FD = "migrate-out"
MIGRATE_IN_FD = "migrate-in"
NBD_LISTEN_FD = "nbd-listen"
POLL = 0.02  # s between query-migrate / query-block-jobs polls
# Migration states (query-migrate "status") that end a migration.
FINAL = ("completed", "failed", "cancelled")


@dataclass(frozen=True)
class Tuning:
    """How a live migration runs.

    ``max_bandwidth`` (bytes/s): QEMU's default is 32 MiB/s (a 256 MiB guest
    would take 8 s at best); the link is the service's own connection.
    ``downtime_limit_ms``: how short the last, paused round must be predicted to
    be before QEMU stops the guest. ``pause_before_switchover``: stop there so the
    disk mirrors are completed with the guest paused (needed with mirrors).
    ``mirror_copy_mode``: ``background`` (guest writes are copied later, from a
    dirty bitmap) or ``write-blocking`` (once ready, a guest write completes only
    when it is on the destination too: less to copy at the switchover).
    """

    max_bandwidth: int = 10 << 30
    downtime_limit_ms: int = 300
    pause_before_switchover: bool = True
    events: bool = True
    mirror_copy_mode: str = "background"

    def __post_init__(self) -> None:
        if self.mirror_copy_mode not in ("background", "write-blocking"):
            raise ValueError(f"unknown mirror copy mode {self.mirror_copy_mode!r}")
        if self.max_bandwidth <= 0 or self.downtime_limit_ms <= 0:
            raise ValueError("max_bandwidth and downtime_limit_ms must be positive")


DEFAULT = Tuning()


def source_capabilities(tuning: Tuning) -> list[dict[str, Any]]:
    """``migrate-set-capabilities`` on the source. ``x-ignore-shared`` off: a template
    clone set it to load its template, and it changes the stream's format (each RAM
    block's address is added), which the destination, without it, cannot read."""
    caps = {
        "events": tuning.events,
        "pause-before-switchover": tuning.pause_before_switchover,
        "x-ignore-shared": False,
    }
    return [{"capability": k, "state": v} for k, v in caps.items()]


def destination_capabilities(tuning: Tuning) -> list[dict[str, Any]]:
    """``migrate-set-capabilities`` on the destination (pause-before-switchover is
    the source's alone; neither side changes the stream's format)."""
    return [{"capability": "events", "state": tuning.events}]


def source_parameters(tuning: Tuning) -> dict[str, Any]:
    """``migrate-set-parameters`` on the source."""
    return {"max-bandwidth": tuning.max_bandwidth, "downtime-limit": tuning.downtime_limit_ms}


def nbd_server_addr(fdname: str) -> dict[str, Any]:
    """``nbd-server-start``'s address: QEMU 7.2 takes a SocketAddressLegacy here
    (``data`` wrapped), a listening socket passed with ``getfd``."""
    return {"type": "fd", "data": {"str": fdname}}


def export_args(node: str) -> dict[str, Any]:
    """``nbd-server-add``: the destination exports its own node of the disk, by its name."""
    return {"device": node, "name": node, "writable": True}


def client_node(node: str) -> str:
    """The source's NBD client node for ``node``'s mirror target."""
    return f"mig-{node}"


def mirror_job(node: str) -> str:
    return f"mirror-{node}"


def client_fd(node: str) -> str:
    return f"nbd-{node}"


def client_args(node: str) -> dict[str, Any]:
    """``blockdev-add`` of the NBD client on a connected socket passed with ``getfd``."""
    return {
        "driver": "nbd",
        "node-name": client_node(node),
        "server": {"type": "fd", "str": client_fd(node)},
        "export": node,
    }


def mirror_args(node: str, tuning: Tuning) -> dict[str, Any]:
    """``blockdev-mirror`` of ``node`` into its NBD client.

    QEMU 7.2's blockdev-mirror has no ``target-is-zero`` ("Parameter
    'target-is-zero' is unexpected"; drive-mirror only): the holes of a sparse
    scratch disk go as NBD write-zeroes, cheap (16 GiB: ready in under 2 s under
    TCG) and leaving holes in the destination's file (measured: it takes only
    what the guest wrote). Not auto-dismissed: its end state is checked.
    """
    return {
        "job-id": mirror_job(node),
        "device": node,
        "target": client_node(node),
        "sync": "full",
        "copy-mode": tuning.mirror_copy_mode,
        "auto-dismiss": False,
    }


@dataclass
class MigrationStats:
    """What a finished migration took: QEMU's figures and the service's."""

    status: str = ""
    total_seconds: float = 0.0  # migrate → completed, measured here
    qemu_total_ms: int = 0  # query-migrate "total-time"
    downtime_ms: int = 0  # query-migrate "downtime": guest stopped → stream complete
    setup_ms: int = 0
    switchover_seconds: float = 0.0  # pre-switchover seen → migrate-continue sent
    switchover_at: float = 0.0  # time.monotonic() when the guest was seen stopped
    transferred: int = 0  # bytes of the stream (QEMU counts device state in "ram")
    ram_total: int = 0  # the guest's RAM
    dirty_sync_count: int = 0
    disk_bytes: dict[str, int] = field(default_factory=dict)  # node → bytes mirrored

    def summary(self) -> str:
        return (
            f"{self.status} in {self.total_seconds:.2f} s, downtime {self.downtime_ms} ms, "
            f"{self.transferred >> 20} MiB sent ({self.dirty_sync_count} passes), "
            f"disks {sum(self.disk_bytes.values()) >> 20} MiB"
        )


def stats_from(info: dict[str, Any]) -> MigrationStats:
    """The figures of a query-migrate answer (pure)."""
    ram = info.get("ram", {})
    return MigrationStats(
        status=str(info.get("status", "")),
        qemu_total_ms=int(info.get("total-time", 0)),
        downtime_ms=int(info.get("downtime", 0)),
        setup_ms=int(info.get("setup-time", 0)),
        transferred=int(ram.get("transferred", 0)),
        ram_total=int(ram.get("total", 0)),
        dirty_sync_count=int(ram.get("dirty-sync-count", 0)),
    )


# -- helpers --------------------------------------------------------------------


class _Deadline:
    def __init__(self, what: str, timeout: float) -> None:
        self.what, self.timeout = what, timeout
        self.end = time.monotonic() + timeout

    def check(self, vm: QemuVM, state: str = "") -> None:
        if vm.exited.is_set():
            raise Unavailable(f"{self.what}: QEMU {describe_exit(vm.exit_code)}: {vm._tail_log()}")
        if time.monotonic() > self.end:
            detail = f" ({state})" if state else ""
            raise CocoonError(f"{self.what} did not finish within {self.timeout:g}s{detail}")


async def _jobs(vm: QemuVM) -> dict[str, dict[str, Any]]:
    """query-block-jobs by job id, merged with query-jobs' status and error."""
    block = {j["device"]: dict(j) for j in await vm.execute("query-block-jobs")}
    for j in await vm.execute("query-jobs"):
        if j["id"] in block:
            block[j["id"]]["job-status"] = j["status"]
            if "error" in j:
                block[j["id"]]["error"] = j["error"]
    return block


# -- destination ------------------------------------------------------------------


async def serve_disks(vm: QemuVM, listen_fd: int, nodes: Sequence[str]) -> None:
    """Export ``nodes`` (this incoming VM's own disks) writable over NBD on the
    listening socket ``listen_fd`` (QEMU gets its own copy; close ours after)."""
    await vm._pass_fd(listen_fd, NBD_LISTEN_FD)
    try:
        await vm.execute("nbd-server-start", {"addr": nbd_server_addr(NBD_LISTEN_FD)})
    except CocoonError:
        with contextlib.suppress(CocoonError):
            await vm.execute("closefd", {"fdname": NBD_LISTEN_FD})
        raise
    try:
        for node in nodes:
            await vm.execute("nbd-server-add", export_args(node))
    except CocoonError:
        with contextlib.suppress(CocoonError):
            await vm.execute("nbd-server-stop")
        raise


async def migrate_in(
    vm: QemuVM, conn_fd: int, tuning: Tuning = DEFAULT, timeout: float = 600.0
) -> None:
    """Receive the migration stream on the accepted connection ``conn_fd`` until it
    is complete (the VM is paused then if it was started with ``start_paused``)."""
    await vm.execute("migrate-set-capabilities", {"capabilities": destination_capabilities(tuning)})
    await vm._pass_fd(conn_fd, MIGRATE_IN_FD)
    await vm.execute("migrate-incoming", {"uri": f"fd:{MIGRATE_IN_FD}"})
    deadline = _Deadline("the incoming migration", timeout)
    while True:
        deadline.check(vm)
        try:
            info = await vm.execute("query-migrate")
        except CocoonError:
            # QEMU exits when the stream breaks ("load of migration failed"): say so.
            await vm.wait(2.0)
            deadline.check(vm)
            raise
        status = info.get("status", "")
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            raise CocoonError(
                f"the incoming migration {status}: {info.get('error-desc', 'no reason given')}"
            )
        await asyncio.sleep(POLL)


async def finish_in(vm: QemuVM, disks: bool = True) -> None:
    """Stop the disk export (the source's mirrors are gone) and run the guest."""
    if disks:
        await vm.execute("nbd-server-stop")
    if await vm.status() != "running":
        await vm.execute("cont")


# -- source -----------------------------------------------------------------------


async def mirror_disks(
    vm: QemuVM,
    targets: Sequence[tuple[str, int]],
    tuning: Tuning = DEFAULT,
    timeout: float = 600.0,
) -> list[str]:
    """Mirror each ``(node, connected NBD socket fd)`` to the destination's export of
    the same name; return the nodes once every mirror is ready (in sync). On
    failure everything started is undone and the error raised."""
    started: list[str] = []
    try:
        for node, fd in targets:
            await vm._pass_fd(fd, client_fd(node))
            try:
                await vm.execute("blockdev-add", client_args(node))
            except CocoonError:
                with contextlib.suppress(CocoonError):
                    await vm.execute("closefd", {"fdname": client_fd(node)})
                raise
            started.append(node)
            await vm.execute("blockdev-mirror", mirror_args(node, tuning))
        deadline = _Deadline("mirroring the disks", timeout)
        while True:
            jobs = await _jobs(vm)
            pending = []
            for node in started:
                job = jobs.get(mirror_job(node))
                if job is None or job.get("job-status") == "concluded":
                    err = (job or {}).get("error", "the job is gone")
                    raise CocoonError(f"mirroring disk {node} failed: {err}")
                if not job.get("ready"):
                    pending.append(
                        f"{node} {job.get('offset', 0) >> 20}/{job.get('len', 0) >> 20} MiB"
                    )
            if not pending:
                return started
            deadline.check(vm, ", ".join(pending))
            await asyncio.sleep(POLL)
    except BaseException:
        await drop_mirrors(vm, started)
        raise


async def drop_mirrors(vm: QemuVM, nodes: Sequence[str]) -> None:
    """Force-cancel the mirror jobs of ``nodes`` and remove their NBD nodes (the
    source's own disks are not touched); best effort, never raises."""
    if vm.exited.is_set():
        return
    for node in nodes:
        with contextlib.suppress(CocoonError):
            await vm.execute("block-job-cancel", {"device": mirror_job(node), "force": True})
    for node in nodes:
        for _ in range(250):  # a cancelled job concludes quickly; wait up to 5 s
            try:
                job = (await _jobs(vm)).get(mirror_job(node))
            except CocoonError:
                break
            if job is None or job.get("job-status") in ("concluded", "null"):
                break
            await asyncio.sleep(POLL)
        with contextlib.suppress(CocoonError):
            await vm.execute("job-dismiss", {"id": mirror_job(node)})
        with contextlib.suppress(CocoonError):
            await vm.execute("blockdev-del", {"node-name": client_node(node)})


async def complete_mirrors(
    vm: QemuVM, nodes: Sequence[str], timeout: float = 30.0
) -> dict[str, int]:
    """With the guest stopped: let each ready mirror copy what is left and end
    without pivoting (``block-job-cancel`` of a ready job); return node → bytes
    mirrored. The NBD client nodes stay (removed by :func:`drop_mirrors`)."""
    for node in nodes:
        await vm.execute("block-job-cancel", {"device": mirror_job(node)})
    deadline = _Deadline("completing the disk mirrors", timeout)
    done: dict[str, int] = {}
    while len(done) < len(nodes):
        deadline.check(vm)
        jobs = await _jobs(vm)
        for node in nodes:
            job = jobs.get(mirror_job(node))
            if node in done or job is None or job.get("job-status") != "concluded":
                continue
            if "error" in job:
                raise CocoonError(f"mirroring disk {node} failed: {job['error']}")
            if job.get("offset") != job.get("len"):
                raise CocoonError(
                    f"mirroring disk {node} ended at {job.get('offset')} of {job.get('len')}"
                )
            done[node] = int(job.get("len", 0))
        await asyncio.sleep(0 if len(done) == len(nodes) else POLL / 4)
    for node in nodes:
        await vm.execute("job-dismiss", {"id": mirror_job(node)})
    return done


async def migrate_out(
    vm: QemuVM,
    conn_fd: int,
    mirrors: Sequence[str] = (),
    tuning: Tuning = DEFAULT,
    timeout: float = 600.0,
    at_switchover: Callable[[], Awaitable[None]] | None = None,
) -> MigrationStats:
    """Migrate this running VM over the connected socket ``conn_fd``.

    ``mirrors``: nodes whose mirrors :func:`mirror_disks` made ready; completed
    at the switchover (``pause_before_switchover`` is then required).
    ``at_switchover``: awaited there too, guest stopped, before the stream's
    last part is sent. On success the source is paused (``postmigrate``) and its
    NBD nodes are removed; on any failure (or cancellation) :func:`abort_out`
    leaves it running as it was, and the error is raised.
    """
    if mirrors and not tuning.pause_before_switchover:
        raise ValueError("mirrored disks need pause_before_switchover")
    was_running = await vm.status() == "running"
    t0 = time.monotonic()
    stats = MigrationStats()
    try:
        await vm.execute("migrate-set-capabilities", {"capabilities": source_capabilities(tuning)})
        await vm.execute("migrate-set-parameters", source_parameters(tuning))
        await vm._pass_fd(conn_fd, MIGRATE_OUT_FD)
        await vm.execute("migrate", {"uri": f"fd:{MIGRATE_OUT_FD}"})
        deadline = _Deadline("the live migration", timeout)
        while True:
            info = await vm.execute("query-migrate")
            status = info.get("status", "")
            if status == "completed":
                break
            if status in ("failed", "cancelled"):
                raise CocoonError(
                    f"the live migration {status}: {info.get('error-desc', 'no reason given')}"
                )
            if status == "pre-switchover" and not stats.switchover_at:  # once
                t1 = stats.switchover_at = time.monotonic()
                stats.disk_bytes = await complete_mirrors(vm, mirrors)
                if at_switchover is not None:
                    await at_switchover()
                await vm.execute("migrate-continue", {"state": "pre-switchover"})
                stats.switchover_seconds = time.monotonic() - t1
            deadline.check(vm, status)
            await asyncio.sleep(POLL)
    except BaseException as exc:
        log.warning("live migration failed, the source runs on: %s", exc)
        await abort_out(vm, mirrors, was_running)
        raise
    # QEMU sets "completed" a moment before it fills in total-time and downtime.
    for _ in range(50):
        if info.get("total-time"):  # 0 until then
            break
        await asyncio.sleep(POLL)
        with contextlib.suppress(CocoonError):
            info = await vm.execute("query-migrate")
    done = stats_from(info)
    done.total_seconds = time.monotonic() - t0
    done.switchover_seconds, done.disk_bytes = stats.switchover_seconds, stats.disk_bytes
    done.switchover_at = stats.switchover_at
    await drop_mirrors(vm, mirrors)
    log.info("live migration %s", done.summary())
    return done


async def abort_out(vm: QemuVM, mirrors: Sequence[str], was_running: bool) -> None:
    """Cancel the migration and the mirrors; the source keeps running (never raises)."""
    if vm.exited.is_set():
        return
    with contextlib.suppress(CocoonError):
        await vm.execute("migrate_cancel")
    for _ in range(250):  # cancelling → cancelled (QEMU restarts a guest it stopped)
        try:
            status = (await vm.execute("query-migrate")).get("status", "")
        except CocoonError:
            break
        if status in (*FINAL, ""):
            break
        await asyncio.sleep(POLL)
    await drop_mirrors(vm, mirrors)
    with contextlib.suppress(CocoonError):
        await vm.execute("closefd", {"fdname": MIGRATE_OUT_FD})  # if migrate never took it
    if was_running:
        with contextlib.suppress(CocoonError):
            if await vm.status() != "running":
                await vm.execute("cont")
