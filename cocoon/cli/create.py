"""``create``, ``start`` and ``run``: a container in its own VM, runc's way.

``create`` validates everything it can before creating anything, starts the
sandbox service (which boots the VM), has the agent create the container, runs
the createRuntime/createContainer hooks, and leaves the stub (the PID in
``--pid-file``) holding the container's stdio. ``start`` runs it. ``run`` is
both; in the foreground the CLI itself is the reapable process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import termios
import tty
from pathlib import Path
from typing import Any

from cocoon.cli.common import paths_for, prepare_sandbox
from cocoon.cli.lock import container_lock, drop_if_unused, remove_lock
from cocoon.cli.output import Reporter
from cocoon.errors import CocoonError, FailedPrecondition, InvalidArgument
from cocoon.service.persist import SandboxPaths

FOREGROUND_SIGNALS = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)


def oci_state(
    paths: SandboxPaths, status: str, pid: int, bundle: str, annotations: dict[str, str]
) -> dict[str, Any]:
    return {
        "ociVersion": "1.0.2",
        "id": paths.id,
        "status": status,
        "pid": pid,
        "bundle": bundle,
        "annotations": annotations,
    }


def run_hooks(
    kind: str, spec: dict[str, Any], state: dict[str, Any], fatal: bool, reporter: Reporter
) -> None:
    if not spec.get("hooks"):
        return  # the common case: no import, no work
    from cocoon.oci.hooks import hooks_of
    from cocoon.oci.hooks import run_hooks as _run

    hooks = hooks_of(spec, kind)
    if not hooks:
        return
    for warning in _run(kind, hooks, state, fatal=fatal):
        reporter.warn(warning)


def _spec(bundle: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((bundle / "config.json").read_text())
        return data
    except (OSError, ValueError):
        return {}


def _check_terminal(args: argparse.Namespace, terminal: bool, detached: bool) -> None:
    """runc's rules for ttys and console sockets."""
    from cocoon.cli.stub import check_console_socket

    if args.console_socket:
        if not terminal:
            raise InvalidArgument("--console-socket given but process.terminal is false")
        check_console_socket(args.console_socket)
    elif terminal and detached:
        raise InvalidArgument(
            "cannot allocate a tty for a detached container without --console-socket"
        )


def _start_sandbox(
    args: argparse.Namespace, reporter: Reporter, detached: bool
) -> tuple[SandboxPaths, Path, subprocess.Popen[bytes], dict[str, Any]]:
    """Everything create does up to a container created in the guest."""
    from cocoon.service.launch import spawn_service

    paths, bundle = prepare_sandbox(args, reporter, _check_terminal_for(args, detached))
    spec = _spec(bundle)
    try:
        service = spawn_service(paths, args.debug)
        for warning in asyncio.run(_create_in_guest(paths, bundle)):
            reporter.warn(warning)
    except BaseException:
        _destroy(paths)
        raise
    return paths, bundle, service, spec


def create_hooks(
    paths: SandboxPaths, bundle: Path, spec: dict[str, Any], pid: int, reporter: Reporter
) -> None:
    """createRuntime (after prestart, which it includes) and createContainer, on the host."""
    state = oci_state(paths, "created", pid, str(bundle), spec.get("annotations") or {})
    run_hooks("createRuntime", spec, state, True, reporter)
    run_hooks("createContainer", spec, state, True, reporter)


def wants_new_netns(spec: dict[str, Any]) -> bool:
    namespaces = (spec.get("linux") or {}).get("namespaces") or []
    return any(ns.get("type") == "network" and not ns.get("path") for ns in namespaces)


def attach_hooked_network(paths: SandboxPaths, pid: int) -> None:
    """Hooks may have filled the stub's new network namespace (docker's bridge
    networks): carry what they put there into the VM, which booted before."""
    from cocoon.service import quick

    quick.call(paths, "AttachNetwork", timeout=120, netns=f"/proc/{pid}/ns/net")


def joined_netns(spec: dict[str, Any]) -> str:
    """The network namespace path the spec names ("" if none)."""
    namespaces = (spec.get("linux") or {}).get("namespaces") or []
    return next(
        (str(ns["path"]) for ns in namespaces if ns.get("type") == "network" and ns.get("path")),
        "",
    )


def _check_terminal_for(args: argparse.Namespace, detached: bool) -> Any:
    def check(terminal: bool) -> None:
        _check_terminal(args, terminal, detached)

    return check


