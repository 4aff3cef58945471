"""``containerd-shim-cocoon-v2``: containerd's shim v2 binary protocol, one VM per pod.

containerd runs ``<flags> start`` in the bundle dir for each container; for a pod's
sandbox container (or a plain ``ctr run`` container, a pod of one) that prepares
the sandbox state, starts the long-lived shim (``<flags> -sandbox-dir D -socket S
-ready-fd N``: the Task service over ttRPC, hosting the pod's Sandbox) and prints
its address; for a later container of the pod it prints the pod's shim address.
``<flags> delete`` cleans up after a shim that is gone and prints a DeleteResponse.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cocoon.errors import CocoonError, FailedPrecondition
from cocoon.shim.pods import PodRole, pod_role, socket_path, state_root

log = logging.getLogger("cocoon.shim")
DEAD_SHIM_STATUS = 128 + signal.SIGKILL


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """containerd's flags (Go style, one dash), plus the serve-mode flags ``start`` adds."""
    p = argparse.ArgumentParser(prog="containerd-shim-cocoon-v2", allow_abbrev=False)
    p.add_argument("-namespace", default="default")
    p.add_argument("-address", default="")
    p.add_argument("-publish-binary", dest="publish_binary", default="")
    p.add_argument("-id", default="")
    p.add_argument("-bundle", default="")
    p.add_argument("-socket", default="")
    p.add_argument("-debug", action="store_true")
    p.add_argument("-v", dest="version", action="store_true")
    p.add_argument("-sandbox-dir", dest="sandbox_dir", default="")
    p.add_argument("-ready-fd", dest="ready_fd", type=int, default=-1)
    p.add_argument("action", nargs="?", default="", choices=["", "start", "delete"])
    return p.parse_args(argv)


