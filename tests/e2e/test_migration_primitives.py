"""Live migration's QEMU machinery (cocoon.hypervisor.migration) on two real, jailed VMs.

One VM pair of the same plan on this host (loopback TCP): the source runs with
a hot-plugged scratch disk the guest writes to before and during the move; the
destination is started ``-incoming defer -S`` with the same disk, served over
NBD. A first attempt is aborted at the switchover (the source must run on, its
mirror gone); the second moves the VM, and the guest carries on there: its agent
answers, its writer finishes, and what it reads back from the disk is what the
destination's file holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import pytest

from cocoon.agent.client import AgentClient
from cocoon.assets import locate
from cocoon.config.paths import assets_dir
from cocoon.errors import CocoonError
from cocoon.hypervisor import migration as mig
from cocoon.hypervisor.cmdline import VMPlan
from cocoon.hypervisor.hostclock import host_tsc_khz
from cocoon.hypervisor.qemu import QemuVM
from cocoon.storage import blockroot

NODE, SERIAL = "rootscr0", "cocoon-s0"
CHECKED_MIB = 64  # the region of the disk the guest writes and both sides hash
WRITES = 200  # 64 KiB writes by the guest's background writer, 20 ms apart


class GuestShell:
    """The guest's debug console (a root shell on hvc0) as a command runner."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.n = 0

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_unix_connection(str(self.path))

    async def run(self, cmd: str, timeout: float = 60) -> str:
        self.n += 1
        begin, end = f"MKS{self.n}X", f"MKE{self.n}X"
        # The tty echoes the input: the markers are split by '' there, whole in the output.
        self.writer.write(f"echo MKS{self.n}''X; {cmd}\necho MKE{self.n}''X\n".encode())
        await self.writer.drain()
        buf = ""
        while end + "\n" not in buf:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                raise EOFError(buf)
            buf += data.decode(errors="replace").replace("\r", "")
        body = buf.split(begin + "\n", 1)[1].split(end + "\n")[0]
        keep = [ln for ln in body.split("\n") if "MKE" not in ln and "cocoon-guest#" not in ln]
        return "\n".join(keep).strip()

    def close(self) -> None:
        self.writer.close()


def _plan(work: Path, name: str, **kw: object) -> VMPlan:
    assets = locate(assets_dir())
    d = work / name
    (d / "jail").mkdir(parents=True)
    return VMPlan(
        qemu="qemu-system-x86_64",
        kernel=assets.kernel,
        initrd=assets.initrd,
        image=assets.image,
        qmp_socket=d / "qmp.sock",
        agent_socket=d / "agent.sock",
        console_log=d / "console.log",
        memory_mib=256,
        tsc_khz=host_tsc_khz(),
        debug_socket=d / "debug.sock",
        **kw,  # type: ignore[arg-type]
    )


async def _plug(vm: QemuVM, disk: Path) -> None:
    fd = os.open(disk, os.O_RDWR | os.O_CLOEXEC)
    try:
        await vm.hotplug_disk(NODE, SERIAL, fd, readonly=False)
    finally:
        os.close(fd)


def _listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)
    return sock


async def _mirror(src: QemuVM, nbd_port: int) -> list[str]:
    with socket.create_connection(("127.0.0.1", nbd_port)) as conn:
        return await mig.mirror_disks(src, [(NODE, conn.fileno())], timeout=120)