async def _create_in_guest(paths: SandboxPaths, bundle: Path) -> list[str]:
    from cocoon.service.client import ServiceClient

    client = await ServiceClient.connect(paths)
    try:
        return await client.create(paths.id, str(bundle))
    finally:
        await client.close()


def _destroy(paths: SandboxPaths) -> None:
    """Tear a half-made sandbox down: ask the service, then make sure."""
    from cocoon.procutil import alive
    from cocoon.service import persist
    from cocoon.service.launch import force_cleanup, wait_service_exit

    async def shutdown() -> None:
        from cocoon.service.client import ServiceClient

        try:
            client = await ServiceClient.connect(paths)
        except CocoonError:
            return
        try:
            await client.shutdown()
        except CocoonError:
            pass
        finally:
            await client.close()

    with contextlib.suppress(CocoonError):
        st = persist.load(paths)
        if alive(st.service_pid):
            asyncio.run(shutdown())
            wait_service_exit(None, st.service_pid, 15)
    force_cleanup(paths)


def write_pid_file(path: str | None, pid: int) -> None:
    if not path:
        return
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        tmp.write_text(str(pid))
        os.replace(tmp, target)
    except OSError as exc:
        raise InvalidArgument(f"cannot write --pid-file {path}", exc) from exc


def create(args: argparse.Namespace, reporter: Reporter) -> int:
    paths = paths_for(args, args.id)
    with container_lock(paths.root, paths.id, must_exist=False):
        try:
            from cocoon.cli.join import find

            pod = find(args, args.bundle)
            if pod is not None:
                return _create_member(args, reporter, pod)
            paths, bundle, _, spec = _start_sandbox(args, reporter, detached=True)
            try:
                _spawn_stub(args, reporter, paths, bundle, spec, late_network=True)
            except BaseException:
                _destroy(paths)
                raise
        except BaseException:
            drop_if_unused(paths.root, paths.id)
            raise
    return 0


def _create_member(args: argparse.Namespace, reporter: Reporter, pod: Any) -> int:
    """``create`` into a running sandbox (cocoon.cli.join): the same stub, hooks and
    pid file as any container; its network namespace is the sandbox's (or its own)."""
    from cocoon.cli.join import create_member, destroy_member

    paths, bundle, spec = create_member(args, reporter, pod)
    try:
        _spawn_stub(args, reporter, paths, bundle, spec, late_network=False)
    except BaseException:
        destroy_member(paths, reporter)
        raise
    return 0


def _spawn_stub(
    args: argparse.Namespace,
    reporter: Reporter,
    paths: SandboxPaths,
    bundle: Path,
    spec: dict[str, Any],
    late_network: bool,
) -> None:
    """The container's stub, its hooks and pid file. The stub exists before the
    hooks: they get its PID, and its own network namespace (what a hook such as
    docker's configures); ``late_network``: carry what they put there into the VM
    (a member's network is its sandbox's)."""
    pid = spawn_init_stub(args, paths, spec)
    create_hooks(paths, bundle, spec, pid, reporter)
    if late_network and wants_new_netns(spec) and spec.get("hooks"):
        attach_hooked_network(paths, pid)
    write_pid_file(args.pid_file, pid)


def spawn_init_stub(
    args: argparse.Namespace, paths: SandboxPaths, spec: dict[str, Any], netns_path: str = ""
) -> int:
    """The stub standing for the container's init, registered with the service and
    recorded as the sandbox's (what other specs' namespace paths name); its PID.
    ``netns_path``: the namespace it enters, instead of the one the spec names."""
    from cocoon.cli import stub

    pid = stub.spawn(
        paths,
        paths.id,
        "",
        args.console_socket,
        args.log,
        args.log_format,
        new_netns=wants_new_netns(spec),
        netns_path=netns_path or joined_netns(spec),
    )
    stub.register(paths, "", pid)
    record_stub(paths, pid)
    return pid


def record_stub(paths: SandboxPaths, pid: int) -> None:
    from cocoon.service.membership import record_stub as record

    record(paths, pid)


def start(args: argparse.Namespace, reporter: Reporter) -> int:
    from cocoon.service import persist

    paths = paths_for(args, args.id)
    with container_lock(paths.root, paths.id):
        st = persist.load(paths)
        spec = _spec(Path(st.bundle))
        status, pid = asyncio.run(_status(paths))
        if status != "created":
            raise FailedPrecondition(f"cannot start container {paths.id!r}: it is {status}")
        state = oci_state(paths, status, pid, st.bundle, st.annotations)
        run_hooks("startContainer", spec, state, True, reporter)
        asyncio.run(_start(paths))
        state["status"] = "running"
        run_hooks("poststart", spec, state, False, reporter)
    return 0


