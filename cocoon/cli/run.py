"""``cocoon run``: create a sandbox, run the container in it, relay stdio, exit with its status."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import termios
import tty
from pathlib import Path

from cocoon.cli.common import ensure_absent_on_error, prepare_sandbox
from cocoon.cli.output import Reporter
from cocoon.errors import CocoonError
from cocoon.service.persist import SandboxPaths

FORWARDED = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    from cocoon.service.launch import spawn_service

    paths, bundle = prepare_sandbox(args, reporter)
    try:
        service = spawn_service(paths, args.debug)
    except BaseException:
        ensure_absent_on_error(paths)
        raise
    return asyncio.run(_run(args, reporter, paths, bundle, service))


async def _run(
    args: argparse.Namespace,
    reporter: Reporter,
    paths: SandboxPaths,
    bundle: Path,
    service: subprocess.Popen[bytes],
) -> int:
    from cocoon.service.client import ServiceClient, ServiceGone, dup_stdio, send_stdio
    from cocoon.service.launch import force_cleanup, wait_service_exit

    client = await ServiceClient.connect(paths)
    keep = False
    saved_tty = None
    try:
        await client.create(paths.id, str(bundle))
        send_stdio(paths, paths.id, "", dup_stdio())
        terminal = _is_terminal(bundle)
        if terminal and not args.detach and os.isatty(0):
            saved_tty = termios.tcgetattr(0)
            tty.setraw(0)
        await client.start(paths.id)
        if args.pid_file:
            Path(args.pid_file).write_text(str(service.pid))
        if args.detach:
            keep = True
            return 0
        loop = asyncio.get_running_loop()
        for sig in FORWARDED:
            loop.add_signal_handler(sig, _forward, client, paths.id, sig)
        resp = await client.wait(paths.id)
        if resp.timings:
            reporter.debug("timings " + " ".join(f"{k}={v:.3f}" for k, v in resp.timings.items()))
        if resp.error:
            raise CocoonError(resp.error)
        return resp.status
    except ServiceGone:
        keep = False
        raise
    finally:
        if saved_tty is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved_tty)
        if not keep:
            with contextlib.suppress(CocoonError):
                await client.delete(paths.id, force=True)
            with contextlib.suppress(CocoonError):
                await client.shutdown()
            await client.close()
            if not wait_service_exit(service, service.pid, 15):
                logging.getLogger("cocoon").warning("sandbox service hung; killing it")
            left = force_cleanup(paths)
            if left:
                print(f"cocoon: warning: left behind: {left}", file=sys.stderr)
        else:
            await client.close()


def _forward(client: object, cid: str, sig: int) -> None:
    from cocoon.service.client import ServiceClient

    assert isinstance(client, ServiceClient)
    task = asyncio.get_running_loop().create_task(client.kill(cid, int(sig)))
    task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)


def _is_terminal(bundle: Path) -> bool:
    import json

    try:
        spec = json.loads((bundle / "config.json").read_text())
        return bool(spec.get("process", {}).get("terminal", False))
    except (OSError, ValueError):
        return False
