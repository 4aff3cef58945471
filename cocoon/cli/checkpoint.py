"""``checkpoint`` and ``restore``: runc's verbs, done by saving and loading the whole VM.

No CRIU: the sandbox service saves the VM's RAM and devices and the container's
disks (cocoon.service.snapshot); every process, connection, pipe and timer of
the guest continues where it stopped. CRIU's options are accepted and logged.
A restore checks the image (complete, same QEMU, guest assets, CPU model)
before it creates anything.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from cocoon.cli.common import paths_for
from cocoon.cli.lock import container_lock, drop_if_unused, remove_lock
from cocoon.cli.output import Reporter
from cocoon.errors import CocoonError, FailedPrecondition, InvalidArgument
from cocoon.service.persist import SandboxPaths

_CRIU_ONLY = (
    "tcp_established",
    "ext_unix_sk",
    "shell_job",
    "file_locks",
    "auto_dedup",
    "manage_cgroups_mode",
    "empty_ns",
    "status_fd",
    "page_server",
    "parent_path",
    "no_subreaper",
    "lsm_profile",
    "lsm_mount_context",
)


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    given = [f"--{k.replace('_', '-')}" for k in _CRIU_ONLY if getattr(args, k, None)]
    if given:
        reporter.debug(f"accepted, nothing to do in a VM: {' '.join(given)}")
    if getattr(args, "lazy_pages", False) or getattr(args, "pre_dump", False):
        raise InvalidArgument("--lazy-pages and --pre-dump are not supported: a VM is saved whole")
    if args.verb == "checkpoint":
        return checkpoint(args, reporter)
    if args.verb == "migrate":
        return migrate(args, reporter)
    return restore(args, reporter)


def image_dir(args: argparse.Namespace) -> Path:
    """runc's default: ``checkpoint`` under the current directory."""
    return Path(args.image_path or "checkpoint").absolute()


def checkpoint(args: argparse.Namespace, reporter: Reporter) -> int:
    from cocoon.service import quick

    paths = paths_for(args, args.id)
    with container_lock(paths.root, paths.id):
        if paths.is_member:
            raise FailedPrecondition(f"cannot checkpoint: {_member_alone(paths)}")
        if not paths.state.is_file():
            from cocoon.errors import NotFound

            raise NotFound(f"container {paths.id!r} does not exist")
        resp = quick.call(
            paths,
            "Checkpoint",
            timeout=900,
            container_id=paths.id,
            image_path=str(image_dir(args)),
            leave_running=bool(args.leave_running),
        )
        stats = resp.get("stats") or {}
        reporter.debug("checkpoint " + " ".join(f"{k}={v}" for k, v in stats.items()))
    return 0


def _member_alone(paths: SandboxPaths) -> str:
    """The one line for a member's checkpoint: the pod is saved through its home."""
    from cocoon.checkpoint import manifest as mf
    from cocoon.service import persist

    rows = [{"id": paths.id, "role": mf.MEMBER}]
    try:
        home = persist.load(SandboxPaths(paths.root, paths.home))
        if not home.deleted:
            rows.append({"id": paths.home, "role": mf.HOME})
    except CocoonError:
        pass
    return mf.refusal({"machine": "pc"}, rows, paths.id)


def migrate(args: argparse.Namespace, reporter: Reporter) -> int:
    """The source of a live migration: the service moves the VM; once the destination
    runs it, this container is gone from here (as after a delete). Prints the figures."""
    import json

    from cocoon.service import persist, quick
    from cocoon.service.launch import force_cleanup, wait_service_exit
    from cocoon.service.migrate import parse_address

    parse_address(args.to)
    paths = paths_for(args, args.id)
    with container_lock(paths.root, paths.id):
        if paths.is_member:
            raise FailedPrecondition(
                f"container {paths.id!r} shares the VM of {paths.home!r}: a pod cannot be "
                "migrated live (checkpoint and restore it instead)"
            )
        st = persist.load(paths)
        resp = quick.call(paths, "Migrate", timeout=1800, container_id=paths.id, to=args.to)
        wait_service_exit(None, st.service_pid, 15)
        left = force_cleanup(paths)
        remove_lock(paths.root, paths.id)
    stats = resp.get("stats") or {}
    print(json.dumps(stats, sort_keys=True), flush=True)
    if left:
        raise CocoonError(f"could not remove {', '.join(left)}")
    return 0


