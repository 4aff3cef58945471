"""``state``, ``list``, ``kill``, ``delete``, ``pause``, ``resume``, ``ps``, ``update``.

Each talks to the container's sandbox service; a container whose service is
gone reads as ``stopped`` and can still be deleted (every trace is removed by
the recorded PIDs and the state dir).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cocoon.cli.common import parse_signal, paths_for
from cocoon.cli.lock import container_lock, remove_lock
from cocoon.cli.output import Reporter
from cocoon.errors import CocoonError, FailedPrecondition, InvalidArgument, NotFound
from cocoon.service import persist, quick


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    if args.verb == "list":
        return _list(args)
    try:
        paths = paths_for(args, args.id)
    except NotFound:
        if args.verb == "delete" and args.force:
            return 0  # as runc: forcing the delete of an unknown ID is a no-op
        raise
    handler: Callable[[argparse.Namespace, persist.SandboxPaths, Reporter], int] = {
        "state": _state,
        "kill": _kill,
        "delete": _delete,
        "pause": _pause,
        "resume": _resume,
        "ps": _ps,
        "update": _update,
    }[args.verb]
    return handler(args, paths, reporter)


def status_of(paths: persist.SandboxPaths, st: persist.SandboxState) -> tuple[str, int]:
    """(status, pid) from the live service; ``stopped`` when it is gone."""
    from cocoon.procutil import alive

    if not alive(st.service_pid):
        return ("creating", 0) if st.status == "creating" and not st.service_pid else ("stopped", 0)
    try:
        resp = quick.call(paths, "State", container_id=paths.id)
    except NotFound:
        return "creating", 0
    except CocoonError:
        return "stopped", 0
    return str(resp.get("status", "stopped")), int(resp.get("pid", 0))


def state_json(paths: persist.SandboxPaths, st: persist.SandboxState) -> dict[str, Any]:
    status, pid = status_of(paths, st)
    spec_root = ""
    try:
        spec = json.loads((Path(st.bundle) / "config.json").read_text())
        root = Path(spec["root"]["path"])
        spec_root = str(root if root.is_absolute() else Path(st.bundle) / root)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return {
        "ociVersion": "1.0.2",
        "id": st.id,
        "pid": pid,
        "status": status,
        "bundle": st.bundle,
        "rootfs": spec_root,
        "created": st.created,
        "owner": "",
        "annotations": _annotations(paths, st),
    }


def _annotations(paths: persist.SandboxPaths, st: persist.SandboxState) -> dict[str, str]:
    """The spec's, plus which sandbox (VM) the container lives in when it shares one."""
    from cocoon.service.membership import SANDBOX_ANNOTATION, members_of

    if st.sandbox or members_of(paths.root, st.id):
        return {**st.annotations, SANDBOX_ANNOTATION: st.sandbox or st.id}
    return st.annotations


def _state(args: argparse.Namespace, paths: persist.SandboxPaths, reporter: Reporter) -> int:
    print(json.dumps(state_json(paths, persist.load(paths)), indent=2))
    return 0


def _require_live(paths: persist.SandboxPaths) -> persist.SandboxState:
    from cocoon.procutil import alive

    st = persist.load(paths)
    if not alive(st.service_pid):
        raise FailedPrecondition(f"container {paths.id!r} is not running")
    return st


def _kill(args: argparse.Namespace, paths: persist.SandboxPaths, reporter: Reporter) -> int:
    sig = parse_signal(args.signal)
    with container_lock(paths.root, paths.id):
        _require_live(paths)
        quick.call(paths, "Kill", container_id=paths.id, signal=sig, all=args.all)
    return 0


def _pause(args: argparse.Namespace, paths: persist.SandboxPaths, reporter: Reporter) -> int:
    with container_lock(paths.root, paths.id):
        _require_live(paths)
        quick.call(paths, "Pause", container_id=paths.id)
    return 0


def _resume(args: argparse.Namespace, paths: persist.SandboxPaths, reporter: Reporter) -> int:
    with container_lock(paths.root, paths.id):
        _require_live(paths)
        quick.call(paths, "Resume", container_id=paths.id)
    return 0


