from __future__ import annotations

from pathlib import Path

import pytest

from cocoon.errors import InvalidArgument
from cocoon.storage.share import GUEST_SHARE, plan_container
from tests.fixtures.bundle import default_spec


def test_rootfs_bind_and_guest_paths(tmp_path: Path) -> None:
    spec = default_spec(["sh"])
    plan = plan_container("c1", spec, tmp_path, readonly=True)
    assert plan.binds[0].source == tmp_path and plan.binds[0].target == "c1/rootfs"
    assert plan.binds[0].readonly
    assert plan.guest_rootfs == f"{GUEST_SHARE}/c1/rootfs"
    # Guest-local filesystems pass through unchanged.
    assert plan.guest_spec["mounts"] == spec["mounts"]


def test_bind_mounts_are_shared_and_rewritten(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    spec = default_spec(["sh"])
    spec["mounts"] = [
        {
            "destination": "/etc/hosts",
            "type": "bind",
            "source": str(hosts),
            "options": ["rbind", "ro"],
        }
    ]
    plan = plan_container("c1", spec, tmp_path, readonly=False)
    bind = plan.binds[1]
    assert bind.source == hosts and bind.readonly and bind.propagate
    assert plan.guest_spec["mounts"][0]["source"] == f"{GUEST_SHARE}/c1/m0"
    assert spec["mounts"][0]["source"] == str(hosts)  # the caller's spec is untouched


def test_bad_bind_sources(tmp_path: Path) -> None:
    spec = default_spec(["sh"])
    spec["mounts"] = [{"destination": "/x", "type": "bind", "source": "relative"}]
    with pytest.raises(InvalidArgument, match="must be absolute"):
        plan_container("c", spec, tmp_path, False)
    spec["mounts"] = [{"destination": "/x", "type": "nfs", "source": "srv:/x"}]
    with pytest.raises(InvalidArgument, match="not supported"):
        plan_container("c", spec, tmp_path, False)


def test_host_namespace_paths_never_reach_the_guest(tmp_path: Path) -> None:
    spec = default_spec(["sh"])
    spec["linux"]["namespaces"] = [
        {"type": "pid"},
        {"type": "network", "path": "/var/run/netns/x"},
        {"type": "ipc", "path": "/proc/1/ns/ipc"},
    ]
    ns = plan_container("c", spec, tmp_path, False).guest_spec["linux"]["namespaces"]
    assert ns == [{"type": "pid"}, {"type": "ipc"}]


def test_containers_share_the_guest_network(tmp_path: Path) -> None:
    """A new network namespace too: the pod NICs live in the guest's own."""
    spec = default_spec(["sh"])
    spec["linux"]["namespaces"] = [{"type": "pid"}, {"type": "network"}]
    ns = plan_container("c", spec, tmp_path, False).guest_spec["linux"]["namespaces"]
    assert ns == [{"type": "pid"}]