async def _status(paths: SandboxPaths) -> tuple[str, int]:
    from cocoon.service.client import ServiceClient

    client = await ServiceClient.connect(paths)
    try:
        st = await client.state(paths.id)
        return st.status, st.pid
    finally:
        await client.close()


async def _start(paths: SandboxPaths) -> None:
    from cocoon.service.client import ServiceClient

    client = await ServiceClient.connect(paths)
    try:
        await client.start(paths.id)
    finally:
        await client.close()


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    if args.detach:
        create(args, reporter)
        start(args, reporter)
        return 0
    paths = paths_for(args, args.id)
    with container_lock(paths.root, paths.id, must_exist=False):
        try:
            from cocoon.cli.join import find

            if find(args, args.bundle) is not None:
                raise InvalidArgument(
                    "the spec names a running Cocoon sandbox's namespaces: joining it "
                    "needs create and start (or run --detach)"
                )
            paths, bundle, service, spec = _start_sandbox(args, reporter, detached=False)
        except BaseException:
            drop_if_unused(paths.root, paths.id)
            raise
    try:
        return asyncio.run(_foreground(args, reporter, paths, bundle, spec))
    finally:
        with container_lock(paths.root, paths.id):
            _destroy(paths)
            state = oci_state(paths, "stopped", 0, str(bundle), spec.get("annotations") or {})
            with contextlib.suppress(CocoonError):
                run_hooks("poststop", spec, state, False, reporter)
            remove_lock(paths.root, paths.id)


async def _foreground(
    args: argparse.Namespace,
    reporter: Reporter,
    paths: SandboxPaths,
    bundle: Path,
    spec: dict[str, Any],
) -> int:
    """Run with our own stdio, signals forwarded; our exit status is the container's."""
    from cocoon.cli.stub import enter_network_namespace, open_terminal, winsize
    from cocoon.service.client import ServiceClient, dup_stdio, send_stdio

    client = await ServiceClient.connect(paths)
    saved_tty = None
    terminal = bool(spec.get("process", {}).get("terminal", False))
    try:
        if terminal and args.console_socket:
            slave = open_terminal(args.console_socket)
            send_stdio(paths, paths.id, "", {"stdin": os.dup(slave), "stdout": slave})
        else:
            send_stdio(paths, paths.id, "", dup_stdio())
            if terminal and os.isatty(0):
                saved_tty = termios.tcgetattr(0)
                tty.setraw(0)
        await client.register_process(paths.id, "", os.getpid())
        if spec.get("hooks"):
            # Like the stub: the hooks get our PID, so we must not be in the host's
            # network namespace when they look at /proc/<pid>/ns/net.
            enter_network_namespace(wants_new_netns(spec), joined_netns(spec))
        create_hooks(paths, bundle, spec, os.getpid(), reporter)
        if wants_new_netns(spec) and spec.get("hooks"):
            await asyncio.to_thread(attach_hooked_network, paths, os.getpid())
        write_pid_file(args.pid_file, os.getpid())
        state = oci_state(paths, "created", os.getpid(), str(bundle), spec.get("annotations") or {})
        run_hooks("startContainer", spec, state, True, reporter)
        await client.start(paths.id)
        state["status"] = "running"
        run_hooks("poststart", spec, state, False, reporter)
        loop = asyncio.get_running_loop()
        for sig in FOREGROUND_SIGNALS:
            loop.add_signal_handler(sig, _forward, client, paths.id, sig)
        if terminal and saved_tty is not None:
            rows, cols = winsize(0)
            await client.resize(paths.id, "", rows, cols)
        resp = await client.wait(paths.id)
        if resp.timings:
            reporter.debug("timings " + " ".join(f"{k}={v:.3f}" for k, v in resp.timings.items()))
        if resp.error:
            raise CocoonError(resp.error)
        return resp.status
    finally:
        if saved_tty is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved_tty)
        await client.close()
        sys.stdout.flush()


def _forward(client: object, cid: str, sig: int) -> None:
    from cocoon.service.client import ServiceClient

    assert isinstance(client, ServiceClient)
    task = asyncio.get_running_loop().create_task(client.kill(cid, int(sig)))
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
