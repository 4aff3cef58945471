"""The QEMU process and its QMP connection (QEMU's own ``qemu.qmp`` library).

States: NEW → RUNNING (process up, QMP connected) → STOPPED (process gone).
The process is a child of the sandbox service; its exit is watched so every
waiter learns when the VM dies, however it died.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import signal
from pathlib import Path
from typing import Any

from cocoon.errors import CocoonError, Unavailable
from cocoon.hypervisor.cmdline import VMPlan, build_argv
from cocoon.hypervisor.jail import CAP_SYS_CHROOT, FILE_CAPS, Jail, preexec
from cocoon.hypervisor.uids import UidLease, lease

log = logging.getLogger("cocoon.qemu")
SNAPSHOT_BANDWIDTH = 64 << 30  # bytes/s: no cap


class VMState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        return f"killed by signal {-code} ({signal.Signals(-code).name})"
    return f"exited with status {code}"


class QemuVM:
    def __init__(self, plan: VMPlan, qemu_log: Path, chroot: Path | None = None) -> None:
        self.plan = plan
        self.qemu_log = qemu_log
        # An empty directory QEMU chroots into once its devices are up (QEMU's
        # -chroot): from then on it opens nothing by path, only what it holds.
        self.chroot = chroot
        self.state = VMState.NEW
        self.proc: asyncio.subprocess.Process | None = None
        self.qmp: Any = None
        self.exited = asyncio.Event()
        self.exit_code: int | None = None
        self._uid: UidLease | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    def _tail_log(self) -> str:
        try:
            lines = self.qemu_log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1] if lines else ""

    async def start(self, pass_fds: tuple[int, ...] = ()) -> None:
        """Start QEMU and connect QMP; raise CocoonError naming why it failed."""
        if self.state != VMState.NEW:
            raise CocoonError(f"cannot start a VM in state {self.state.value}")
        argv = build_argv(self.plan)
        caps: tuple[int, ...] = FILE_CAPS
        if self.chroot is not None:
            argv += ["-chroot", str(self.chroot)]
            caps = (*FILE_CAPS, CAP_SYS_CHROOT)
        self._uid = lease(str(self.plan.qmp_socket))
        log.info("starting as uid %d: %s", self._uid.uid, " ".join(argv))
        with open(self.qemu_log, "ab") as logf:
            try:
                self.proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=logf,
                    stderr=logf,
                    pass_fds=pass_fds,
                    start_new_session=True,
                    preexec_fn=preexec(Jail(caps, uid=self._uid.uid)),
                )
            except OSError as exc:
                self._uid.release()
                raise CocoonError(f"cannot start QEMU {self.plan.qemu}", exc) from exc
        asyncio.get_running_loop().create_task(self._watch())
        try:
            await self._connect_qmp()
        except BaseException:
            await self.kill()
            raise
        self.state = VMState.RUNNING

    async def _watch(self) -> None:
        assert self.proc is not None
        self.exit_code = await self.proc.wait()
        if self._uid is not None:
            self._uid.release()  # nothing runs as that uid any more
        self.state = VMState.STOPPED
        self.exited.set()
        log.info("QEMU %s", describe_exit(self.exit_code))

    async def _connect_qmp(self, timeout: float = 10.0) -> None:
        from qemu.qmp import QMPClient

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.plan.qmp_socket.exists():
            if self.exited.is_set():
                raise CocoonError(
                    f"QEMU failed to start ({describe_exit(self.exit_code)}): {self._tail_log()}"
                )
            if loop.time() > deadline:
                raise CocoonError("QEMU did not open its QMP socket in time")
            await asyncio.sleep(0.01)
        # The socket file appears at bind(), a moment before QEMU listens: retry
        # a refused connection until the deadline.
        while True:
            self.qmp = QMPClient("cocoon")
            try:
                await asyncio.wait_for(self.qmp.connect(str(self.plan.qmp_socket)), timeout)
                return
            except Exception as exc:
                refused = isinstance(exc.__cause__ or exc, ConnectionRefusedError) or (
                    "Connection refused" in str(exc)
                )
                if not refused or self.exited.is_set() or loop.time() > deadline:
                    raise CocoonError("cannot connect to QEMU's QMP socket", exc) from exc
            await asyncio.sleep(0.01)

    async def execute(self, cmd: str, args: dict[str, Any] | None = None) -> Any:
        """Run a QMP command; raise Unavailable if the VM is gone."""
        if self.state != VMState.RUNNING or self.qmp is None:
            raise Unavailable(f"VM is {self.state.value}")
        try:
            return await asyncio.wait_for(self.qmp.execute(cmd, args), 10)
        except Exception as exc:
            raise Unavailable(f"QMP {cmd} failed", exc) from exc

    async def status(self) -> str:
        result = await self.execute("query-status")
        return str(result["status"])

    async def device_add(self, driver: str, dev_id: str, **props: Any) -> None:
        await self.execute("device_add", {"driver": driver, "id": dev_id, **props})

    async def hotplug_vcpus(self, target: int) -> int:
        """Add vCPUs until ``target`` are plugged; return how many are plugged now."""
        slots = await self.execute("query-hotpluggable-cpus")
        plugged = sum(1 for s in slots if s.get("qom-path"))
        free = sorted(
            (s for s in slots if not s.get("qom-path")),
            key=lambda s: tuple(
                s["props"].get(k, 0) for k in ("socket-id", "core-id", "thread-id")
            ),
        )
        for slot in free[: max(0, target - plugged)]:
            props = slot["props"]
            dev_id = "cpu-" + "-".join(
                str(props.get(k, 0)) for k in ("socket-id", "core-id", "thread-id")
            )
            await self.device_add(slot["type"], dev_id, **props)
            plugged += 1
        return plugged

    async def hotplug_memory(self, size_mib: int, index: int, addr: int = 0) -> None:
        """Add one DIMM of ``size_mib`` (a multiple of 128 MiB, the guest's block size);
        ``addr``: its guest-physical address (a restore puts it where it was)."""
        await self.execute(
            "object-add",
            {"qom-type": "memory-backend-ram", "id": f"hpmem{index}", "size": size_mib << 20},
        )
        try:
            where = {"addr": addr} if addr else {}
            await self.device_add("pc-dimm", f"dimm{index}", memdev=f"hpmem{index}", **where)
        except CocoonError:
            with contextlib.suppress(CocoonError):
                await self.execute("object-del", {"id": f"hpmem{index}"})
            raise

    async def hotplug_nic(
        self, netdev_id: str, device_id: str, tap_fd: int, mac: str, addr: str = ""
    ) -> None:
        """Hot-plug a virtio-net-pci NIC on tap ``tap_fd`` (sent over QMP; ours stays open);
        ``addr``: its PCI slot (a restore puts every device where it was)."""
        await self._pass_fd(tap_fd, netdev_id)
        try:
            await self.execute("netdev_add", {"type": "tap", "id": netdev_id, "fd": netdev_id})
        except CocoonError:
            with contextlib.suppress(CocoonError):
                await self.execute("closefd", {"fdname": netdev_id})
            raise
        try:
            # No option ROM (no PXE boot here): QEMU would open it by path, and it
            # has been chrooted into an empty directory since it started.
            where = {"addr": addr} if addr else {}
            await self.device_add(
                "virtio-net-pci", device_id, netdev=netdev_id, mac=mac, romfile="", **where
            )
        except CocoonError:
            with contextlib.suppress(CocoonError):
                await self.execute("netdev_del", {"id": netdev_id})
            raise

    # -- disks -------------------------------------------------------------------
    async def hotplug_disk(
        self,
        node: str,
        serial: str,
        fd: int,
        readonly: bool,
        device: bool = False,
        addr: str = "",
    ) -> int:
        """Hot-plug a virtio-blk-pci disk on ``fd`` (added to an fdset over QMP: QEMU is
        chrooted and opens ``/dev/fdset/N``, never a path); return the fdset id.
        ``device``: ``fd`` is a host block device, not a file."""
        if self.state != VMState.RUNNING or self.qmp is None:
            raise Unavailable(f"VM is {self.state.value}")
        try:
            self.qmp.send_fd_scm(fd)
        except Exception as exc:
            raise CocoonError(f"cannot pass disk {node} to QEMU", exc) from exc
        added = await self.execute("add-fd", {"opaque": node})
        fdset = int(added["fdset-id"])
        try:
            await self.execute(
                "blockdev-add",
                {
                    "driver": "raw",
                    "node-name": node,
                    "read-only": readonly,
                    "file": {
                        "driver": "host_device" if device else "file",
                        "filename": f"/dev/fdset/{fdset}",
                        "locking": "off",
                    },
                },
            )
        except CocoonError:
            with contextlib.suppress(CocoonError):
                await self.execute("remove-fd", {"fdset-id": fdset})
            raise
        try:
            where = {"addr": addr} if addr else {}
            await self.device_add("virtio-blk-pci", node, drive=node, serial=serial, **where)
        except CocoonError:
            with contextlib.suppress(CocoonError):
                await self.execute("blockdev-del", {"node-name": node})
            with contextlib.suppress(CocoonError):
                await self.execute("remove-fd", {"fdset-id": fdset})
            raise
        return fdset

    async def unplug_disk(self, node: str, fdset: int, timeout: float = 5.0) -> None:
        """Remove a disk (the guest must have let go of it); best effort, logged."""
        if self.state != VMState.RUNNING:
            return
        loop = asyncio.get_running_loop()
        try:
            await self.execute("device_del", {"id": node})
            deadline = loop.time() + timeout
            while loop.time() < deadline:  # the guest acknowledges the unplug (ACPI)
                try:
                    await self.execute(
                        "qom-get", {"path": f"/machine/peripheral/{node}", "property": "type"}
                    )
                except Unavailable:
                    break
                await asyncio.sleep(0.05)
            await self.execute("blockdev-del", {"node-name": node})
            await self.execute("remove-fd", {"fdset-id": fdset})
        except CocoonError as exc:
            log.warning("unplugging disk %s: %s", node, exc)

    # -- what a snapshot records ----------------------------------------------------
    async def pci_slots(self) -> dict[str, str]:
        """Device id → its PCI address on bus 0 (``"0x5"``), for the ids that have one."""
        out: dict[str, str] = {}
        for bus in await self.execute("query-pci"):
            for dev in bus.get("devices", []):
                if dev.get("qdev_id"):
                    fn = dev.get("function", 0)
                    out[dev["qdev_id"]] = f"0x{dev['slot']:x}" + (f".{fn}" if fn else "")
        return out

    async def memory_devices(self) -> list[tuple[str, int, int]]:
        """The DIMMs plugged: (id, size in bytes, guest-physical address)."""
        out = []
        for dev in await self.execute("query-memory-devices"):
            data = dev.get("data", {})
            if dev.get("type") == "dimm" and data.get("id"):
                out.append((str(data["id"]), int(data["size"]), int(data["addr"])))
        return out

    async def plugged_cpus(self) -> list[dict[str, Any]]:
        """The hot-plugged vCPUs' device properties (type, ids), in plug order."""
        slots = await self.execute("query-hotpluggable-cpus")
        plugged = [
            s for s in slots if str(s.get("qom-path", "")).startswith("/machine/peripheral/")
        ]
        plugged.sort(key=lambda s: str(s["qom-path"]))
        return [
            {"driver": s["type"], "id": str(s["qom-path"]).rsplit("/", 1)[-1], **s["props"]}
            for s in plugged
        ]

    async def plug_cpu(self, props: dict[str, Any]) -> None:
        args = dict(props)
        await self.device_add(str(args.pop("driver")), str(args.pop("id")), **args)

    async def version(self) -> str:
        """QEMU's version as ``query-version`` gives it (``7.2.22`` plus the package)."""
        v = await self.execute("query-version")
        q = v.get("qemu", {})
        text = f"{q.get('major')}.{q.get('minor')}.{q.get('micro')} {v.get('package', '')}"
        return " ".join(text.replace("(", " ").replace(")", " ").split())

    async def snapshot_to(self, fd: int, timeout: float = 600.0) -> dict[str, Any]:
        """Write the stopped VM's RAM and device state into ``fd`` (a pipe or a file);
        return query-migrate's figures. The VM stays stopped (``postmigrate``)."""
        # A template clone set x-ignore-shared to load its template; its own RAM is
        # private, and all of it goes into the snapshot.
        await self.execute(
            "migrate-set-capabilities",
            {"capabilities": [{"capability": "x-ignore-shared", "state": False}]},
        )
        # QEMU's default bandwidth cap (32 MiB/s) is for a live migration sharing a
        # link; a stopped VM saved into a pipe goes as fast as it can be written.
        await self.execute("migrate-set-parameters", {"max-bandwidth": SNAPSHOT_BANDWIDTH})
        await self._pass_fd(fd, "snapshot-out")
        await self.execute("migrate", {"uri": "fd:snapshot-out"})
        await self._migration_done("saving the VM", timeout)
        return dict(await self.execute("query-migrate"))

    async def load_from(self, fd: int, timeout: float = 600.0) -> None:
        """Load RAM and device state from ``fd`` into this ``-incoming defer`` VM; it is
        left paused (the caller continues it when the rest is in place)."""
        await self._pass_fd(fd, "snapshot-in")
        await self.execute("migrate-incoming", {"uri": "fd:snapshot-in"})
        await self._migration_done("loading the VM", timeout)

    # -- templates ---------------------------------------------------------------
    async def _ignore_shared_ram(self) -> None:
        """Leave file-backed RAM out of the migration stream: it is the template file."""
        await self.execute(
            "migrate-set-capabilities",
            {"capabilities": [{"capability": "x-ignore-shared", "state": True}]},
        )

    async def _migration_done(self, what: str, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self.exited.is_set():
                died = describe_exit(self.exit_code)
                raise CocoonError(f"{what}: QEMU {died}: {self._tail_log()}")
            info = await self.execute("query-migrate")
            status = info.get("status", "")
            if status == "completed":
                return
            if status in ("failed", "cancelled"):
                raise CocoonError(f"{what} {status}: {info.get('error-desc', 'no reason given')}")
            if loop.time() > deadline:
                raise CocoonError(f"{what} did not complete within {timeout:g}s ({status})")
            await asyncio.sleep(0.005)

    async def _pass_fd(self, fd: int, name: str) -> None:
        """Hand ``fd`` to QEMU as ``name`` (QMP getfd): its seccomp sandbox forbids
        spawning the ``exec:`` helpers, and it cannot open paths it is not given."""
        if self.state != VMState.RUNNING or self.qmp is None:
            raise Unavailable(f"VM is {self.state.value}")
        try:
            self.qmp.send_fd_scm(fd)
        except Exception as exc:
            raise CocoonError(f"cannot pass {name} to QEMU", exc) from exc
        await self.execute("getfd", {"fdname": name})

    async def save_state(self, path: Path, timeout: float = 30.0) -> None:
        """Stop the guest and write its device state (not its RAM) to ``path``."""
        await self.execute("stop")
        await self._ignore_shared_ram()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            await self._pass_fd(fd, "migrate-out")
        finally:
            os.close(fd)
        await self.execute("migrate", {"uri": "fd:migrate-out"})
        await self._migration_done("saving the VM state", timeout)

    async def restore(self, path: Path, timeout: float = 30.0) -> None:
        """Load the device state in ``path`` into this ``-incoming defer`` VM and run it."""
        await self._ignore_shared_ram()
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            await self._pass_fd(fd, "migrate-in")
        finally:
            os.close(fd)
        await self.execute("migrate-incoming", {"uri": "fd:migrate-in"})
        await self._migration_done("restoring the VM state", timeout)
        # The template was stopped before it was saved, so the clone arrives paused.
        await self.execute("cont")

    async def wait(self, timeout: float | None = None) -> int | None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.exited.wait(), timeout)
        return self.exit_code

    async def stop(self, grace: float = 3.0) -> None:
        """Stop the VM: QMP quit, then SIGKILL if it lingers; always ends STOPPED."""
        if self.proc is None or self.exited.is_set():
            await self._close_qmp()
            return
        with contextlib.suppress(Exception):
            if self.qmp is not None:
                await asyncio.wait_for(self.qmp.execute("quit"), 2)
        await self._close_qmp()
        if await self.wait(grace) is None:
            await self.kill()

    async def kill(self) -> None:
        if self.proc is not None and not self.exited.is_set():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            await self.exited.wait()
        await self._close_qmp()

    async def _close_qmp(self) -> None:
        if self.qmp is not None:
            qmp, self.qmp = self.qmp, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(qmp.disconnect(), 2)
