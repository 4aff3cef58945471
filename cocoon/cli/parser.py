"""The argument parser for ``cocoon``: runc's global options and verbs.

Only argparse lives here so that building the parser stays cheap; each verb's
code is imported lazily by :mod:`cocoon.cli.main` once the verb is known.
"""

from __future__ import annotations

import argparse


class _Parser(argparse.ArgumentParser):
    """Errors as one line (``cocoon: ...``) and exit status 1, like every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise SystemExit(f"cocoon: {message}")


def _add_create_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-b", "--bundle", default=".", help="bundle directory (default: cwd)")
    p.add_argument("--pid-file", help="write the PID standing for the container here")
    p.add_argument("--console-socket", help="send the pty master to this AF_UNIX socket")
    p.add_argument("--no-pivot", action="store_true", help="accepted (the guest decides)")
    p.add_argument("--no-new-keyring", action="store_true", help="accepted")
    p.add_argument("--preserve-fds", type=int, default=0, help="accepted; 0 only")


# CRIU's options, as runc takes them: accepted and logged (a VM keeps everything:
# TCP connections, unix sockets, file locks, its own namespaces).
_CRIU_FLAGS = ("--tcp-established", "--ext-unix-sk", "--shell-job", "--file-locks")
_CRIU_VALUES = ("--manage-cgroups-mode", "--empty-ns", "--status-fd", "--page-server")


def _add_checkpoint_verbs(sub: argparse._SubParsersAction, want: object) -> None:  # type: ignore[type-arg]
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--image-path", default="", help="checkpoint image dir (default ./checkpoint)"
    )
    common.add_argument("--work-path", default="", help="accepted (logs would go here)")
    for flag in _CRIU_FLAGS:
        common.add_argument(flag, action="store_true", help="accepted: always so in a VM")
    for flag in _CRIU_VALUES:
        common.add_argument(flag, action="append", help="accepted")
    common.add_argument("--auto-dedup", action="store_true", help="accepted")
    common.add_argument("--lazy-pages", action="store_true", help="not supported")
    ck = sub.add_parser(
        "checkpoint", parents=[common], help="save a running container's whole VM to a dir"
    )
    ck.add_argument("--leave-running", action="store_true", help="keep it running afterwards")
    ck.add_argument("--parent-path", help="accepted; every checkpoint is complete")
    ck.add_argument("--pre-dump", action="store_true", help="not supported")
    ck.add_argument("id")
    rs = sub.add_parser("restore", parents=[common], help="restore a container from a checkpoint")
    _add_create_flags(rs)
    rs.add_argument("-d", "--detach", action="store_true", help="do not wait for the container")
    # containerd's runc shim spells it with one dash (Go's flag package).
    rs.add_argument("--no-subreaper", "-no-subreaper", action="store_true", help="accepted")
    rs.add_argument("--lsm-profile", help="accepted")
    rs.add_argument("--lsm-mount-context", help="accepted")
    rs.add_argument(
        "--listen",
        default="",
        metavar="HOST:PORT",
        help="receive a live migration (cocoon migrate --to) here instead of an image dir",
    )
    rs.add_argument("id")
    mg = sub.add_parser("migrate", help="move a running container's VM live to another host")
    mg.add_argument(
        "--to", required=True, metavar="HOST:PORT", help="a `cocoon restore --listen` there"
    )
    mg.add_argument("id")


_GLOBAL_WITH_VALUE = {"--root", "--log", "--log-format", "--assets-dir", "--rootless", "--config"}
VERBS = (
    "create",
    "start",
    "run",
    "state",
    "kill",
    "delete",
    "list",
    "pause",
    "resume",
    "ps",
    "exec",
    "update",
    "events",
    "features",
    "spec",
    "check",
    "assets",
    "factory",
    "debug-console",
    "checkpoint",
    "restore",
    "migrate",
    "_service",
)


def guess_verb(argv: list[str]) -> str | None:
    """The verb in argv (after runc-style global options), if it is a known one."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in _GLOBAL_WITH_VALUE:
            i += 2
            continue
        if arg.startswith("-"):
            i += 1
            continue
        return arg if arg in VERBS else None
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``only``, just that verb's subparser (building all costs ~15 ms)."""

    def want(verb: str) -> bool:
        return only is None or only == verb

    p = _Parser(
        prog="cocoon",
        description="Cocoon: run every container in its own lightweight VM (runc-compatible).",
    )
    p.add_argument("--root", help="state root (default /run/cocoon)")
    p.add_argument("--log", help="write log lines to this file instead of stderr")
    p.add_argument("--log-format", choices=["text", "json"], default="text")
    p.add_argument("--debug", action="store_true", help="log debug detail")
    p.add_argument("--assets-dir", help="guest asset cache (default /var/lib/cocoon/assets)")
    p.add_argument("--config", help="configuration file (default /etc/cocoon/configuration.toml)")
    p.add_argument("--systemd-cgroup", action="store_true", help="not supported (no systemd)")
    p.add_argument(
        "--rootless",
        default="false",
        choices=["true", "false", "auto"],
        help="accepted: false|auto (Cocoon runs as root)",
    )
    p.add_argument("-v", "--version", action="store_true", help="print the version")
    sub = p.add_subparsers(dest="verb", metavar="COMMAND", parser_class=_Parser)

    if want("create"):
        create = sub.add_parser("create", help="create a container (boots its VM)")
        _add_create_flags(create)
        create.add_argument("id")

    if want("start"):
        start = sub.add_parser("start", help="start a created container")
        start.add_argument("id")

    if want("run"):
        run = sub.add_parser("run", help="create and start a container; wait unless --detach")
        _add_create_flags(run)
        run.add_argument(
            "-d", "--detach", action="store_true", help="do not wait for the container"
        )
        run.add_argument("--keep", action="store_true", help="accepted")
        run.add_argument("id")

    if want("state"):
        state = sub.add_parser("state", help="print a container's state as JSON")
        state.add_argument("id")

    if want("kill"):
        kill = sub.add_parser("kill", help="send a signal to a container's init process")
        kill.add_argument("-a", "--all", action="store_true", help="signal every process")
        kill.add_argument("id")
        kill.add_argument("signal", nargs="?", default="SIGTERM")

    if want("delete"):
        delete = sub.add_parser("delete", help="delete a container and its VM")
        delete.add_argument("-f", "--force", action="store_true", help="kill it first if running")
        delete.add_argument("id")

    if want("list"):
        lst = sub.add_parser("list", help="list containers")
        lst.add_argument("-f", "--format", choices=["table", "json"], default="table")
        lst.add_argument("-q", "--quiet", action="store_true")

    if want("pause") or want("resume"):
        for verb in ("pause", "resume"):
            sp = sub.add_parser(verb, help=f"{verb} every process of a container")
            sp.add_argument("id")

    if want("ps"):
        ps = sub.add_parser("ps", help="processes of a container")
        ps.add_argument("-f", "--format", choices=["table", "json"], default="table")
        ps.add_argument("id")
        ps.add_argument("ps_args", nargs=argparse.REMAINDER)

    if want("exec"):
        ex = sub.add_parser("exec", help="run a process in a running container")
        ex.add_argument("-p", "--process", help="an OCI Process JSON file")
        ex.add_argument("-d", "--detach", action="store_true")
        ex.add_argument("--pid-file")
        ex.add_argument("--console-socket")
        ex.add_argument("-t", "--tty", action="store_true")
        ex.add_argument("--cwd")
        ex.add_argument("-e", "--env", action="append")
        ex.add_argument("-u", "--user")
        ex.add_argument("-g", "--additional-gids", action="append")
        ex.add_argument("-c", "--cap", action="append")
        ex.add_argument("--no-new-privs", action="store_true")
        ex.add_argument("--apparmor")
        ex.add_argument("--process-label")
        ex.add_argument("--preserve-fds", type=int, default=0)
        ex.add_argument("--ignore-paused", action="store_true")
        ex.add_argument("--cgroup")
        ex.add_argument("id")
        ex.add_argument("command", nargs=argparse.REMAINDER)

    if want("update"):
        up = sub.add_parser("update", help="update a container's resource limits")
        up.add_argument("-r", "--resources", help="LinuxResources JSON file, or - for stdin")
        for flag in (
            "blkio-weight",
            "cpu-period",
            "cpu-quota",
            "cpu-share",
            "cpu-rt-period",
            "cpu-rt-runtime",
            "cpuset-cpus",
            "cpuset-mems",
            "memory",
            "memory-reservation",
            "memory-swap",
            "pids-limit",
            "kernel-memory",
            "kernel-memory-tcp",
            "l3-cache-schema",
            "mem-bw-schema",
        ):
            up.add_argument(f"--{flag}")
        up.add_argument("id")

    if want("events"):
        ev = sub.add_parser("events", help="stream stats and OOM events as JSON lines")
        ev.add_argument("--stats", action="store_true", help="print one stats event and exit")
        ev.add_argument("--interval", default="5s", help="stats interval (Go duration, e.g. 5s)")
        ev.add_argument("id")

    if want("features"):
        sub.add_parser("features", help="print the OCI features document")

    if want("spec"):
        spec = sub.add_parser("spec", help="write a default config.json")
        spec.add_argument("-b", "--bundle", default=".")
        spec.add_argument("--rootless", dest="rootless_spec", action="store_true")

    if want("env"):
        env = sub.add_parser("env", help="print the effective configuration")
        env.add_argument("--json", action="store_true", help="as JSON instead of TOML")

    if want("check"):
        sub.add_parser("check", help="check whether this host can run Cocoon, and how fast")

    if want("assets"):
        assets = sub.add_parser(
            "assets", help="build or list the guest kernel, initramfs and image"
        )
        asub = assets.add_subparsers(dest="assets_verb", metavar="ACTION", parser_class=_Parser)
        ab = asub.add_parser("build", help="build the guest assets (cached)")
        ab.add_argument("--force", action="store_true", help="rebuild even when cached")
        asub.add_parser("list", help="show built assets")

    if want("factory"):
        factory = sub.add_parser("factory", help="make, show or remove the VM templates")
        fsub = factory.add_subparsers(dest="factory_verb", metavar="ACTION", parser_class=_Parser)
        fsub.add_parser("init", help="make the default sandbox's template now")
        fsub.add_parser("status", help="list the templates and whether they are usable")
        fsub.add_parser("destroy", help="remove every template (running clones are unaffected)")

    if want("debug-console"):
        dbg = sub.add_parser(
            "debug-console",
            help="a root shell in a container's VM, outside the container "
            "([agent] debug_console)",
        )
        dbg.add_argument("id")

    if want("checkpoint") or want("restore") or want("migrate"):
        _add_checkpoint_verbs(sub, want)

    if want("_service"):
        svc = sub.add_parser("_service", help=argparse.SUPPRESS)
        svc.add_argument("--sandbox-dir", required=True)
        svc.add_argument("--ready-fd", type=int, required=True)
    return p
