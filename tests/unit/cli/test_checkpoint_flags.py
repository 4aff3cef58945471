"""runc's checkpoint/restore argv, as podman, docker and containerd pass it."""

from __future__ import annotations

import pytest

from cocoon.cli.parser import build_parser, guess_verb

PODMAN_CHECKPOINT = (
    "--root /run/r checkpoint --image-path /u/checkpoint --work-path /u "
    "--leave-running --leave-running --tcp-established --file-locks c1"
)
CONTAINERD_RESTORE = (
    "--root /run/r --log /b/log.json --log-format json restore --image-path /tmp/ctrd-ck1 "
    "--work-path /b/work --detach --pid-file /b/init.pid -no-subreaper --bundle /b c2"
)
PODMAN_RESTORE = (
    "restore --bundle /b --pid-file /b/pid --detach --image-path /b/checkpoint "
    "--work-path /b --console-socket /tmp/cs c3"
)


@pytest.mark.parametrize("line", [PODMAN_CHECKPOINT, CONTAINERD_RESTORE, PODMAN_RESTORE])
def test_engine_argv_parses(line: str) -> None:
    argv = line.split()
    args = build_parser(only=guess_verb(argv)).parse_args(argv)
    assert args.verb in ("checkpoint", "restore")
    assert args.image_path.startswith("/")


def test_restore_flags_land_where_create_reads_them() -> None:
    argv = CONTAINERD_RESTORE.split()
    args = build_parser(only="restore").parse_args(argv)
    assert (args.bundle, args.pid_file, args.detach, args.no_subreaper) == (
        "/b",
        "/b/init.pid",
        True,
        True,
    )
    args = build_parser(only="checkpoint").parse_args(PODMAN_CHECKPOINT.split())
    assert args.leave_running and args.tcp_established and args.id == "c1"


def test_help_exits_zero() -> None:
    """podman runs ``checkpoint --help`` before it checkpoints or restores."""
    for verb in ("checkpoint", "restore"):
        with pytest.raises(SystemExit) as done:
            build_parser(only=verb).parse_args([verb, "--help"])
        assert done.value.code == 0
