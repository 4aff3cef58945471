"""Which network namespace a sandbox carries, and the refusals (pure policy, no root)."""

from __future__ import annotations

from typing import Any

import pytest

from cocoon.errors import FailedPrecondition, InvalidArgument
from cocoon.network.netns import Choice, Inhabitant, check, choose, is_cocoon_cmdline


def spec(*namespaces: dict[str, str]) -> dict[str, Any]:
    return {"linux": {"namespaces": [{"type": "pid"}, *namespaces]}}


@pytest.mark.parametrize(
    ("s", "expected"),
    [
        (spec({"type": "network", "path": "/run/netns/pod1"}), Choice("path", "/run/netns/pod1")),
        (spec({"type": "network"}), Choice("new")),
        (spec(), Choice("host")),
        ({}, Choice("host")),
    ],
)
def test_choose(s: dict[str, Any], expected: Choice) -> None:
    assert choose(s) == expected


def test_relative_path_is_invalid() -> None:
    with pytest.raises(InvalidArgument, match="must be absolute"):
        choose(spec({"type": "network", "path": "netns/x"}))


def test_host_network_refused_with_why_and_what_instead() -> None:
    with pytest.raises(FailedPrecondition) as err:
        check(Choice("host"))
    msg = str(err.value)
    assert "host's network" in msg and "cannot share the host's network stack" in msg
    assert "--network none" in msg
    with pytest.raises(FailedPrecondition, match="/proc/1/ns/net is the host's"):
        check(Choice("path", "/proc/1/ns/net"), same_as_host=True)


def test_new_and_prepared_namespaces_pass() -> None:
    check(Choice("new"))
    check(Choice("path", "/run/netns/p"))
    check(Choice("path", "/run/netns/p"), inhabitants=(Inhabitant(7, "cocoon", True),))


def test_another_runtimes_container_is_not_stolen() -> None:
    with pytest.raises(FailedPrecondition, match=r"process 42, sleep.*not Cocoon's"):
        check(
            Choice("path", "/proc/42/ns/net"),
            inhabitants=(Inhabitant(7, "cocoon", True), Inhabitant(42, "sleep", False)),
        )


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["/opt/c/.venv/bin/python", "/opt/c/.venv/bin/cocoon", "create"], True),
        (["/usr/bin/python3", "-m", "cocoon.cli.main", "run"], True),
        (["/usr/local/bin/containerd-shim-cocoon-v2", "-namespace", "k8s.io"], True),
        (["/pause"], False),
        (["sleep", "1000"], False),
        ([], False),
    ],
)
def test_cocoon_processes(argv: list[str], expected: bool) -> None:
    assert is_cocoon_cmdline(argv) is expected
