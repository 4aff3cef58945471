"""Agent entry point: PID 1 of the guest after the initramfs switches root."""

from __future__ import annotations

import sys

# Imports dominate the agent's start under TCG. asyncio pulls in ssl (and
# OpenSSL) only to support TLS transports, which the agent never uses.
sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]

import asyncio  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import traceback  # noqa: E402

from cocoon.guest import debugconsole, system  # noqa: E402
from cocoon.guest.reaper import Reaper  # noqa: E402
from cocoon.guest.service import AgentService  # noqa: E402
from cocoon.ttrpc.server import Server  # noqa: E402
from cocoon.ttrpc.transport import PortTransport  # noqa: E402
from cocoon.wire.agent import AGENT_PORT_NAME  # noqa: E402

log = logging.getLogger("cocoon.guest")


async def serve() -> None:
    reaper = Reaper()
    service = AgentService(reaper)
    server = Server()
    service.register(server)
    port = system.find_port(AGENT_PORT_NAME)
    log.info("agent ready on %s", port)
    with open("/proc/cmdline", encoding="utf-8") as fh:
        if debugconsole.wanted(fh.read()):
            console = asyncio.get_running_loop().create_task(debugconsole.serve(reaper))
            console.add_done_callback(lambda t: t.cancelled() or t.exception())
    while True:
        # A protocol error closes the connection; reopen the port and serve
        # the next host (a restarted sandbox service, or a template's clone).
        await server.serve(PortTransport(port), "host")
        log.warning("host connection reset; reopening %s", port)
        await asyncio.sleep(0.05)


def main() -> None:
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="cocoon-agent: %(levelname)s %(message)s"
    )
    try:
        os.environ.setdefault("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        system.base_mounts()
        asyncio.run(serve())
    except BaseException:  # noqa: BLE001 - PID 1 must not exit silently
        traceback.print_exc()
    finally:
        log.error("agent exiting; powering off")
        system.power_off()


if __name__ == "__main__":
    main()
