"""Classifying bind sources by the kubelet's path shapes; the emptyDir plan."""

from __future__ import annotations

from pathlib import Path

import pytest

from cocoon.errors import InvalidArgument
from cocoon.guest import volumes as guest_volumes
from cocoon.storage import volumes
from cocoon.storage.share import plan_container
from cocoon.wire import agent as w

POD = "/var/lib/kubelet/pods/0d2c6e1e"


def test_plain_sources_are_opened_as_runc_opens_them() -> None:
    for p in ("/srv/data", "/var/lib/kubelet/pods", f"{POD}/etc-hosts", "/a/../b", "/a//b"):
        assert volumes.classify(p).kind == "plain", p


def test_the_emptydir_itself_goes_to_the_guest() -> None:
    s = volumes.classify(f"{POD}/volumes/kubernetes.io~empty-dir/cache")
    assert (s.kind, s.volume, s.beneath) == ("emptydir", "cache", "")


def test_a_path_below_a_volume_is_resolved_beneath_its_root() -> None:
    s = volumes.classify(f"{POD}/volumes/kubernetes.io~configmap/cfg/sub/key")
    assert s.kind == "volume"
    assert s.beneath == f"{POD}/volumes/kubernetes.io~configmap/cfg"
    assert s.rest == "sub/key"
    s = volumes.classify(f"{POD}/volumes/kubernetes.io~empty-dir/cache/sub")
    assert (s.kind, s.rest) == ("volume", "sub")  # below an emptyDir: a host bind


def test_a_volume_root_is_plain_and_subpaths_resolve_beneath_volume_subpaths() -> None:
    assert volumes.classify(f"{POD}/volumes/kubernetes.io~configmap/cfg").kind == "plain"
    s = volumes.classify(f"{POD}/volume-subpaths/cfg/app/0")
    assert (s.kind, s.beneath, s.rest) == ("subpath", f"{POD}/volume-subpaths", "cfg/app/0")


def test_guest_emptydir_is_per_source_and_one_component() -> None:
    a = volumes.guest_emptydir(f"{POD}/volumes/kubernetes.io~empty-dir/x", "x")
    b = volumes.guest_emptydir("/var/lib/kubelet/pods/other/volumes/kubernetes.io~empty-dir/x", "x")
    assert a != b and a.startswith(volumes.GUEST_EMPTYDIR_ROOT + "/") and a.endswith("-x")
    assert "/" not in a[len(volumes.GUEST_EMPTYDIR_ROOT) + 1 :]


@pytest.mark.parametrize(
    ("text", "size"), [("1048576", 1 << 20), ("64Mi", 64 << 20), ("1G", 10**9), ("2ki", 2048)]
)
def test_sizes(text: str, size: int) -> None:
    assert volumes.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "0", "-1", "1.5Gi", "1Ti", "Mi"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError):
        volumes.parse_size(text)


def _spec(mounts: list[dict[str, object]], annotations: dict[str, str] | None = None) -> dict:
    return {"mounts": mounts, "annotations": annotations or {}, "linux": {}}


def test_plan_keeps_emptydirs_in_the_guest_and_subpaths_beneath() -> None:
    ed = f"{POD}/volumes/kubernetes.io~empty-dir/cache"
    cm = f"{POD}/volumes/kubernetes.io~configmap/cfg/key"
    spec = _spec(
        [
            {"destination": "/cache", "type": "bind", "source": ed, "options": ["rbind"]},
            {"destination": "/again", "type": "bind", "source": ed, "options": ["rbind", "ro"]},
            {"destination": "/key", "type": "bind", "source": cm, "options": ["rbind", "ro"]},
        ],
        {"emptydir.cocoon.io/cache": "64Mi"},
    )
    plan = plan_container("c", spec, Path("/r"), False)
    guest = volumes.guest_emptydir(ed, "cache")
    assert [e.guest_path for e in plan.emptydirs] == [guest]
    assert plan.emptydirs[0].size == 64 << 20
    srcs = [m["source"] for m in plan.guest_spec["mounts"]]
    assert srcs[:2] == [guest, guest]
    assert [str(b.source) for b in plan.binds[1:]] == [cm]  # the emptyDir never crosses
    assert (plan.binds[1].beneath, plan.binds[1].rest) == (cm.rsplit("/", 1)[0], "key")
    assert plan.guest_spec["mounts"][1]["options"] == ["rbind", "ro"]


