"""Entry point of the ``cocoon`` command.

Start-up is on every engine's hot path (podman and containerd call a runtime
for each verb), so this module imports only argparse and the verb that runs.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib import import_module

from cocoon.cli.output import Reporter

_VERBS = {
    "create": "cocoon.cli.create",
    "start": "cocoon.cli.create",
    "run": "cocoon.cli.create",
    "exec": "cocoon.cli.execute",
    "state": "cocoon.cli.lifecycle",
    "kill": "cocoon.cli.lifecycle",
    "delete": "cocoon.cli.lifecycle",
    "list": "cocoon.cli.lifecycle",
    "pause": "cocoon.cli.lifecycle",
    "resume": "cocoon.cli.lifecycle",
    "ps": "cocoon.cli.lifecycle",
    "update": "cocoon.cli.lifecycle",
    "events": "cocoon.cli.events",
    "features": "cocoon.cli.info",
    "spec": "cocoon.cli.info",
    "check": "cocoon.cli.check",
    "env": "cocoon.cli.info",
    "assets": "cocoon.cli.assets",
    "factory": "cocoon.cli.factory",
    "debug-console": "cocoon.cli.debugconsole",
    "checkpoint": "cocoon.cli.checkpoint",
    "restore": "cocoon.cli.checkpoint",
    "migrate": "cocoon.cli.checkpoint",
    "_service": "cocoon.service.daemon",
}

_OWN_ENTRY = {"create", "start", "run"}

VERSION_TEXT = """cocoon version {version}
commit: none
spec: 1.1.0"""


def main(argv: Sequence[str] | None = None) -> int:
    from cocoon.cli.parser import build_parser, guess_verb

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(only=guess_verb(argv))
    args = parser.parse_args(argv)
    reporter = Reporter(args.log, args.log_format, args.debug)
    if args.version:
        from cocoon import __version__

        print(VERSION_TEXT.format(version=__version__))
        return 0
    if not args.verb:
        parser.print_help()
        return 1
    from cocoon.errors import CocoonError

    try:
        from cocoon.errors import InvalidArgument

        if args.systemd_cgroup:
            raise InvalidArgument("--systemd-cgroup is not supported: Cocoon uses cgroupfs")
        if args.rootless == "true":
            raise InvalidArgument("--rootless true is not supported: Cocoon runs as root")
        module = import_module(_VERBS[args.verb])
        entry = getattr(module, args.verb) if args.verb in _OWN_ENTRY else module.run
        rc: int = entry(args, reporter)
        return rc
    except CocoonError as exc:
        reporter.error(str(exc), exc)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