def host_qemu_version(qemu: str) -> str:
    """``7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)``, as QMP's query-version reads."""
    try:
        out = subprocess.run(
            [qemu, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except OSError as exc:
        raise InvalidArgument(f"cannot run QEMU {qemu}", exc) from exc
    m = re.search(r"version (\S+)\s*(.*)", out.splitlines()[0] if out else "")
    return normalise_version(f"{m.group(1)} {m.group(2)}") if m else ""


def normalise_version(text: str) -> str:
    """``--version`` says ``(Debian ...)``, QMP ``Debian ...``: compare words only."""
    return " ".join(text.replace("(", " ").replace(")", " ").split())


def restore(args: argparse.Namespace, reporter: Reporter) -> int:
    from cocoon.checkpoint import manifest as mf

    saved: mf.Manifest | None = None
    directory = image_dir(args)
    if args.listen:
        from cocoon.service.migrate import parse_address

        parse_address(args.listen)
        if args.image_path:
            raise InvalidArgument("--listen and --image-path exclude each other")
    else:
        saved = mf.load(directory)  # complete and readable, or one line and nothing made
    paths = paths_for(args, args.id)
    with container_lock(paths.root, paths.id, must_exist=False):
        try:
            home = _awaiting_home(args, saved, directory) if saved is not None else None
            if home is not None:
                member = _restore_member(args, reporter, *home)
                if member is None:
                    return 0
                paths, bundle = member
            else:
                paths, bundle = _prepare(args, reporter, saved, directory)
        except BaseException:
            drop_if_unused(paths.root, paths.id)
            raise
        try:
            if home is None:
                for warning in _wait_restored(paths):
                    reporter.warn(warning)
            if args.detach:
                _detached(args, reporter, paths, bundle)
                return 0
        except BaseException:
            from cocoon.cli.create import _destroy

            _destroy(paths)
            remove_lock(paths.root, paths.id)
            raise
    return _foreground(args, reporter, paths, bundle)


def _awaiting_home(
    args: argparse.Namespace, saved: object, directory: Path
) -> tuple[str, str] | None:
    """(home ID, saved ID) when this restore is of a member of a pod whose home was
    restored from ``directory`` and awaits it; None: a sandbox of its own (refused for
    a member of the checkpoint before its home)."""
    import json

    from cocoon.checkpoint import manifest as mf
    from cocoon.config.paths import runtime_root
    from cocoon.procutil import alive
    from cocoon.service import membership

    assert isinstance(saved, mf.Manifest)
    members = [c for c in saved.containers if c.role == mf.MEMBER]
    if not members:
        return None
    bundle = str(Path(args.bundle or ".").absolute())
    try:
        spec = json.loads((Path(bundle) / "config.json").read_text())
    except (OSError, ValueError):
        spec = {}
    joins = isinstance(spec, dict) and bool(membership.named_paths(spec))
    for st in membership.states_in(runtime_root(args.root)):
        if st.sandbox or st.restore != str(directory) or not st.awaiting:
            continue
        if st.deleted or not alive(st.service_pid):
            continue
        picked = mf.pick_member(st.awaiting, args.id, bundle, joins)
        if picked:
            return st.id, picked
    home = next(c.id for c in saved.containers if c.role == mf.HOME)
    if args.id in {c.id for c in members}:
        raise FailedPrecondition(
            f"cannot restore {args.id!r}: it is a member of pod {home!r} in checkpoint "
            f"{directory}; restore {home!r} first (its VM holds every container of the pod)"
        )
    return None


def _restore_member(
    args: argparse.Namespace, reporter: Reporter, home_id: str, saved_id: str
) -> tuple[SandboxPaths, Path] | None:
    """``restore`` of a member of a restored pod: it joins the VM as its ``create``
    joined one (its own state dir, ``sandbox`` = the home), its records rebuilt from
    the checkpoint's by the home's service; then (``--detach``) its stub and pid file,
    or (None returned) the caller stands for it in the foreground."""
    from cocoon.cli.common import check_pid_file
    from cocoon.cli.create import _check_terminal
    from cocoon.cli.join import destroy_member, enter_member
    from cocoon.oci.spec import load_bundle
    from cocoon.service import quick

    bundle = load_bundle(args.bundle or ".")
    check_pid_file(args.pid_file)
    _check_terminal(args, bundle.terminal, args.detach)

    def claim(paths: SandboxPaths) -> dict[str, Any]:
        return quick.call(
            paths,
            "RestoreMember",
            timeout=300,
            container_id=paths.id,
            bundle=str(bundle.path),
            saved_id=saved_id,
        )

    paths, home, reply = enter_member(args, home_id, bundle, claim)
    for warning in reply.get("warnings", []):
        reporter.warn(str(warning))
    if not args.detach:
        return paths, bundle.path
    netns = f"/proc/{home.stub_pid}/ns/net" if home.stub_pid else home.netns
    try:
        _detached(args, reporter, paths, bundle.path, netns)
    except BaseException:
        destroy_member(paths, reporter)
        raise
    return None


def _prepare(
    args: argparse.Namespace, reporter: Reporter, saved: object, directory: Path
) -> tuple[SandboxPaths, Path]:
    """The state dir of the restored sandbox, with the checkpoint's settings, after the
    host is checked against the checkpoint; then its service, loading the image."""
    from cocoon.checkpoint import manifest as mf
    from cocoon.cli.common import prepare_sandbox
    from cocoon.cli.create import _check_terminal_for, _destroy
    from cocoon.config.settings import Settings
    from cocoon.service import persist
    from cocoon.service.launch import spawn_service

    paths, bundle = prepare_sandbox(args, reporter, _check_terminal_for(args, args.detach))
    if saved is None:  # a live migration's destination: its service checks the manifest
        try:
            st = persist.load(paths)
            st.listen = args.listen
            persist.save(paths, st)
            spawn_service(paths, args.debug)
        except BaseException:
            _destroy(paths)
            raise
        return paths, bundle
    assert isinstance(saved, mf.Manifest)
    try:
        st = persist.load(paths)
        merged = mf.restored_settings(saved.settings, st.settings)
        settings = Settings.from_dict(merged)
        host = mf.Host(
            qemu_version=host_qemu_version(settings.qemu),
            accel=st.accel,
            assets_key=st.assets.get("key", ""),
            cpu=_host_cpu(settings, st, paths),
            machine=settings.machine,
        )
        saved.qemu_version = normalise_version(saved.qemu_version)
        why = mf.mismatch(saved, host)
        if why:
            raise FailedPrecondition(f"cannot restore {directory}: {why}")
        st.settings = merged
        st.restore = str(directory)
        persist.save(paths, st)
        spawn_service(paths, args.debug)
    except BaseException:
        _destroy(paths)
        raise
    return paths, bundle


def _host_cpu(settings: object, st: object, paths: object) -> str:
    """The -cpu argument this host would give the checkpoint's VM."""
    from cocoon.assets import GuestAssets
    from cocoon.config.settings import Settings
    from cocoon.hypervisor.cmdline import build_argv
    from cocoon.hypervisor.plan import vm_plan
    from cocoon.service import persist
    from cocoon.service.snapshot import cpu_arg

    assert isinstance(settings, Settings) and isinstance(st, persist.SandboxState)
    assert isinstance(paths, persist.SandboxPaths)
    assets = GuestAssets(
        Path(st.assets["kernel"]), Path(st.assets["initrd"]), Path(st.assets["image"]), "", ""
    )
    plan = vm_plan(
        settings,
        assets,
        st.accel or "tcg",
        qmp_socket=paths.qmp_sock,
        agent_socket=paths.agent_sock,
        console_log=paths.console_log,
        share=None,
        debug_socket=None,
    )
    return cpu_arg(build_argv(plan))


def _wait_restored(paths: object) -> list[str]:
    from cocoon.service import quick
    from cocoon.service.persist import SandboxPaths

    assert isinstance(paths, SandboxPaths)
    resp = quick.call(paths, "Restored", timeout=900, container_id=paths.id)
    return list(resp.get("warnings") or [])


def _detached(
    args: argparse.Namespace, reporter: Reporter, paths: object, bundle: Path, pod_netns: str = ""
) -> None:
    """The stub standing for the restored init (as after create), then its pid file.
    ``pod_netns``: a member's, the network namespace of its pod (its spec's paths name
    the stubs of before the checkpoint)."""
    from cocoon.cli.create import spawn_init_stub, write_pid_file
    from cocoon.oci.spec import load_bundle

    assert isinstance(paths, SandboxPaths)
    pid = spawn_init_stub(args, paths, load_bundle(str(bundle)).spec, pod_netns)
    write_pid_file(args.pid_file, pid)


def _foreground(args: argparse.Namespace, reporter: Reporter, paths: object, bundle: Path) -> int:
    """``restore`` without ``--detach``: this process stands for the container and
    exits with its status (as ``run``)."""
    from cocoon.cli.create import _destroy, write_pid_file
    from cocoon.service.client import ServiceClient, dup_stdio, send_stdio
    from cocoon.service.persist import SandboxPaths

    assert isinstance(paths, SandboxPaths)

    async def wait() -> int:
        client = await ServiceClient.connect(paths)
        try:
            send_stdio(paths, paths.id, "", dup_stdio())
            await client.register_process(paths.id, "", os.getpid())
            write_pid_file(args.pid_file, os.getpid())
            resp = await client.wait(paths.id)
            if resp.error:
                raise CocoonError(resp.error)
            return resp.status
        finally:
            await client.close()

    try:
        return asyncio.run(wait())
    finally:
        with container_lock(paths.root, paths.id):
            if paths.is_member:  # out of the pod's VM, which runs on
                from cocoon.cli.join import destroy_member

                destroy_member(paths, reporter)
            else:
                _destroy(paths)
            remove_lock(paths.root, paths.id)
