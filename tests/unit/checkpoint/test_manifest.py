"""The checkpoint manifest: what can be saved, what a host can restore, what is missing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cocoon.checkpoint import manifest as mf
from cocoon.errors import InvalidArgument

SETTINGS = {"shared_fs": "9p", "machine": "pc", "rootfs_mode": "block"}
OK = {"id": "c1", "status": "running", "rootfs_block": True, "host_binds": [], "host_devices": []}


@pytest.mark.parametrize(
    ("settings", "row", "says"),
    [
        (SETTINGS, OK, ""),
        (SETTINGS, {**OK, "status": "paused"}, ""),
        ({**SETTINGS, "shared_fs": "virtiofs"}, OK, "virtio-fs"),
        ({**SETTINGS, "machine": "microvm"}, OK, "machine type microvm"),
        (SETTINGS, {**OK, "status": "created"}, "is created"),
        (SETTINGS, {**OK, "host_binds": ["/srv/data"]}, "host directory /srv/data"),
        (SETTINGS, {**OK, "rootfs_block": False}, "rootfs_mode = block"),
        (SETTINGS, {**OK, "host_devices": ["hostblk0"]}, "host block devices"),
    ],
)
def test_refusal_names_the_first_obstacle(
    settings: dict[str, str], row: dict[str, object], says: str
) -> None:
    why = mf.refusal(settings, [row], "c1")
    assert (why == "") if not says else (says in why), why


HOME = {**OK, "id": "a", "role": "home"}
MEMBER = {**OK, "id": "m", "role": "member"}


@pytest.mark.parametrize(
    ("rows", "asked", "pods", "says"),
    [
        # A CLI pod (a home and the members that joined its VM) is saved whole, through
        # its home; a member alone names the home to checkpoint instead.
        ([HOME, MEMBER], "a", True, ""),
        ([HOME, MEMBER, {**MEMBER, "id": "n"}], "a", True, ""),
        ([HOME, MEMBER], "m", True, "not by member (checkpoint 'a')"),
        ([MEMBER], "m", True, "whose own container was deleted"),
        ([MEMBER, {**MEMBER, "id": "n"}], "", True, "checkpointed whole through it"),
        # Every container of the pod must be savable: the first obstacle is named.
        ([HOME, {**MEMBER, "status": "stopped"}], "a", True, "container 'm' is stopped"),
        ([HOME, {**MEMBER, "host_binds": ["/v"]}], "a", True, "container 'm' mounts host"),
        # Not migrated live.
        ([HOME, MEMBER], "a", False, "cannot be migrated live"),
        ([HOME], "a", False, ""),
        # Several containers that did not join (a shim's CRI pod): refused as before.
        ([HOME, {**HOME, "id": "b"}], "a", True, "a pod is checkpointed whole"),
        ([HOME, {**HOME, "id": "b", "status": "stopped"}], "a", True, "is stopped"),
    ],
)
def test_refusal_of_pods(rows: list[dict[str, object]], asked: str, pods: bool, says: str) -> None:
    why = mf.refusal(SETTINGS, rows, asked, pods)
    assert (why == "") if not says else (says in why), why
    assert "\n" not in why


@pytest.mark.parametrize(
    ("cid", "bundle", "joins", "picked"),
    [
        ("m", "/other", False, "m"),  # by ID
        ("m2", "/bm", False, "m"),  # renamed, by its bundle
        ("m2", "/other", True, ""),  # two await: ambiguous
        ("x", "/other", False, ""),  # not a member: a sandbox of its own
    ],
)
def test_pick_member(cid: str, bundle: str, joins: bool, picked: str) -> None:
    awaiting = [{"id": "m", "bundle": "/bm"}, {"id": "n", "bundle": "/bn"}]
    assert mf.pick_member(awaiting, cid, bundle, joins) == picked
    # The only one left: a spec that joins namespaces is that member under a new ID.
    assert mf.pick_member(awaiting[:1], "m3", "/other", True) == "m"
    assert mf.pick_member(awaiting[:1], "m3", "/other", False) == ""


def test_a_manifest_holds_one_home_and_its_members() -> None:
    m = _manifest()
    m.containers.append(dataclasses.replace(m.containers[0], id="m", role="member", joins="c1"))
    assert mf.invalid(m) == ""
    back = mf.parse(dataclasses.asdict(m), "x")
    assert [(c.id, c.role, c.joins) for c in back.containers] == [
        ("c1", "home", ""),
        ("m", "member", "c1"),
    ]
    m.containers[1].role = "home"
    assert "one home" in mf.invalid(m)
    m.containers[1].role = "guest"
    assert "one home" in mf.invalid(m)


def _manifest() -> mf.Manifest:
    disk = mf.DiskImage("rootscr0", "cocoon-s0", "0.scratch.gz", False, "0x6")
    img = mf.DiskImage("rootimg0", "cocoon-r0", "0.erofs.gz", True, "0x5")
    return mf.Manifest(
        format=mf.FORMAT,
        created="now",
        cocoon_version="0",
        qemu_version="7.2.22 Debian x",
        accel="tcg",
        assets_key="ab" * 32,
        cpu="qemu64,+pdpe1gb",
        machine="pc",
        settings=SETTINGS,
        boot_vcpus=1,
        boot_memory_mib=256,
        memory_object=True,
        dimms=[("dimm0", 128 << 20, 1 << 32)],
        nics=[mf.NicImage("net0", "nic0", "02:00:00:00:00:01", "0x7")],
        containers=[mf.ContainerImage("c1", "/b", "running", False, image=img, scratch=disk)],
    )


def test_save_load_round_trip_and_missing_files(tmp_path: Path) -> None:
    m = _manifest()
    mf.save(tmp_path, m)
    with pytest.raises(InvalidArgument, match="vm.state.gz is missing"):
        mf.load(tmp_path)
    (tmp_path / mf.STATE).write_bytes(b"")
    (tmp_path / "disks").mkdir()
    (tmp_path / "disks" / "0.erofs.gz").write_bytes(b"")
    with pytest.raises(InvalidArgument, match="disks/0.scratch.gz is missing"):
        mf.load(tmp_path)
    (tmp_path / "disks" / "0.scratch.gz").write_bytes(b"")
    back = mf.load(tmp_path)
    assert dataclasses.asdict(back) == dataclasses.asdict(m)
    assert back.containers[0].scratch == m.containers[0].scratch


def test_load_refuses_what_is_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="no manifest.json"):
        mf.load(tmp_path)
    (tmp_path / mf.MANIFEST).write_text('{"format": 99}')
    with pytest.raises(InvalidArgument, match="format 99"):
        mf.load(tmp_path)
    (tmp_path / mf.MANIFEST).write_text('{"format": 1, "containers": 3}')
    with pytest.raises(InvalidArgument, match="malformed"):
        mf.load(tmp_path)


def test_mismatch_names_what_differs() -> None:
    m = _manifest()
    host = mf.Host("7.2.22 Debian x", "tcg", "ab" * 32, "qemu64,+pdpe1gb", "pc")
    assert mf.mismatch(m, host) == ""
    for field, value, says in (
        ("qemu_version", "8.2.0", "QEMU"),
        ("accel", "kvm", "accelerator"),
        ("assets_key", "cd" * 32, "guest assets"),
        ("cpu", "qemu64", "CPU model"),
    ):
        why = mf.mismatch(m, dataclasses.replace(host, **{field: value}))
        assert says in why and "this host has" in why, why


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda m: setattr(m.containers[0].scratch, "file", "../../etc/shadow"), "disk"),
        (lambda m: setattr(m.containers[0].image, "node", "x,driver=file"), "disk"),
        (lambda m: setattr(m.containers[0].image, "addr", "0x5,bus=evil"), "address"),
        (lambda m: setattr(m.nics[0], "mac", "02:00:00:00:00:01,romfile=/x"), "MAC"),
        (lambda m: setattr(m.containers[0], "id", "../x"), "invalid"),
        (
            lambda m: m.cpus.append({"driver": "qemu64-x86_64-cpu", "id": "cpu-0-1-0", "x": "y"}),
            "vCPU",
        ),
        (lambda m: m.dimms.append(("dimm1;", 1, 2)), "DIMM"),
        (lambda m: setattr(m, "boot_memory_mib", 0), "size"),
    ],
)
def test_a_forged_manifest_is_refused(tmp_path: Path, change: object, says: str) -> None:
    """The image dir is the user's input: nothing in it may name a host file or reach
    QMP as anything but a value."""
    m = _manifest()
    assert mf.invalid(m) == ""
    assert callable(change)
    change(m)
    assert says in mf.invalid(m)
    mf.save(tmp_path, m)
    with pytest.raises(InvalidArgument):
        mf.load(tmp_path)


def test_a_restore_keeps_this_hosts_binaries() -> None:
    saved = {
        "qemu": "/tmp/evil",
        "virtiofsd": "/tmp/evil2",
        "memory_mib": 512,
        "template_dir": "/x",
    }
    local = {"qemu": "/usr/bin/qemu-system-x86_64", "virtiofsd": "/usr/lib/qemu/virtiofsd",
             "memory_mib": 256, "template_dir": "/var/lib/cocoon/templates"}  # fmt: skip
    out = mf.restored_settings(saved, local)
    assert out["qemu"] == local["qemu"] and out["virtiofsd"] == local["virtiofsd"]
    assert out["template_dir"] == local["template_dir"]
    assert out["memory_mib"] == 512  # the VM's shape is the checkpoint's
