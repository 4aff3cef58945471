"""The sandbox service process: ``cocoon _service --sandbox-dir D --ready-fd N``.

Started by the CLI, it outlives it. It enters a private mount namespace first,
so every mount it makes (the shared dir) disappears with it, even on a crash;
QEMU and virtiofsd are its children and die with it (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from cocoon.assets import GuestAssets
from cocoon.cli.output import Reporter
from cocoon.config.settings import Settings
from cocoon.service import persist
from cocoon.storage.mounts import private_mount_namespace, umount

if TYPE_CHECKING:
    from cocoon.service.hostcg import HostCgroup

log = logging.getLogger("cocoon.service")
IDLE_TIMEOUT = 300.0


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    sandbox_dir = Path(args.sandbox_dir)
    paths = persist.SandboxPaths(sandbox_dir.parent, sandbox_dir.name)
    logging.basicConfig(
        filename=str(paths.service_log),
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    ready = os.fdopen(args.ready_fd, "w")
    cgroup = None
    try:
        private_mount_namespace()
        state = persist.load(paths)
        state.service_pid = os.getpid()
        cgroup = _join_cgroup(state)
        state.cgroup = cgroup.plan.to_dict()
        persist.save(paths, state)
    except Exception as exc:  # noqa: BLE001 - reported to the CLI in one line
        ready.write(f"error: cannot start the sandbox service: {exc}\n")
        ready.close()
        os._exit(1)
    rc = 1
    try:
        rc = asyncio.run(_main(paths, state, ready, cgroup))
    except BaseException:
        log.exception("sandbox service failed")
    finally:
        logging.shutdown()
    # Relay threads may sit in blocking reads of the caller's fds: do not wait for them.
    os._exit(rc)


def _join_cgroup(state: persist.SandboxState) -> HostCgroup:
    import json

    from cocoon.service.hostcg import HostCgroup, plan_for

    spec = json.loads((Path(state.bundle) / "config.json").read_text())
    settings = Settings.from_dict(state.settings)
    cg = HostCgroup(plan_for(spec, state.id, settings.memory_mib, settings.host_overhead_mib))
    cg.join()
    return cg


async def _main(
    paths: persist.SandboxPaths,
    state: persist.SandboxState,
    ready: object,
    cgroup: HostCgroup | None,
) -> int:
    from cocoon.service.api import ServiceAPI, StdioSocket
    from cocoon.service.sandbox import Sandbox
    from cocoon.ttrpc.server import Server

    settings = Settings.from_dict(state.settings)
    assets = GuestAssets(
        kernel=Path(state.assets["kernel"]),
        initrd=Path(state.assets["initrd"]),
        image=Path(state.assets["image"]),
        key=state.assets.get("key", ""),
        kernel_version=state.assets.get("kernel_version", ""),
    )
    sandbox = Sandbox(paths, settings, assets, state.accel or "tcg")
    sandbox.netns = state.netns  # from the bundle's spec, resolved at create
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, done.set)
    sandbox.on_host_process = cgroup.add if cgroup is not None else None
    if cgroup is not None:
        host_cg = cgroup

        def grow(guest_mib: int) -> None:
            host_cg.set_memory(guest_mib, settings.host_overhead_mib)

        sandbox.on_memory_growth = grow
    server = Server()
    ServiceAPI(sandbox, done.set).register(server)
    rpc = await server.listen_unix(str(paths.service_sock))
    fds = StdioSocket(sandbox, str(paths.stdio_sock))
    sandbox.start_boot()
    assert hasattr(ready, "write") and hasattr(ready, "close")
    ready.write("ok\n")
    ready.close()

    async def idle_guard() -> None:
        await asyncio.sleep(IDLE_TIMEOUT)
        if not sandbox.containers:
            log.warning("no container after %.0fs: shutting down", IDLE_TIMEOUT)
            done.set()

    guard = loop.create_task(idle_guard())
    await done.wait()
    guard.cancel()
    await sandbox.shutdown()
    _log_timings(sandbox.timings)
    rpc.close()
    fds.close()
    if cgroup is not None:
        cgroup.leave_and_remove()
    _teardown(paths, sandbox.share.shared_dir, sandbox.share.mounts_dir)
    await asyncio.sleep(0.05)  # let the last reply (Delete) reach the caller
    return 0


def _log_timings(timings: dict[str, float]) -> None:
    if "boot_start" in timings:
        t0 = timings["boot_start"]
        log.info("timings: %s", " ".join(f"{k}=+{v - t0:.3f}s" for k, v in timings.items()))


def _teardown(paths: persist.SandboxPaths, shared: Path, mounts_dir: Path) -> None:
    for mp in (shared, mounts_dir):
        with contextlib.suppress(OSError):
            umount(str(mp))
    logging.shutdown()
    paths.remove_sock_dir()
    left = persist.remove_tree(paths.dir)
    if left:
        logging.getLogger("cocoon.service").error("left behind: %s", left)