def _spec_annotations(bundle: Path) -> dict[str, str]:
    try:
        spec: dict[str, Any] = json.loads((bundle / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    ann = spec.get("annotations") or {}
    return {str(k): str(v) for k, v in ann.items()}


def _listening(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def _role(args: argparse.Namespace, bundle: Path) -> PodRole:
    from cocoon.oci.ids import validate_id

    role = pod_role(args.id, _spec_annotations(bundle))
    validate_id(role.pod_id, "pod sandbox id")  # from an annotation; it names a state dir
    return role


# -- start -------------------------------------------------------------------------
def start(args: argparse.Namespace) -> int:
    bundle = Path(args.bundle or os.getcwd())
    role = _role(args, bundle)
    sock = socket_path(args.address, args.namespace, role.pod_id)
    if not role.is_sandbox:
        if not _listening(sock):
            raise FailedPrecondition(f"pod sandbox {role.pod_id!r} has no running shim")
    else:
        _start_shim(args, bundle, sock)
    address = f"unix://{sock}"
    (bundle / "address").write_text(address)
    sys.stdout.write(address)
    sys.stdout.flush()
    return 0


def _start_shim(args: argparse.Namespace, bundle: Path, sock: Path) -> None:
    from cocoon.cli.output import Reporter
    from cocoon.service.launch import force_cleanup, spawn_ready
    from cocoon.service.prepare import prepare_sandbox

    if _listening(sock):
        raise FailedPrecondition(f"a shim already serves {args.id!r} at {sock}")
    _remove_stale(args)
    ns = argparse.Namespace(
        id=args.id,
        bundle=str(bundle),
        root=str(state_root(args.namespace)),
        assets_dir=None,
        config=None,
        preserve_fds=0,
    )
    # containerd reads start's stdout and stderr together as the address: warnings
    # (e.g. "running under TCG") must go elsewhere.
    quiet = Reporter(os.devnull, "text", args.debug)
    paths, _ = prepare_sandbox(ns, quiet, lambda _terminal: None)
    sock.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
    argv = [sys.executable, "-m", "cocoon.shim.main"]
    argv += ["-namespace", args.namespace, "-address", args.address, "-id", args.id]
    argv += ["-publish-binary", args.publish_binary, "-bundle", str(bundle)]
    argv += ["-sandbox-dir", str(paths.dir), "-socket", str(sock)]
    argv += ["-debug"] if args.debug else []
    argv += ["-ready-fd"]  # spawn_ready appends the fd
    try:
        spawn_ready(argv, paths.service_log)
    except BaseException:
        force_cleanup(paths)
        raise


def _remove_stale(args: argparse.Namespace) -> None:
    """Remove what a crashed shim of the same pod left (containerd may retry the id)."""
    from cocoon.procutil import alive
    from cocoon.service import persist
    from cocoon.service.launch import force_cleanup

    paths = persist.SandboxPaths(state_root(args.namespace), args.id)
    if not paths.dir.exists():
        return
    try:
        pid = persist.load(paths).service_pid
    except CocoonError:
        pid = 0
    if pid and alive(pid):
        raise FailedPrecondition(f"pod {args.id!r} already has a shim (pid {pid})")
    force_cleanup(paths)


# -- delete ------------------------------------------------------------------------
def delete(args: argparse.Namespace) -> int:
    """After the shim is gone (or never came up): remove what it left, report the exit."""
    from cocoon.service.launch import force_cleanup
    from cocoon.service.persist import SandboxPaths
    from cocoon.shim.events import timestamp
    from cocoon.shim.proto import shim_pb2 as pb
    from cocoon.storage.mounts import umount

    bundle = Path(args.bundle or os.getcwd())
    role = _role(args, bundle)
    sock = socket_path(args.address, args.namespace, role.pod_id)
    # containerd also runs this when it merely closes its connection for a task (the
    # pod's sandbox container deleted before its members): a shim that still answers
    # serves the rest of the pod, and ends itself after the last Delete.
    if role.is_sandbox and not _listening(sock):
        paths = SandboxPaths(state_root(args.namespace), role.pod_id)
        if paths.dir.exists():
            left = force_cleanup(paths)
            if left:
                print(f"cocoon shim delete: left behind: {left}", file=sys.stderr)
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
    with contextlib.suppress(OSError):
        umount(str(bundle / "rootfs"))
    resp = pb.DeleteResponse(exit_status=DEAD_SHIM_STATUS, exited_at=timestamp(time.time_ns()))
    sys.stdout.buffer.write(resp.SerializeToString())
    sys.stdout.flush()
    return 0


# -- serve -------------------------------------------------------------------------
def serve(args: argparse.Namespace) -> int:
    import asyncio

    from cocoon.service import persist
    from cocoon.service.host import join_cgroup
    from cocoon.storage.mounts import private_mount_namespace

    sandbox_dir = Path(args.sandbox_dir)
    paths = persist.SandboxPaths(sandbox_dir.parent, sandbox_dir.name)
    logging.basicConfig(
        filename=str(paths.service_log),
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    _log_to_containerd(Path(args.bundle) / "log", args.id)
    ready = os.fdopen(args.ready_fd, "w")
    try:
        private_mount_namespace()
        state = persist.load(paths)
        state.service_pid = os.getpid()
        cgroup = join_cgroup(state)
        state.cgroup = cgroup.plan.to_dict()
        persist.save(paths, state)
    except Exception as exc:  # noqa: BLE001 - reported to containerd in one line
        ready.write(f"error: cannot start the shim: {exc}\n")
        ready.close()
        os._exit(1)
    rc = 1
    try:
        rc = asyncio.run(_serve(args, paths, state, ready, cgroup))
    except BaseException:
        log.exception("shim failed")
    finally:
        logging.shutdown()
    os._exit(rc)  # relay threads may block in FIFO reads: do not wait for them


class _FifoHandler(logging.Handler):
    """Log lines into containerd's ``<bundle>/log`` FIFO, which containerd copies into its
    own log. Never blocks: a line that does not fit (nobody reading) is dropped."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(OSError):
            os.write(self.fd, (self.format(record) + "\n").encode(errors="replace"))


def _log_to_containerd(fifo: Path, pod_id: str) -> None:
    import stat

    try:
        if not stat.S_ISFIFO(fifo.stat().st_mode):
            return
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return  # containerd is not reading (yet): the state dir's log still has everything
    handler = _FifoHandler(fd)
    handler.setLevel(logging.INFO)
    handler.setFormatter(
        logging.Formatter(
            f'time="%(asctime)s" level=%(levelname)s msg="%(message)s" '
            f"runtime=io.containerd.cocoon.v2 pod={pod_id} logger=%(name)s"
        )
    )
    logging.getLogger().addHandler(handler)


async def _serve(args: argparse.Namespace, paths: Any, state: Any, ready: Any, cgroup: Any) -> int:
    import asyncio

    from cocoon.service.host import build_sandbox, serve_until, stop_event, teardown
    from cocoon.shim.events import Publisher
    from cocoon.shim.task import TaskService
    from cocoon.ttrpc.server import Server

    sandbox = build_sandbox(paths, state, cgroup)
    done = stop_event()
    publisher = Publisher(
        args.namespace, os.environ.get("TTRPC_ADDRESS", ""), args.publish_binary, args.address
    )
    tasks = TaskService(sandbox, publisher, paths.id, done.set)
    server = Server()
    tasks.register(server)
    rpc = await server.listen_unix(args.socket)
    # The VM boots at the first Create (cocoon.shim.task), fresh or from a checkpoint.
    ready.write("ok\n")
    ready.close()
    await serve_until(done, lambda: not tasks.containers)
    await asyncio.sleep(0.05)  # let the Shutdown reply reach containerd
    await sandbox.shutdown()
    await publisher.close()
    # Keep answering connects until the state is gone: `delete`, which containerd runs
    # as soon as it drops its connection, leaves a shim that still listens alone.
    teardown(paths, sandbox, cgroup)
    rpc.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(args.socket)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.version:
        print("containerd-shim-cocoon-v2 (cocoon 0.1.0)")
        return 0
    try:
        from cocoon.oci.ids import validate_id

        validate_id(args.id, "shim -id")
        validate_id(args.namespace, "shim -namespace")
        if args.action == "start":
            return start(args)
        if args.action == "delete":
            return delete(args)
        if not args.sandbox_dir or not args.socket or args.ready_fd < 0:
            print("containerd-shim-cocoon-v2: serve mode is started by `start`", file=sys.stderr)
            return 1
        return serve(args)
    except CocoonError as exc:
        print(f"containerd-shim-cocoon-v2: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