def _delete(args: argparse.Namespace, paths: persist.SandboxPaths, reporter: Reporter) -> int:
    from cocoon.cli.create import oci_state, run_hooks
    from cocoon.procutil import alive
    from cocoon.service.launch import force_cleanup, wait_service_exit

    if args.force and not paths.dir.is_dir():
        return 0  # as runc: forcing the delete of an unknown ID is a no-op
    with container_lock(paths.root, paths.id):
        try:
            st = persist.load(paths)
        except NotFound:
            if not args.force:
                raise
            # A half-written state dir (a create that died): remove what is there.
            left = force_cleanup(paths)
            remove_lock(paths.root, paths.id)
            if left:
                raise CocoonError(f"could not remove {', '.join(left)}") from None
            return 0
        status, pid = status_of(paths, st)
        if status in ("running", "paused") and not args.force:
            raise FailedPrecondition(
                f"cannot delete container {paths.id!r}: it is {status} (stop it or use --force)"
            )
        from cocoon.cli.join import delete_member_or_home

        shared = delete_member_or_home(paths, st, args.force, reporter)
        if shared is not None:
            left = shared  # a container sharing its sandbox (cocoon.service.membership)
        else:
            if alive(st.service_pid):
                try:
                    try:
                        quick.call(paths, "Delete", container_id=paths.id, force=args.force)
                    except NotFound:
                        quick.call(paths, "Shutdown")
                except CocoonError as exc:
                    if not args.force:
                        raise
                    reporter.debug(f"delete: the service failed ({exc}); cleaning up by force")
                wait_service_exit(None, st.service_pid, 15)
            left = force_cleanup(paths)
        try:
            spec = json.loads((Path(st.bundle) / "config.json").read_text())
            state = oci_state(paths, "stopped", pid, st.bundle, st.annotations)
            run_hooks("poststop", spec, state, False, reporter)
        except (OSError, ValueError, CocoonError) as exc:
            reporter.warn(f"poststop hooks: {exc}")
        if shared is None or paths.is_member:
            remove_lock(paths.root, paths.id)  # a home with members keeps it: the sandbox's
    if left:
        raise CocoonError(f"could not remove {', '.join(left)}")
    return 0


def _ps(args: argparse.Namespace, paths: persist.SandboxPaths, reporter: Reporter) -> int:
    _require_live(paths)
    resp = quick.call(paths, "Ps", container_id=paths.id)
    if args.format == "json":
        # Host PIDs, as engines expect: the processes standing for the guest's.
        print(json.dumps(resp.get("host_pids", [])))
        return 0
    print(f"{'PID':>7}  CMD  (guest PIDs: the processes run inside the VM)")
    for p in resp.get("processes", []):
        print(f"{p['pid']:>7}  {' '.join(p['args'])}")
    return 0


_UPDATE_FLAGS: list[tuple[str, tuple[str, ...], Callable[[str], Any]]] = [
    ("blkio_weight", ("blockIO", "weight"), int),
    ("cpu_period", ("cpu", "period"), int),
    ("cpu_quota", ("cpu", "quota"), int),
    ("cpu_share", ("cpu", "shares"), int),
    ("cpu_rt_period", ("cpu", "realtimePeriod"), int),
    ("cpu_rt_runtime", ("cpu", "realtimeRuntime"), int),
    ("cpuset_cpus", ("cpu", "cpus"), str),
    ("cpuset_mems", ("cpu", "mems"), str),
    ("memory", ("memory", "limit"), int),
    ("memory_reservation", ("memory", "reservation"), int),
    ("memory_swap", ("memory", "swap"), int),
    ("pids_limit", ("pids", "limit"), int),
]


def resources_from_args(args: argparse.Namespace, stdin: Any = None) -> dict[str, Any]:
    """LinuxResources from ``--resources FILE|-`` and/or runc's single-value flags."""
    res: dict[str, Any] = {}
    if args.resources:
        try:
            text = (
                (stdin or sys.stdin).read()
                if args.resources == "-"
                else Path(args.resources).read_text()
            )
            res = json.loads(text)
        except OSError as exc:
            raise InvalidArgument(f"cannot read --resources {args.resources}", exc) from exc
        except ValueError as exc:
            raise InvalidArgument("--resources is not valid JSON", exc) from exc
        if not isinstance(res, dict):
            raise InvalidArgument("--resources must be a JSON object (LinuxResources)")
    for attr, (section, key), conv in _UPDATE_FLAGS:
        value = getattr(args, attr, None)
        if value is None:
            continue
        try:
            res.setdefault(section, {})[key] = conv(value)
        except ValueError:
            raise InvalidArgument(f"--{attr.replace('_', '-')} {value!r} is not valid") from None
    if not res:
        raise InvalidArgument("update needs --resources or at least one resource flag")
    return res


def _update(args: argparse.Namespace, paths: persist.SandboxPaths, reporter: Reporter) -> int:
    resources = resources_from_args(args)
    with container_lock(paths.root, paths.id):
        _require_live(paths)
        quick.call(paths, "Update", container_id=paths.id, resources=resources)
    return 0


def _list(args: argparse.Namespace) -> int:
    from cocoon.config.paths import runtime_root

    root = runtime_root(args.root)
    rows = []
    if root.is_dir():
        for entry in sorted(root.iterdir()):
            if entry.name.startswith("."):
                continue
            paths = persist.SandboxPaths(root, entry.name)
            try:
                st = persist.load(paths)
            except CocoonError:
                continue
            if st.deleted:
                continue  # only the home of a sandbox its members still use
            if st.sandbox:
                paths = persist.SandboxPaths(root, entry.name, home=st.sandbox)
            rows.append(state_json(paths, st))
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
                f"{r['created']:<32}{r['owner'] or 'root'}"
            )
    return 0
