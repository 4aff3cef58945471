"""The block-device rootfs (rootfs_mode = block), host block devices, privileged specs."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.e2e.conftest import Env

BLOCK = {"COCOON_ROOTFS_MODE": "block"}
# A few of the capabilities only a privileged spec has, and more.
PRIVILEGED_CAPS = (
    "SYS_ADMIN SYS_MODULE SYS_RAWIO SYS_BOOT CHOWN DAC_OVERRIDE FOWNER MKNOD SETUID SETGID"
).split()


def _tree(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under ``root`` with its mode, size and mtime (not following symlinks)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def test_block_rootfs_takes_the_writes_off_the_host(env: Env) -> None:
    b = env.bundle(["/bin/sleep", "1000"])
    spec = json.loads((b / "config.json").read_text())
    spec["root"]["readonly"] = False
    (b / "config.json").write_text(json.dumps(spec))
    before = _tree(b / "rootfs")
    # The detached stub keeps its stdio: not a pipe the test waits on.
    r = env.run("run", "--detach", "--bundle", str(b), "cb", env=BLOCK, capture=False)
    assert r.returncode == 0, (env.work / "out.log").read_text()
    try:
        script = (
            "dd if=/dev/zero of=/big bs=1M count=100 2>/dev/null && ls -l /big && "
            "echo changed > /etc/hostname.x && grep ' / ' /proc/mounts"
        )
        r = env.run("exec", "cb", "/bin/sh", "-c", script)
        assert r.returncode == 0, r.stderr.decode()
        out = r.stdout.decode()
        assert " 104857600 " in out, out
        assert out.splitlines()[-1].startswith("overlay / overlay "), out
        disks = env.root / "cb" / "disks"
        assert sorted(p.name for p in disks.iterdir()) == ["0.erofs", "0.scratch"]
        # The writes are in the guest's scratch fs, not the bundle's rootfs.
        assert _tree(b / "rootfs") == before
        assert not (b / "rootfs" / "big").exists()
        # What the host's scratch file holds is sparse beyond the guest's writes.
        assert (disks / "0.scratch").stat().st_blocks * 512 < 1 << 30
    finally:
        r = env.run("delete", "--force", "cb")
    assert r.returncode == 0, r.stderr.decode()
    assert not (env.root / "cb").exists()
    assert _tree(b / "rootfs") == before


def test_block_rootfs_by_annotation_and_readonly(env: Env) -> None:
    script = "echo x > /x 2>/dev/null && echo wrote; head -1 /etc/passwd; grep ' / ' /proc/mounts"
    b = env.bundle(["/bin/sh", "-c", script])
    spec = json.loads((b / "config.json").read_text())
    spec["root"]["readonly"] = True
    spec.setdefault("annotations", {})["io.cocoon.config.runtime.rootfs_mode"] = "block"
    (b / "config.json").write_text(json.dumps(spec))
    r = env.run("run", "--bundle", str(b), "ca")
    assert r.returncode == 0, r.stderr.decode()
    assert b"wrote" not in r.stdout
    assert r.stdout.startswith(b"root:"), r.stdout
    assert b"\noverlay / overlay ro," in r.stdout, r.stdout  # the block rootfs, read-only
    assert not (b / "rootfs" / "x").exists()


def _loop_device(backing: Path) -> str:
    backing.write_bytes(b"\0" * (4 << 20))
    return subprocess.run(
        ["losetup", "-f", "--show", str(backing)], check=True, capture_output=True, text=True
    ).stdout.strip()


def test_host_block_device_is_hot_plugged_at_the_requested_path(env: Env) -> None:
    backing = env.work / "disk.img"
    loop = _loop_device(backing)
    try:
        st = os.stat(loop)
        major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
        script = (
            "echo from-the-container | dd of=/dev/xdisk bs=512 conv=sync 2>/dev/null && sync && "
            "head -c 18 /dev/xdisk && echo && ls -l /dev/xdisk && cat /proc/partitions"
        )
        b = env.bundle(["/bin/sh", "-c", script])
        spec = json.loads((b / "config.json").read_text())
        spec["linux"]["devices"] = [
            {"path": "/dev/xdisk", "type": "b", "major": major, "minor": minor, "fileMode": 0o660}
        ]
        spec["linux"].setdefault("resources", {})["devices"] = [
            {"allow": False, "access": "rwm"},
            {"allow": True, "type": "b", "major": major, "minor": minor, "access": "rwm"},
        ]
        (b / "config.json").write_text(json.dumps(spec))
        r = env.run("run", "--bundle", str(b), "cd")
        assert r.returncode == 0, r.stderr.decode()
        out = r.stdout.decode()
        assert out.startswith("from-the-container\n"), out
        assert " vd" in out.split("\n", 2)[2] and "loop" not in out, out  # the guest's disk
        assert backing.read_bytes()[:19] == b"from-the-container\n"
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)


def test_host_character_device_is_refused_in_one_line(env: Env) -> None:
    b = env.bundle(["/bin/true"])
    spec = json.loads((b / "config.json").read_text())
    spec["linux"]["devices"] = [{"path": "/dev/ttyS9", "type": "c", "major": 4, "minor": 73}]
    (b / "config.json").write_text(json.dumps(spec))
    r = env.run("run", "--bundle", str(b), "cr")
    assert r.returncode != 0
    err = [ln for ln in r.stderr.decode().splitlines() if "KVM" not in ln]
    assert len(err) == 1 and "character device 4:73 cannot be passed into a VM" in err[0], err


def _host_view() -> tuple[set[str], str]:
    return set(os.listdir("/dev")), Path("/proc/partitions").read_text()


def test_privileged_container_sees_the_guests_devices_not_the_hosts(env: Env) -> None:
    from cocoon.storage.devices import host_dev_nodes

    b = env.bundle(["/bin/sh", "-c", "ls /dev; echo ==; cat /proc/partitions"])
    spec = json.loads((b / "config.json").read_text())
    caps = [f"CAP_{c}" for c in PRIVILEGED_CAPS]
    spec["process"]["capabilities"] = {k: caps for k in ("bounding", "effective", "permitted")}
    # As podman and docker write a privileged spec: every host /dev node.
    spec["linux"]["devices"] = [
        {"path": f"/dev/host{i}", "type": t, "major": ma, "minor": mi}
        for i, (t, ma, mi) in enumerate(sorted(host_dev_nodes()))
    ]
    spec["linux"].setdefault("resources", {})["devices"] = [{"allow": True, "access": "rwm"}]
    (b / "config.json").write_text(json.dumps(spec))
    r = env.run("run", "--bundle", str(b), "cp")
    assert r.returncode == 0, r.stderr.decode()
    devs, _, parts = r.stdout.decode().partition("==\n")
    names = set(devs.split())
    assert not any(n.startswith("host") for n in names), names
    assert "vda" in names  # the guest's own root disk
    host_devs, host_parts = _host_view()
    assert parts != host_parts and "vda" in parts
    # Host-only devices (its disks, loop devices, ttys) are not there.
    host_only = {"kvm", "zram0", "vsock", "loop0", "sda", "nvme0"} & host_devs
    assert host_only and not names & host_only, names & host_only
    host_disks = {ln.split()[-1]: ln.split()[2] for ln in host_parts.splitlines()[2:] if ln}
    guest_disks = {ln.split()[-1]: ln.split()[2] for ln in parts.splitlines()[2:] if ln}
    assert not set(host_disks.items()) & set(guest_disks.items()), (host_disks, guest_disks)


def test_block_rootfs_with_a_volume_on_a_new_mount_point(env: Env) -> None:
    """A read-only block rootfs still takes a bind volume where the image has no
    directory: crun makes the mount point on the guest's overlay, not the host."""
    vol = env.work / "vol"
    vol.mkdir()
    (vol / "f").write_text("from the host\n")
    b = env.bundle(["/bin/sh", "-c", "cat /data/new/f; echo back > /data/new/g"])
    spec = json.loads((b / "config.json").read_text())
    spec["root"]["readonly"] = True
    spec["mounts"].append(
        {"destination": "/data/new", "type": "bind", "source": str(vol), "options": ["rbind"]}
    )
    (b / "config.json").write_text(json.dumps(spec))
    r = env.run("run", "--bundle", str(b), "cv", env=BLOCK)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b"from the host\n"
    assert (vol / "g").read_text() == "back\n"
    assert not (b / "rootfs" / "data").exists()  # no mount point made in the bundle


