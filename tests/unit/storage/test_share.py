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
    assert plan.guest_spec["mounts"][0]["source"] == f"{GUEST_SHARE}/c1/0/hosts"
    assert spec["mounts"][0]["source"] == str(hosts)  # the caller's spec is untouched


def test_bad_bind_sources(tmp_path: Path) -> None:
    spec = default_spec(["sh"])
    spec["mounts"] = [{"destination": "/x", "type": "bind", "source": "relative"}]
    with pytest.raises(InvalidArgument, match="must be absolute"):
        plan_container("c", spec, tmp_path, False)
    spec["mounts"] = [{"destination": "/x", "type": "nfs", "source": "srv:/x"}]
    with pytest.raises(InvalidArgument, match="not supported"):
        plan_container("c", spec, tmp_path, False)


def test_host_namespace_paths_are_refused_pod_ones_joined(tmp_path: Path) -> None:
    spec = default_spec(["sh"])
    spec["linux"]["namespaces"] = [
        {"type": "pid", "path": "/proc/7/ns/pid"},
        {"type": "network", "path": "/var/run/netns/x"},
        {"type": "ipc", "path": "/proc/7/ns/ipc"},
    ]
    kinds = {"/proc/7/ns/pid": "pid", "/proc/7/ns/ipc": "ipc"}.__getitem__
    with pytest.raises(InvalidArgument, match="not Cocoon's"):
        plan_container("c", spec, tmp_path, False, nstype=kinds)
    plan = plan_container("c", spec, tmp_path, False, frozenset({7}), kinds)
    assert plan.guest_spec["linux"]["namespaces"] == []
    assert plan.pod_namespaces == ["pid", "ipc"]


def test_share_names_end_with_the_sources_name(tmp_path: Path) -> None:
    """The guest's mountinfo shows the share path: its last component is the source's."""
    vol = tmp_path / "my-volume"
    vol.mkdir()
    spec = default_spec(["sh"])
    spec["mounts"] = [
        {"destination": "/a", "type": "bind", "source": str(vol)},
        {"destination": "/b", "type": "bind", "source": str(vol) + "/"},
        {"destination": "/c", "type": "bind", "source": "/"},
        {"destination": "/d", "type": "bind", "source": str(vol) + "/.."},
    ]
    targets = [b.target for b in plan_container("c", spec, tmp_path, False).binds[1:]]
    assert targets == ["c/0/my-volume", "c/1/my-volume", "c/2/bind", "c/3/bind"]


def test_containers_share_the_guest_network(tmp_path: Path) -> None:
    """A new network namespace too: the pod NICs live in the guest's own."""
    spec = default_spec(["sh"])
    spec["linux"]["namespaces"] = [{"type": "pid"}, {"type": "network"}]
    ns = plan_container("c", spec, tmp_path, False).guest_spec["linux"]["namespaces"]
    assert ns == [{"type": "pid"}]


def test_remove_binds_unmounts_the_named_binds_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cocoon.storage import share

    unmounted: list[str] = []
    monkeypatch.setattr(share.mounts, "umount", lambda p: unmounted.append(p))
    shared = share.SharedDir(tmp_path)
    base = shared.mounts_dir / "c"
    (base / "rootfs").mkdir(parents=True)
    (base / "0" / "my-volume").mkdir(parents=True)
    (base / "1").mkdir()
    (base / "1" / "hosts").touch()
    shared.remove_binds("c")
    rel = [str(Path(p).relative_to(base)) for p in unmounted]
    assert rel.index("0/my-volume") < rel.index("0") and rel.index("1/hosts") < rel.index("1")
    assert "rootfs" in rel and not base.exists()


def test_named_bind_dirs_are_traversable_for_a_mapped_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``<cid>/<i>/`` is Cocoon's own directory: 0711 whatever the umask, like ``<cid>/``."""
    import os
    import stat

    from cocoon.storage import share

    # Stand in for the host-namespace clone: real mounts have no place in a unit test.
    monkeypatch.setattr(
        share.hostmount,
        "clone_trees",
        lambda reqs: [os.open(r.path, os.O_RDONLY | os.O_DIRECTORY) for r in reqs],
    )
    monkeypatch.setattr(share.hostmount, "set_attrs", lambda *a, **k: None)
    monkeypatch.setattr(share.hostmount, "attach", lambda *a, **k: None)
    vol = tmp_path / "vol"
    vol.mkdir()
    shared = share.SharedDir(tmp_path)
    shared.mounts_dir.mkdir()
    old = os.umask(0o077)
    try:
        shared.apply_binds([share.Bind(vol, "c/0/vol", False)])
    finally:
        os.umask(old)
    for d in (shared.mounts_dir / "c", shared.mounts_dir / "c" / "0"):
        assert stat.S_IMODE(d.stat().st_mode) == share.COCOON_DIR_MODE, d


def test_block_mode_takes_small_file_binds_by_value(tmp_path: Path) -> None:
    """podman's /etc/hosts etc. are copied into the guest; directories and large
    files stay shared (and then block a checkpoint, which says so)."""
    from cocoon.storage.share import GUEST_FILES, SharedDir

    hosts, big, vol = tmp_path / "hosts", tmp_path / "big", tmp_path / "vol"
    hosts.write_text("127.0.0.1 localhost\n")
    hosts.chmod(0o644)
    big.write_bytes(b"x" * (2 << 20))
    vol.mkdir()
    spec = default_spec(["sh"])
    spec["mounts"] = [
        {"destination": d, "type": "bind", "source": str(s), "options": ["rbind", "ro"]}
        for d, s in (("/etc/hosts", hosts), ("/big", big), ("/vol", vol))
    ]
    plan = plan_container("c1", spec, tmp_path, readonly=False)
    kept, files, guest = SharedDir.copy_files(plan.binds[1:], plan.guest_spec, frozenset())
    assert [b.source for b in kept] == [big, vol]
    assert files == [(f"{GUEST_FILES}/c1/0/hosts", b"127.0.0.1 localhost\n", 0o644)]
    by_dest = {m["destination"]: m["source"] for m in guest["mounts"]}
    assert by_dest["/etc/hosts"] == f"{GUEST_FILES}/c1/0/hosts"
    assert by_dest["/vol"] == f"{GUEST_SHARE}/c1/2/vol"
    assert plan.guest_spec["mounts"][0]["source"] == f"{GUEST_SHARE}/c1/0/hosts"  # unchanged