def test_a_bad_emptydir_size_is_named() -> None:
    ed = f"{POD}/volumes/kubernetes.io~empty-dir/cache"
    spec = _spec(
        [{"destination": "/c", "type": "bind", "source": ed, "options": ["rbind"]}],
        {"emptydir.cocoon.io/cache": "lots"},
    )
    with pytest.raises(InvalidArgument, match="emptydir.cocoon.io/cache"):
        plan_container("c", spec, Path("/r"), False)


def test_guest_tmpfs_options_and_bad_paths() -> None:
    v = w.GuestVolume(f"{guest_volumes.ROOT}/ab-x", 1 << 20, "memory")
    assert guest_volumes.tmpfs_options(v) == ("emptydir-memory", "mode=0777,size=1048576")
    assert guest_volumes.tmpfs_options(w.GuestVolume(f"{guest_volumes.ROOT}/y"))[1] == "mode=0777"
    for bad in (
        "/etc",
        f"{guest_volumes.ROOT}/a/b",
        f"{guest_volumes.ROOT}/..",
        guest_volumes.ROOT,
    ):
        with pytest.raises(ValueError):
            guest_volumes.tmpfs_options(w.GuestVolume(bad))
    assert guest_volumes.ROOT == volumes.GUEST_EMPTYDIR_ROOT


def test_a_source_below_a_volume_never_leaves_it(tmp_path: Path) -> None:
    """openat2(RESOLVE_BENEATH) on the host: links inside the volume work, out of it fail."""
    import os

    from cocoon.storage import hostmount

    root = tmp_path / "vol"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "out").mkdir()
    os.symlink("sub", root / "inside")
    os.symlink("../out", root / "rel")
    os.symlink(str(tmp_path / "out"), root / "abs")
    os.symlink("/proc/self/root", root / "magic")
    trees = hostmount.clone_trees(
        [hostmount.TreeRequest(str(root / "inside"), False, str(root), "inside")]
    )
    hostmount.close_all(trees)
    for name in ("rel", "abs", "magic"):
        req = hostmount.TreeRequest(str(root / name), False, str(root), name)
        with pytest.raises(InvalidArgument, match="leads out of its volume"):
            hostmount.clone_trees([req])
    with pytest.raises(InvalidArgument, match="does not exist"):
        hostmount.clone_trees([hostmount.TreeRequest(str(root / "no"), False, str(root), "no")])


def test_the_emptydir_a_subpath_may_be_of() -> None:
    assert volumes.emptydir_of_subpath(f"{POD}/volume-subpaths/cache/app/0") == (
        f"{POD}/volumes/kubernetes.io~empty-dir/cache",
        "cache",
    )
    for p in (f"{POD}/volume-subpaths/cache/app", f"{POD}/volumes/kubernetes.io~empty-dir/c", "/x"):
        assert volumes.emptydir_of_subpath(p) is None, p


def test_find_dir_by_inode_never_follows_symlinks(tmp_path: Path) -> None:
    import os

    from cocoon.storage.share import _find_dir

    (tmp_path / "ed" / "a" / "b").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    os.symlink(str(tmp_path / "other"), tmp_path / "ed" / "link")
    root = os.open(tmp_path / "ed", os.O_PATH | os.O_DIRECTORY)
    try:
        assert _find_dir(root, os.stat(tmp_path / "ed" / "a" / "b")) == "a/b"
        assert _find_dir(root, os.stat(tmp_path / "other")) is None
        assert _find_dir(root, os.stat(tmp_path / "ed" / "a" / "b"), depth=1) is None
    finally:
        os.close(root)


def test_guest_subpath_dirs_are_relative_and_normal() -> None:
    assert guest_volumes.subdir_parts("a/b") == ["a", "b"]
    for bad in ("", "/a", "a/../b", "a//b", "."):
        with pytest.raises(ValueError):
            guest_volumes.subdir_parts(bad)
