"""Pieces the verbs share: resolving a container's paths, creating a sandbox."""

from __future__ import annotations

import argparse
import datetime
import signal as _signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from cocoon.cli.output import Reporter
from cocoon.errors import AlreadyExists, InvalidArgument
from cocoon.oci.ids import validate_id
from cocoon.service.persist import SandboxPaths

if TYPE_CHECKING:
    from cocoon.config.schema import Config


def paths_for(args: argparse.Namespace, cid: str) -> SandboxPaths:
    """The container's paths; a member of another container's sandbox talks to that
    sandbox's service (cocoon.service.membership). Raises NotFound for a container
    deleted while its sandbox lives on for others."""
    import json

    from cocoon.config.paths import runtime_root

    paths = SandboxPaths(runtime_root(args.root), validate_id(cid))
    try:
        raw = json.loads(paths.state.read_bytes())
    except (OSError, ValueError):
        return paths  # none yet (create), or unreadable: the verb says so
    if not isinstance(raw, dict):
        return paths
    if raw.get("deleted"):
        from cocoon.errors import NotFound

        raise NotFound(f"container {cid!r} does not exist")
    home = raw.get("sandbox")
    if isinstance(home, str) and home and home != cid:
        return SandboxPaths(paths.root, paths.id, home=validate_id(home))
    return paths


def check_pid_file(path: str | None) -> None:
    """Refuse a --pid-file that cannot be written, before anything is created."""
    if not path:
        return
    parent = Path(path).absolute().parent
    if not parent.is_dir():
        raise InvalidArgument(f"--pid-file {path}: {parent} is not a directory")


def parse_signal(value: str) -> int:
    """A signal by number or name (``9``, ``KILL``, ``SIGKILL``); raises InvalidArgument."""
    if value.isdigit():
        num = int(value)
        if 0 < num < 65:
            return num
        raise InvalidArgument(f"invalid signal number {value}")
    name = value.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(_signal.Signals[name])
    except KeyError:
        raise InvalidArgument(f"unknown signal {value!r}") from None


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")


def effective_config(args: argparse.Namespace) -> Config:
    from cocoon.service.prepare import effective_config as _effective

    return _effective(args)


def prepare_sandbox(
    args: argparse.Namespace, reporter: Reporter, check_terminal: Callable[[bool], None]
) -> tuple[SandboxPaths, Path]:
    """The sandbox's state dir and state.json (cocoon.service.prepare, shared with the shim)."""
    from cocoon.service.prepare import prepare_sandbox as _prepare

    return _prepare(args, reporter, check_terminal)


__all__ = ["AlreadyExists", "now_rfc3339", "parse_signal", "paths_for", "prepare_sandbox"]
