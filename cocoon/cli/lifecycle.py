"""``state``, ``kill``, ``delete`` and ``list`` for containers started by ``run -d``.

The full runc verb set (create/start/exec/ps/...) builds on these.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from cocoon.cli.common import parse_signal, paths_for
from cocoon.cli.output import Reporter
from cocoon.errors import CocoonError, NotFound
from cocoon.service import persist


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    if args.verb == "list":
        return _list(args)
    paths = paths_for(args, args.id)
    if args.verb == "state":
        return asyncio.run(_state(paths))
    if args.verb == "kill":
        sig = parse_signal(args.signal)
        return asyncio.run(_kill(paths, sig, args.all))
    return asyncio.run(_delete(paths, args.force))


async def _status(paths: persist.SandboxPaths, st: persist.SandboxState) -> tuple[str, int]:
    from cocoon.procutil import alive
    from cocoon.service.client import ServiceClient

    if not alive(st.service_pid):
        return "stopped", 0
    try:
        client = await ServiceClient.connect(paths)
    except CocoonError:
        return "stopped", 0
    try:
        resp = await client.state(paths.id)
        return resp.status, resp.pid
    except NotFound:
        return st.status, 0
    finally:
        await client.close()


async def _state(paths: persist.SandboxPaths) -> int:
    st = persist.load(paths)
    status, pid = await _status(paths, st)
    print(
        json.dumps(
            {
                "ociVersion": "1.1.0",
                "id": st.id,
                "pid": pid,
                "status": status,
                "bundle": st.bundle,
                "rootfs": "",
                "created": st.created,
                "owner": "",
                "annotations": st.annotations,
            },
            indent=2,
        )
    )
    return 0


async def _kill(paths: persist.SandboxPaths, sig: int, all_procs: bool) -> int:
    from cocoon.service.client import ServiceClient

    persist.load(paths)
    client = await ServiceClient.connect(paths)
    try:
        await client.kill(paths.id, sig, all_procs)
    finally:
        await client.close()
    return 0


async def _delete(paths: persist.SandboxPaths, force: bool) -> int:
    from cocoon.procutil import alive
    from cocoon.service.client import ServiceClient
    from cocoon.service.launch import force_cleanup, wait_service_exit

    st = persist.load(paths)
    if alive(st.service_pid):
        try:
            client = await ServiceClient.connect(paths)
        except CocoonError:
            client = None
        if client is not None:
            try:
                await client.delete(paths.id, force)
            except NotFound:
                await client.shutdown()
            finally:
                await client.close()
            wait_service_exit(None, st.service_pid, 15)
    left = force_cleanup(paths)
    if left:
        raise CocoonError(f"could not remove {', '.join(left)}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from cocoon.config.paths import runtime_root

    root = runtime_root(args.root)
    rows = []
    if root.is_dir():
        for entry in sorted(root.iterdir()):
            try:
                st = persist.load(persist.SandboxPaths(root, entry.name))
            except CocoonError:
                continue
            status, pid = asyncio.run(_status(persist.SandboxPaths(root, entry.name), st))
            rows.append(
                {
                    "id": st.id,
                    "pid": pid,
                    "status": status,
                    "bundle": st.bundle,
                    "created": st.created,
                    "owner": "root",
                }
            )
    if args.quiet:
        for r in rows:
            print(r["id"])
    elif args.format == "json":
        print(json.dumps(rows))
    else:
        print(f"{'ID':<20}{'PID':<10}{'STATUS':<10}{'BUNDLE':<40}{'CREATED':<32}OWNER")
        for r in rows:
            print(
                f"{r['id']:<20}{r['pid']:<10}{r['status']:<10}{r['bundle']:<40}"
                f"{r['created']:<32}{r['owner']}"
            )
    return 0
