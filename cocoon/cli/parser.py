"""The argument parser for ``cocoon``: runc's global options and verbs.

Only argparse lives here so that building the parser stays cheap; each verb's
code is imported lazily by :mod:`cocoon.cli.main` once the verb is known.
"""

from __future__ import annotations

import argparse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cocoon",
        description="Cocoon: run every container in its own lightweight VM (runc-compatible).",
    )
    p.add_argument("--root", help="state root (default /run/cocoon)")
    p.add_argument("--log", help="write log lines to this file instead of stderr")
    p.add_argument("--log-format", choices=["text", "json"], default="text")
    p.add_argument("--debug", action="store_true", help="log debug detail")
    p.add_argument("--assets-dir", help="guest asset cache (default /var/lib/cocoon/assets)")
    p.add_argument("--systemd-cgroup", action="store_true", help="not supported (no systemd)")
    p.add_argument("--rootless", default="false", help="accepted: false|auto")
    p.add_argument("-v", "--version", action="store_true", help="print the version")
    sub = p.add_subparsers(dest="verb", metavar="COMMAND")

    run = sub.add_parser("run", help="create and run a container in its own VM")
    run.add_argument("-b", "--bundle", default=".", help="bundle directory (default: cwd)")
    run.add_argument("-d", "--detach", action="store_true", help="do not wait for the container")
    run.add_argument("--pid-file", help="write the container's host-side PID here")
    run.add_argument("--console-socket", help="send the pty master to this AF_UNIX socket")
    run.add_argument("--no-pivot", action="store_true")
    run.add_argument("--no-new-keyring", action="store_true")
    run.add_argument("--preserve-fds", type=int, default=0)
    run.add_argument("id")

    state = sub.add_parser("state", help="print a container's state as JSON")
    state.add_argument("id")

    kill = sub.add_parser("kill", help="send a signal to a container's init process")
    kill.add_argument("-a", "--all", action="store_true")
    kill.add_argument("id")
    kill.add_argument("signal", nargs="?", default="SIGTERM")

    delete = sub.add_parser("delete", help="delete a container and its VM")
    delete.add_argument("-f", "--force", action="store_true")
    delete.add_argument("id")

    lst = sub.add_parser("list", help="list containers")
    lst.add_argument("-f", "--format", choices=["table", "json"], default="table")
    lst.add_argument("-q", "--quiet", action="store_true")

    sub.add_parser("check", help="check whether this host can run Cocoon, and how fast")

    assets = sub.add_parser("assets", help="build or list the guest kernel, initramfs and image")
    asub = assets.add_subparsers(dest="assets_verb", metavar="ACTION")
    ab = asub.add_parser("build", help="build the guest assets (cached)")
    ab.add_argument("--force", action="store_true", help="rebuild even when cached")
    asub.add_parser("list", help="show built assets")

    svc = sub.add_parser("_service", help=argparse.SUPPRESS)
    svc.add_argument("--sandbox-dir", required=True)
    svc.add_argument("--ready-fd", type=int, required=True)
    return p
