"""What every process that hosts a Sandbox does around it: the CLI's service daemon
and the containerd shim both use these, so a sandbox is set up and torn down one way.

Set-up: a private mount namespace (every mount dies with the process), the host
cgroup named by the spec (QEMU and virtiofsd are born in it), and a
:class:`~cocoon.service.sandbox.Sandbox` wired to that cgroup. Teardown: back out
of the cgroup, unmount the share, remove the state dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cocoon.assets import GuestAssets
from cocoon.config.settings import Settings
from cocoon.service import persist
from cocoon.storage.mounts import umount

if TYPE_CHECKING:
    from cocoon.service.hostcg import HostCgroup
    from cocoon.service.sandbox import Sandbox

log = logging.getLogger("cocoon.service")
IDLE_TIMEOUT = 300.0  # a host that never gets a container goes away


def stop_event() -> asyncio.Event:
    """An event set by SIGTERM, SIGINT or SIGHUP (and by a Shutdown call)."""
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, done.set)
    return done


async def serve_until(done: asyncio.Event, empty: Callable[[], bool]) -> None:
    """Wait for ``done``; set it when still ``empty`` (no container) after IDLE_TIMEOUT."""

    async def idle_guard() -> None:
        await asyncio.sleep(IDLE_TIMEOUT)
        if empty():
            log.warning("no container after %.0fs: shutting down", IDLE_TIMEOUT)
            done.set()

    guard = asyncio.get_running_loop().create_task(idle_guard())
    await done.wait()
    guard.cancel()


def join_cgroup(state: persist.SandboxState) -> HostCgroup:
    """Create the sandbox's host cgroup from its bundle's spec and move this process in."""
    from cocoon.service.hostcg import HostCgroup, plan_for

    spec = json.loads((Path(state.bundle) / "config.json").read_text())
    settings = Settings.from_dict(state.settings)
    plan = plan_for(spec, state.id, settings.memory_mib, settings.host_overhead_mib)
    cg = HostCgroup(plan, spec, state.id)
    cg.join()
    return cg


def build_sandbox(
    paths: persist.SandboxPaths, state: persist.SandboxState, cgroup: HostCgroup | None
) -> Sandbox:
    """The Sandbox recorded in ``state``, its host processes and growth tied to ``cgroup``."""
    from cocoon.service.sandbox import Sandbox

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
    if state.restore:
        sandbox.restore_from = (Path(state.restore), state.id, Path(state.bundle))
        sandbox.restore_pods = True  # a pod's members are restored by the CLI, one by one
    if state.listen:
        sandbox.migrate_from = (state.listen, state.id, Path(state.bundle))
    if cgroup is not None:
        host_cg = cgroup
        sandbox.on_host_process = host_cg.add

        def grow(guest_mib: int) -> None:
            host_cg.set_memory(guest_mib, settings.host_overhead_mib)

        sandbox.on_memory_growth = grow

        def update(_cid: str, resources: dict[str, Any]) -> None:
            # The VM's host cgroup is one container's in a sandbox of one; a CLI
            # sandbox others joined gets its members' CPU total (as a pod's); a
            # shim pod's is the kubelet's to size, not any member's.
            if sandbox.joined:
                from cocoon.resources.hostlimits import shared_vm_cpu

                live = [c.resources for c in sandbox.containers.values() if c.status != "stopped"]
                host_cg.update_limits({"cpu": shared_vm_cpu(live)}, sandbox.memory_mib)
            elif len(sandbox.containers) == 1:
                host_cg.update_limits(resources, sandbox.memory_mib)

        sandbox.on_resources_update = update
    return sandbox


def log_timings(timings: dict[str, float]) -> None:
    if "boot_start" in timings:
        t0 = timings["boot_start"]
        log.info("timings: %s", " ".join(f"{k}=+{v - t0:.3f}s" for k, v in timings.items()))


def teardown(paths: persist.SandboxPaths, sandbox: Sandbox, cgroup: HostCgroup | None) -> None:
    """After ``sandbox.shutdown()``: leave the cgroup, unmount the share, remove the state."""
    log_timings(sandbox.timings)
    if cgroup is not None:
        cgroup.leave_and_remove()
    for mp in (sandbox.share.shared_dir, sandbox.share.mounts_dir, paths.dir / "jail" / "proc"):
        with contextlib.suppress(OSError):
            umount(str(mp))
    paths.remove_sock_dir()
    left = persist.remove_tree(paths.dir)
    if left:
        log.error("left behind: %s", left)
    logging.shutdown()