async def _blackhole(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    with contextlib.suppress(OSError):
        while await loop.sock_recv(sock, 1 << 20):
            pass


async def _aborted_attempt(src: QemuVM, nbd_port: int, shell: GuestShell) -> None:
    """Mirror for real, migrate into a sink, fail at the switchover: the source runs on."""
    nodes = await _mirror(src, nbd_port)
    ours, theirs = socket.socketpair()
    sink = asyncio.ensure_future(_blackhole(theirs))

    async def refuse() -> None:
        raise CocoonError("refused at the switchover (test)")

    try:
        with pytest.raises(CocoonError, match="refused at the switchover"):
            await mig.migrate_out(src, ours.fileno(), nodes, at_switchover=refuse, timeout=120)
    finally:
        ours.close()
        await sink
        theirs.close()
    assert await src.status() == "running"
    assert await src.execute("query-block-jobs") == []
    names = {n["node-name"] for n in await src.execute("query-named-block-nodes")}
    assert mig.client_node(NODE) not in names and NODE in names
    before = int(await shell.run("cat /run/mig.i"))
    await asyncio.sleep(0.5)
    assert int(await shell.run("cat /run/mig.i")) > before, "the guest's writer stopped"


def test_a_vm_moves_live_with_its_mirrored_disk_and_carries_on() -> None:
    asyncio.run(_move())


async def _move() -> None:
    work = Path(tempfile.mkdtemp(prefix="cocoon-mig-", dir="/run"))
    sp = _plan(work, "src")
    dp = _plan(work, "dst", incoming=True, start_paused=True)
    src = QemuVM(sp, work / "src" / "qemu.log", work / "src" / "jail")
    dst = QemuVM(dp, work / "dst" / "qemu.log", work / "dst" / "jail")
    src_disk, dst_disk = work / "src" / "scratch", work / "dst" / "scratch"
    blockroot.create_scratch(src_disk)  # 16 GiB sparse, as a container's scratch disk
    blockroot.create_scratch(dst_disk)
    try:
        await src.start()
        agent = await AgentClient.connect(str(sp.agent_socket), 180)
        await agent.close()
        await _plug(src, src_disk)
        shell = GuestShell(sp.debug_socket)  # type: ignore[arg-type]
        await shell.open()
        dev = ""
        for _ in range(150):  # the guest sees the ACPI hot-plug shortly
            dev = await shell.run(
                'for b in /sys/block/vd*; do [ "$(cat $b/serial)" = cocoon-s0 ] && '
                "echo ${b##*/}; done"
            )
            if dev:
                break
            await asyncio.sleep(0.2)
        assert dev, "the guest never saw the scratch disk"
        out = await shell.run(
            f"dd if=/dev/urandom of=/dev/{dev} bs=1M count=16 oflag=direct 2>&1 | tail -1"
        )
        assert "16 MiB" in out, out
        # Writes while the disk is mirrored and RAM migrated, then a hash of what the
        # guest reads back, taken wherever the guest then runs.
        await shell.run(
            f"(i=0; while [ $i -lt {WRITES} ]; do dd if=/dev/urandom of=/dev/{dev} bs=64k "
            "count=1 seek=$((256+i)) oflag=direct conv=notrunc 2>/dev/null; echo $i > /run/mig.i; "
            f"i=$((i+1)); sleep 0.02; done; dd if=/dev/{dev} bs=1M count={CHECKED_MIB} "
            "iflag=direct 2>/dev/null | sha256sum > /run/mig.sum) >/dev/null 2>&1 &"
        )

        await dst.start()
        await _plug(dst, dst_disk)
        with _listener() as nbd:
            await mig.serve_disks(dst, nbd.fileno(), [NODE])
            nbd_port = nbd.getsockname()[1]

        await _aborted_attempt(src, nbd_port, shell)

        nodes = await _mirror(src, nbd_port)
        with _listener() as lsock:
            out_sock = socket.create_connection(lsock.getsockname())
            in_sock, _ = lsock.accept()
        with out_sock, in_sock:
            incoming = asyncio.ensure_future(mig.migrate_in(dst, in_sock.fileno(), timeout=120))
            try:
                stats = await mig.migrate_out(src, out_sock.fileno(), nodes, timeout=120)
            except BaseException:
                incoming.cancel()
                raise
            await incoming
        assert await src.status() == "postmigrate"
        assert await dst.status() == "paused"  # -S: the service decides when it runs
        await mig.finish_in(dst)
        resumed = time.monotonic()
        assert await dst.status() == "running"
        print(
            f"\nlive migration: {stats.summary()}; guest paused ~"
            f"{(resumed - stats.switchover_at) * 1000:.0f} ms (pre-switchover seen → cont); "
            f"guest RAM {stats.ram_total >> 20} MiB"
        )
        assert stats.status == "completed" and stats.downtime_ms > 0
        assert stats.transferred > 0 and stats.disk_bytes[NODE] >= blockroot.SCRATCH_BYTES
        names = {n["node-name"] for n in await src.execute("query-named-block-nodes")}
        assert mig.client_node(NODE) not in names

        agent = await AgentClient.connect(str(dp.agent_socket), 60)
        try:
            await agent.check()
        finally:
            await agent.close()
        dshell = GuestShell(dp.debug_socket)  # type: ignore[arg-type]
        await dshell.open()
        at_cont = int(await dshell.run("cat /run/mig.i"))
        assert at_cont < WRITES - 1, "the writer was over before the move: it proves nothing"
        guest_sum = ""
        for _ in range(120):
            guest_sum = await dshell.run("cat /run/mig.sum 2>/dev/null")
            if guest_sum:
                break
            await asyncio.sleep(0.5)
        assert guest_sum, "the guest's writer did not finish on the destination"
        with open(dst_disk, "rb") as fh:
            host_sum = hashlib.sha256(fh.read(CHECKED_MIB << 20)).hexdigest()
        assert guest_sum.split()[0] == host_sum
        # Only what the guest wrote takes space on the destination (16 MiB + the writer's).
        assert os.stat(dst_disk).st_blocks * 512 < 64 << 20
        shell.close()
        dshell.close()
    finally:
        await src.stop()
        await dst.stop()
        shutil.rmtree(work, ignore_errors=True)
