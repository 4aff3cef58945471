"""The sandbox service process: ``cocoon _service --sandbox-dir D --ready-fd N``.

Started by the CLI, it outlives it. It enters a private mount namespace first,
so every mount it makes (the shared dir) disappears with it, even on a crash;
QEMU and virtiofsd are its children and die with it (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from cocoon.cli.output import Reporter
from cocoon.service import persist
from cocoon.service.host import build_sandbox, join_cgroup, serve_until, stop_event, teardown
from cocoon.storage.mounts import private_mount_namespace

if TYPE_CHECKING:
    from cocoon.service.hostcg import HostCgroup

log = logging.getLogger("cocoon.service")


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
        cgroup = join_cgroup(state)
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


async def _main(
    paths: persist.SandboxPaths,
    state: persist.SandboxState,
    ready: object,
    cgroup: HostCgroup | None,
) -> int:
    from cocoon.service.api import ServiceAPI, StdioSocket
    from cocoon.ttrpc.server import Server

    sandbox = build_sandbox(paths, state, cgroup)
    done = stop_event()
    server = Server()
    ServiceAPI(sandbox, done.set).register(server)
    rpc = await server.listen_unix(str(paths.service_sock))
    fds = StdioSocket(sandbox, str(paths.stdio_sock))
    sandbox.start_boot()
    assert hasattr(ready, "write") and hasattr(ready, "close")
    ready.write("ok\n")
    ready.close()
    await serve_until(done, lambda: not sandbox.containers)
    await sandbox.shutdown()
    rpc.close()
    fds.close()
    teardown(paths, sandbox, cgroup)
    await asyncio.sleep(0.05)  # let the last reply (Delete) reach the caller
    return 0
