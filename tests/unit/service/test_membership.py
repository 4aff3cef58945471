"""Which sandbox a spec's namespace paths name, and what a delete does to it (pure)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cocoon.errors import InvalidArgument
from cocoon.service import membership as m
from cocoon.service import persist

POD = m.PodView("infra", {100: "infra", 200: "web"}, (1, 77))
OTHER = m.PodView("solo", {300: "solo"}, (1, 88))


def spec(*entries: dict[str, str]) -> dict[str, Any]:
    return {"linux": {"namespaces": [{"type": "mount"}, *entries]}}


def ns_id(path: str) -> tuple[int, int] | None:
    return {"/run/netns/pod": (1, 77), "/run/netns/runc": (1, 99)}.get(path)


def test_podman_pod_member_names_the_infra_stub() -> None:
    s = spec(
        {"type": "network", "path": "/proc/100/ns/net"},
        {"type": "ipc", "path": "/proc/100/ns/ipc"},
        {"type": "uts", "path": "/proc/100/ns/uts"},
    )
    assert m.match(s, [OTHER, POD], ns_id) == m.Match("infra", "/proc/100/ns/net")


def test_a_member_stub_and_the_netns_file_name_the_pod_too() -> None:
    assert m.match(spec({"type": "network", "path": "/proc/200/ns/net"}), [POD], ns_id)
    found = m.match(spec({"type": "network", "path": "/run/netns/pod"}), [POD], ns_id)
    assert found is not None and found.home == "infra"


def test_no_match_for_new_namespaces_or_other_processes() -> None:
    assert m.match(spec({"type": "network"}), [POD], ns_id) is None
    assert m.match(spec({"type": "network", "path": "/run/netns/runc"}), [POD], ns_id) is None
    assert m.match(spec({"type": "ipc", "path": "/proc/999/ns/ipc"}), [POD], ns_id) is None
    # an ipc path is matched by the stub's PID only (stubs share the host's IPC)
    assert m.match(spec({"type": "ipc", "path": "/run/netns/pod"}), [POD], ns_id) is None


def test_two_sandboxes_in_one_spec_are_refused() -> None:
    s = spec(
        {"type": "network", "path": "/proc/100/ns/net"},
        {"type": "pid", "path": "/proc/300/ns/pid"},
    )
    with pytest.raises(InvalidArgument, match="two Cocoon sandboxes"):
        m.match(s, [POD, OTHER], ns_id)


def test_join_plan_targets_the_named_container() -> None:
    stubs = {100: "infra", 200: "web"}
    net_only = m.join_plan(spec({"type": "network", "path": "/proc/200/ns/net"}), stubs)
    assert net_only == m.JoinPlan(frozenset({100, 200}), "", False)
    shared = m.join_plan(
        spec({"type": "ipc", "path": "/proc/200/ns/ipc"}, {"type": "network"}), stubs
    )
    assert shared.target == "web" and shared.new_network
    with pytest.raises(InvalidArgument, match="two containers"):
        m.join_plan(
            spec(
                {"type": "ipc", "path": "/proc/100/ns/ipc"},
                {"type": "pid", "path": "/proc/200/ns/pid"},
            ),
            stubs,
        )


def test_without_pod_paths_keeps_other_paths_and_refuses_another_network() -> None:
    s = spec(
        {"type": "network", "path": "/run/netns/pod"},
        {"type": "ipc", "path": "/proc/100/ns/ipc"},
        {"type": "pid", "path": "/proc/999/ns/pid"},
    )
    out = m.without_pod_paths(s, POD, ns_id)["linux"]["namespaces"]
    assert out == [{"type": "mount"}, {"type": "pid", "path": "/proc/999/ns/pid"}]
    bad = spec(
        {"type": "network", "path": "/run/netns/runc"}, {"type": "ipc", "path": "/proc/100/ns/ipc"}
    )
    with pytest.raises(InvalidArgument, match="a VM has one network"):
        m.without_pod_paths(bad, POD, ns_id)


@pytest.mark.parametrize(
    ("cid", "home_deleted", "members", "want"),
    [
        ("a", False, [], m.DeletePlan("a", mark_deleted=False, last=True)),  # alone
        ("a", False, ["j"], m.DeletePlan("a", mark_deleted=True, last=False)),  # owner first
        ("j", False, ["j"], m.DeletePlan("a", mark_deleted=False, last=False)),  # member first
        ("j", True, ["j"], m.DeletePlan("a", mark_deleted=False, last=True)),  # last member
        ("j", True, ["j", "k"], m.DeletePlan("a", mark_deleted=False, last=False)),
    ],
)
def test_delete_plan(cid: str, home_deleted: bool, members: list[str], want: m.DeletePlan) -> None:
    assert m.delete_plan(cid, "a", home_deleted, members) == want


def test_pods_in_a_root(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    # A live "stub": a process whose command line is Cocoon's (argv[0] named cocoon).
    link = tmp_path / ".bin" / "cocoon"
    link.parent.mkdir()
    link.symlink_to(sys.executable)
    stub = subprocess.Popen([str(link), "-c", "import time; time.sleep(60)"])
    fake = subprocess.Popen(["sleep", "60"])
    try:
        for cid, extra in {
            "home": {"service_pid": os.getpid(), "stub_pid": stub.pid, "netns_id": [1, 2]},
            "member": {"sandbox": "home", "stub_pid": fake.pid},
            "dead": {"service_pid": 0},
        }.items():
            paths = persist.SandboxPaths(tmp_path, cid)
            paths.dir.mkdir()
            persist.save(paths, persist.SandboxState(cid, "/b", "now", **extra))  # type: ignore[arg-type]
        pods = m.pods_in(tmp_path)
        # the member's "stub" is not Cocoon's (a reused PID): it does not count
        assert pods == [m.PodView("home", {stub.pid: "home"}, (1, 2))]
        assert m.members_of(tmp_path, "home") == ["member"]
    finally:
        for p in (stub, fake):
            p.kill()
            p.wait()


def test_a_members_paths_are_its_own_state_and_its_sandboxs_sockets(tmp_path: Path) -> None:
    import argparse

    from cocoon.cli.common import paths_for
    from cocoon.errors import NotFound

    for cid, extra in {"home": {}, "j": {"sandbox": "home"}, "gone": {"deleted": True}}.items():
        p = persist.SandboxPaths(tmp_path, cid)
        p.dir.mkdir()
        persist.save(p, persist.SandboxState(cid, "/b", "now", **extra))  # type: ignore[arg-type]
    args = argparse.Namespace(root=str(tmp_path))
    j = paths_for(args, "j")
    assert j.is_member and j.dir == tmp_path / "j" and j.state == tmp_path / "j/state.json"
    assert j.service_sock == tmp_path / "home/service.sock"
    assert j.stdio_sock == paths_for(args, "home").stdio_sock
    j.remove_sock_dir()  # never the sandbox's
    with pytest.raises(NotFound, match="'gone' does not exist"):
        paths_for(args, "gone")


def test_deep_members_share_their_sandboxs_short_socket_dir(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60)
    home = persist.SandboxPaths(deep, "h" * 64)
    member = persist.SandboxPaths(deep, "m" * 64, home="h" * 64)
    assert home.sock_dir != home.dir and member.sock_dir == home.sock_dir


def test_a_member_whose_sandbox_is_gone_is_deleted_alone(tmp_path: Path) -> None:
    """After a crash cleanup removed its sandbox's home, a member's delete still works."""
    from cocoon.cli.join import delete_member_or_home
    from cocoon.cli.output import Reporter

    paths = persist.SandboxPaths(tmp_path, "j", home="home")
    paths.dir.mkdir()
    st = persist.SandboxState("j", "/b", "now", sandbox="home")
    persist.save(paths, st)
    assert delete_member_or_home(paths, st, True, Reporter(None, "text", False)) == []
    assert not paths.dir.exists() and not (tmp_path / ".locks").exists()