def test_a_deleted_containers_disks_leave_the_vm(env: Env) -> None:
    """Two containers in one VM (the second joins the first's namespaces): the
    second's image and scratch disk are unplugged and removed at its delete."""
    from tests.e2e.test_cli import wait_status
    from tests.e2e.test_join import _joiner_bundle

    owner = env.bundle(["/bin/sleep", "600"])
    r = env.run("run", "-d", "--bundle", str(owner), "a", env=BLOCK, capture=False)
    assert r.returncode == 0
    try:
        apid = int(wait_status(env, "a", "running")["pid"])  # type: ignore[call-overload]
        disks = env.root / "a" / "disks"
        b = _joiner_bundle(env, ["/bin/sleep", "600"], apid)
        r = env.run("run", "-d", "--bundle", str(b), "j", env=BLOCK, capture=False)
        assert r.returncode == 0, (env.work / "out.log").read_text()
        wait_status(env, "j", "running")
        r = env.run("exec", "j", "/bin/ls", "/sys/block")
        assert r.stdout.decode().split() == ["vda", "vdb", "vdc", "vdd", "vde"], r.stdout
        assert len(list(disks.iterdir())) == 4
        assert env.run("delete", "--force", "j").returncode == 0
        assert sorted(p.name for p in disks.iterdir()) == ["0.erofs", "0.scratch"]
        r = env.run("exec", "a", "/bin/ls", "/sys/block")
        assert r.stdout.decode().split() == ["vda", "vdb", "vdc"], r.stdout
    finally:
        env.run("delete", "--force", "j")
        assert env.run("delete", "--force", "a").returncode == 0
