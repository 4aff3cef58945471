"""``create`` of a container whose spec names a running Cocoon sandbox's namespaces.

podman's pod members (``/proc/<infra stub>/ns/{net,ipc,uts[,pid]}``) and docker's
or podman's ``--network/--ipc/--pid/--uts container:A`` land here: the container
is created inside that sandbox's VM by its service (``Join``), under the
sandbox's lock (its home's container lock), and gets its own state dir and stub
as any container (see cocoon.service.membership).
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cocoon.cli.output import Reporter
from cocoon.errors import AlreadyExists, CocoonError, FailedPrecondition, InvalidArgument
from cocoon.service import membership, persist
from cocoon.service.persist import SandboxPaths

VM_ANNOTATIONS = ("io.cocoon.config.", "io.katacontainers.config.")


def find(args: argparse.Namespace, bundle: str) -> membership.PodView | None:
    """The running sandbox the bundle's spec names, if any; raises InvalidArgument."""
    from cocoon.config.paths import runtime_root

    try:
        spec = json.loads((Path(bundle) / "config.json").read_text())
    except (OSError, ValueError):
        return None  # the normal path reports it
    if not isinstance(spec, dict) or not membership.named_paths(spec):
        return None  # the common case: no scan of the root
    pods = membership.pods_in(runtime_root(args.root))
    found = membership.match(spec, pods, membership.ns_id)
    if found is None:
        return None
    return next(p for p in pods if p.home == found.home)


def _validate(args: argparse.Namespace, pod: membership.PodView) -> Any:
    """Everything the normal create checks, but the namespaces that name ``pod``."""
    from cocoon.cli.common import check_pid_file
    from cocoon.cli.create import _check_terminal
    from cocoon.oci.spec import load_bundle, require_process, vm_compatibility

    bundle = load_bundle(args.bundle)
    require_process(bundle)
    check_pid_file(getattr(args, "pid_file", None))
    _check_terminal(args, bundle.terminal, True)
    if getattr(args, "preserve_fds", 0):
        raise InvalidArgument("--preserve-fds is not supported: host fds cannot enter the VM")
    rest = membership.without_pod_paths(bundle.spec, pod, membership.ns_id)
    errors, _ = vm_compatibility(rest)
    if errors:
        raise InvalidArgument(f"unsupported in {bundle.path}/config.json: {errors[0]}")
    return bundle


def create_member(
    args: argparse.Namespace, reporter: Reporter, pod: membership.PodView
) -> tuple[SandboxPaths, Path, dict[str, Any]]:
    """Create the container in ``pod``'s VM and its state dir (not the stub yet).

    Call with the container's own lock held. Raises CocoonError; leaves nothing.
    """

    from cocoon.service import quick

    bundle = _validate(args, pod)

    def join(paths: SandboxPaths) -> dict[str, Any]:
        return quick.call(
            paths, "Join", timeout=300, container_id=paths.id, bundle=str(bundle.path)
        )

    paths, _, reply = enter_member(args, pod.home, bundle, join)
    for warning in reply.get("warnings", []):
        reporter.warn(str(warning))
    ignored = sorted(k for k in bundle.annotations if k.startswith(VM_ANNOTATIONS))
    if ignored:
        reporter.warn(
            f"{', '.join(ignored)}: ignored, the VM is {pod.home}'s and keeps its settings"
        )
    return paths, bundle.path, bundle.spec


def enter_member(
    args: argparse.Namespace,
    home_id: str,
    bundle: Any,
    call: Callable[[SandboxPaths], dict[str, Any]],
) -> tuple[SandboxPaths, persist.SandboxState, dict[str, Any]]:
    """A member's own state dir (``sandbox`` = ``home_id``), under the sandbox's lock,
    then ``call`` (the service's Join, or RestoreMember) with its paths; on failure
    the dir is removed again. Returns (paths, the home's state, the reply)."""
    from cocoon.cli.common import now_rfc3339, paths_for
    from cocoon.cli.lock import container_lock
    from cocoon.procutil import alive

    own = paths_for(args, args.id)
    if own.dir.exists():
        raise AlreadyExists(f"container {own.id!r} already exists")
    paths = SandboxPaths(own.root, own.id, home=home_id)
    with container_lock(own.root, home_id):
        home = persist.load(SandboxPaths(own.root, home_id))
        if not alive(home.service_pid):
            raise FailedPrecondition(f"the sandbox of container {home_id!r} is not running")
        try:
            paths.dir.mkdir(mode=0o700)
        except FileExistsError:
            raise AlreadyExists(f"container {own.id!r} already exists") from None
        try:
            persist.save(
                paths,
                persist.SandboxState(
                    id=paths.id,
                    bundle=str(bundle.path),
                    created=now_rfc3339(),
                    service_pid=home.service_pid,
                    accel=home.accel,
                    annotations=bundle.annotations,
                    sandbox=home_id,
                ),
            )
            reply = call(paths)
        except BaseException:
            persist.remove_tree(paths.dir)
            raise
    return paths, home, reply


def destroy_member(paths: SandboxPaths, reporter: Reporter) -> None:
    """Undo a half-made member: out of the VM, its state dir gone; the sandbox too if
    it was the last container there (its home's own already deleted)."""
    try:
        st = persist.load(paths)
    except CocoonError:
        persist.remove_tree(paths.dir)
        return
    left = delete_member_or_home(paths, st, True, reporter) or []
    if left:
        reporter.warn(f"could not remove {', '.join(left)}")


def delete_member_or_home(
    paths: SandboxPaths, st: persist.SandboxState, force: bool, reporter: Reporter
) -> list[str] | None:
    """``delete`` of a container that shares its sandbox; None when it shares nothing
    (the normal delete applies). Returns what could not be removed.

    Holds the sandbox's lock (its home's) for the member's delete, so joins and
    deletes of one sandbox are serialised; the home's own delete already holds it.
    """
    from cocoon.cli.lock import container_lock, remove_lock
    from cocoon.procutil import alive
    from cocoon.service import quick
    from cocoon.service.launch import force_cleanup, wait_service_exit

    home_id = st.sandbox or st.id
    if not st.sandbox and not membership.members_of(paths.root, st.id):
        return None
    if st.sandbox and not (paths.root / home_id).is_dir():
        return persist.remove_tree(paths.dir)  # its sandbox is gone already (a crash)
    lock = container_lock(paths.root, home_id) if st.sandbox else contextlib.nullcontext()
    with lock:
        home_paths = SandboxPaths(paths.root, home_id)
        try:
            home = persist.load(home_paths)
        except CocoonError:
            home = None
        plan = membership.delete_plan(
            paths.id,
            home_id,
            home is None or home.deleted,
            membership.members_of(paths.root, home_id),
        )
        if alive(st.service_pid):
            try:
                quick.call(paths, "Delete", container_id=paths.id, force=force)
            except CocoonError as exc:
                if not force:
                    raise
                reporter.debug(f"delete: the service failed ({exc}); cleaning up by force")
        left: list[str] = []
        if plan.mark_deleted and home is not None:
            home.deleted = True  # its dir stays: the sandbox's home, until the last member
            persist.save(home_paths, home)
        elif plan.last and home is not None:
            wait_service_exit(None, home.service_pid, 15)
            left += force_cleanup(home_paths)
            remove_lock(paths.root, home_id)
        if st.sandbox:
            left += persist.remove_tree(paths.dir)
    return left
