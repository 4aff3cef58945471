"""``cocoon exec``: another process in a running container, in the guest.

With ``--detach`` a stub (the ``--pid-file`` PID) stands for the process, as
for ``create``; otherwise the CLI itself does, in the foreground.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import secrets
import signal
import termios
import tty
from pathlib import Path
from typing import Any

from cocoon.cli.common import paths_for
from cocoon.cli.output import Reporter
from cocoon.errors import CocoonError, InvalidArgument
from cocoon.service.persist import SandboxPaths


def _parse_user(value: str) -> dict[str, Any]:
    uid, _, gid = value.partition(":")
    try:
        user: dict[str, Any] = {"uid": int(uid), "gid": int(gid) if gid else 0}
    except ValueError:
        raise InvalidArgument(f"--user {value!r}: expected uid[:gid] as numbers") from None
    return user


def build_process(args: argparse.Namespace, base: dict[str, Any]) -> dict[str, Any]:
    """The OCI Process to run: ``--process`` file, or the argv with runc's flags.

    Raises InvalidArgument naming the problem.
    """
    if args.process:
        try:
            proc = json.loads(Path(args.process).read_text())
        except OSError as exc:
            raise InvalidArgument(f"cannot read --process {args.process}", exc) from exc
        except ValueError as exc:
            raise InvalidArgument(f"--process {args.process} is not valid JSON", exc) from exc
        if not isinstance(proc, dict):
            raise InvalidArgument(f"--process {args.process}: expected a JSON object")
    else:
        if not args.command:
            raise InvalidArgument("exec needs a command or --process")
        proc = copy.deepcopy(base)
        proc["args"] = list(args.command)
    if args.tty:
        proc["terminal"] = True
    if args.cwd:
        proc["cwd"] = args.cwd
    if args.env:
        proc["env"] = [*proc.get("env", []), *args.env]
    if args.user:
        proc["user"] = {**proc.get("user", {}), **_parse_user(args.user)}
    if args.additional_gids:
        proc.setdefault("user", {})["additionalGids"] = [int(g) for g in args.additional_gids]
    if args.no_new_privs:
        proc["noNewPrivileges"] = True
    args_ = proc.get("args")
    if not isinstance(args_, list) or not args_ or not all(isinstance(a, str) for a in args_):
        raise InvalidArgument("exec process: args must be a non-empty list of strings")
    if not isinstance(proc.get("cwd", "/"), str) or not proc.get("cwd", "/").startswith("/"):
        raise InvalidArgument("exec process: cwd must be an absolute path")
    proc.setdefault("cwd", "/")
    out: dict[str, Any] = proc
    return out


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    from cocoon.cli import stub
    from cocoon.cli.create import write_pid_file
    from cocoon.service import persist

    paths = paths_for(args, args.id)
    st = persist.load(paths)
    try:
        base = json.loads((Path(st.bundle) / "config.json").read_text()).get("process", {})
    except (OSError, ValueError):
        base = {}
    proc = build_process(args, base)
    terminal = bool(proc.get("terminal", False))
    if args.console_socket:
        if not terminal:
            raise InvalidArgument("--console-socket given but the process has no terminal")
        stub.check_console_socket(args.console_socket)
    elif terminal and args.detach:
        raise InvalidArgument("cannot allocate a tty for a detached exec without --console-socket")
    from cocoon.cli.common import check_pid_file

    check_pid_file(args.pid_file)
    exec_id = f"exec-{secrets.token_hex(6)}"
    asyncio.run(_exec(paths, exec_id, proc))
    if args.detach:
        pid = stub.spawn(paths, paths.id, exec_id, args.console_socket, args.log, args.log_format)
        stub.register(paths, exec_id, pid)
        write_pid_file(args.pid_file, pid)
        return 0
    write_pid_file(args.pid_file, os.getpid())
    return asyncio.run(_foreground(paths, exec_id, terminal, args.console_socket))


async def _exec(paths: SandboxPaths, exec_id: str, proc: dict[str, Any]) -> None:
    from cocoon.service.client import ServiceClient

    client = await ServiceClient.connect(paths)
    try:
        await client.exec(paths.id, exec_id, proc, True)
    finally:
        await client.close()


async def _foreground(
    paths: SandboxPaths, exec_id: str, terminal: bool, console_socket: str | None
) -> int:
    from cocoon.cli.stub import FORWARDED, open_terminal, winsize
    from cocoon.service.client import ServiceClient, dup_stdio, send_stdio

    client = await ServiceClient.connect(paths)
    saved = None
    try:
        if terminal and console_socket:
            slave = open_terminal(console_socket)
            send_stdio(paths, paths.id, exec_id, {"stdin": os.dup(slave), "stdout": slave})
        else:
            send_stdio(paths, paths.id, exec_id, dup_stdio())
            if terminal and os.isatty(0):
                saved = termios.tcgetattr(0)
                tty.setraw(0)
                rows, cols = winsize(0)
                await client.resize(paths.id, exec_id, rows, cols)
        await client.register_process(paths.id, exec_id, os.getpid())
        loop = asyncio.get_running_loop()

        def forward(sig: int) -> None:
            t = loop.create_task(client.kill(paths.id, sig, exec_id=exec_id))
            t.add_done_callback(lambda x: x.cancelled() or x.exception())

        for sig in FORWARDED:
            if sig not in (signal.SIGINT,) or not terminal:
                try:
                    loop.add_signal_handler(sig, forward, int(sig))
                except (OSError, RuntimeError, ValueError):
                    continue
        resp = await client.wait(paths.id, exec_id)
        if resp.error:
            raise CocoonError(resp.error)
        return resp.status
    finally:
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)
        await client.close()
