"""The guest attacks the share, with every capability (a stand-in for a compromised guest
kernel): read-only must hold at the host side, and nothing the host would honour (a
setuid/setgid file, a device node, a file of a foreign owner) may appear there."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import Env

ALL_CAPS = [
    f"CAP_{n}"
    for n in (
        "CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP "
        "LINUX_IMMUTABLE NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER "
        "SYS_MODULE SYS_RAWIO SYS_CHROOT SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE "
        "SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL SETFCAP "
        "MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ"
    ).split()
]
FS = {"9p": "virtio-9p", "virtiofs": "virtiofs"}


def _all_caps(env: Env, b: Path) -> None:
    import json

    spec = json.loads((b / "config.json").read_text())
    spec["process"]["capabilities"] = {k: ALL_CAPS for k in ("bounding", "effective", "permitted")}
    spec["process"]["noNewPrivileges"] = False
    (b / "config.json").write_text(json.dumps(spec))


def _run(env: Env, b: Path, cid: str, fs: str) -> subprocess.CompletedProcess[bytes]:
    r = env.run("run", "--bundle", str(b), cid, env={"COCOON_SHARED_FS": FS[fs]})
    return r


def _volume(env: Env, name: str) -> Path:
    d = env.work / name
    d.mkdir(mode=0o755)
    (d / "orig").write_text("host data\n")
    return d


@pytest.mark.parametrize("fs", ["9p", "virtiofs"])
def test_readonly_holds_at_the_host_side(env: Env, fs: str) -> None:
    ro = _volume(env, "ro")
    script = (
        "mount -o remount,rw / && echo root-remounted;"
        "echo pwned > /pwned; echo pwned > /etc/passwd;"
        "mount -o remount,rw /ro && echo ro-remounted;"
        "echo pwned > /ro/orig; echo pwned > /ro/new; echo end"
    )
    mounts = [{"destination": "/ro", "type": "bind", "source": str(ro), "options": ["rbind", "ro"]}]
    b = env.bundle(["/bin/sh", "-c", script], root={"path": "rootfs", "readonly": True})
    _all_caps(env, b)
    _add_mounts(b, mounts)
    r = _run(env, b, f"ro{fs}", fs)
    out = r.stdout.decode()
    assert "end" in out, (out, r.stderr.decode())
    rootfs = b / "rootfs"
    assert not (rootfs / "pwned").exists()
    assert (rootfs / "etc" / "passwd").read_text().startswith("root:x:0:0")
    assert (ro / "orig").read_text() == "host data\n"
    assert not (ro / "new").exists()


def _add_mounts(b: Path, mounts: list[dict[str, object]]) -> None:
    import json

    spec = json.loads((b / "config.json").read_text())
    spec["mounts"] += mounts
    (b / "config.json").write_text(json.dumps(spec))


PLANT = (
    "cp /bin/busybox {d}/suid && chmod 6755 {d}/suid; "
    "mkdir -p {d}/gdir && chmod 2775 {d}/gdir; "
    "mknod {d}/cdev c 1 3; mknod {d}/bdev b 7 0; "
    "touch {d}/owned && chown 4242:4242 {d}/owned; "
    "echo data > {d}/data && chmod 640 {d}/data; "
)


@pytest.mark.parametrize("fs", ["9p", "virtiofs"])
def test_guest_plants_nothing_the_host_would_honour(env: Env, fs: str) -> None:
    rw = _volume(env, "rw")
    script = PLANT.format(d="") + PLANT.format(d="/rw") + "stat -c '%a %u %F' /suid; echo end"
    b = env.bundle(["/bin/sh", "-c", script], root={"path": "rootfs", "readonly": False})
    _all_caps(env, b)
    _add_mounts(
        b, [{"destination": "/rw", "type": "bind", "source": str(rw), "options": ["rbind"]}]
    )
    before = _special_files(b / "rootfs")
    r = _run(env, b, f"pl{fs}", fs)
    out = r.stdout.decode()
    assert "end" in out, (out, r.stderr.decode())
    assert "755 0 regular file" in out, out  # chmod 6755 was refused: no set-id bits
    for top in (b / "rootfs", rw):
        found = _special_files(top) - before
        # Not closed (docs/security.md): guest owners pass through, as with runc.
        assert found == {f"{top}/owned: owner 4242:4242"}, found
        # What the container wrote stays usable by the engine.
        assert (top / "data").read_text() == "data\n"
        assert stat.S_IMODE((top / "data").stat().st_mode) == 0o640  # plain chmod works


def _special_files(top: Path) -> set[str]:
    """setuid/setgid files, device nodes, and files of owners other than root."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            if st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                found.add(f"{p}: mode {oct(st.st_mode)}")
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                found.add(f"{p}: device")
            if st.st_uid != 0 or st.st_gid != 0:
                found.add(f"{p}: owner {st.st_uid}:{st.st_gid}")
    return found


def _status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


@pytest.mark.parametrize("fs", ["9p", "virtiofs"])
def test_qemu_and_virtiofsd_run_jailed(env: Env, fs: str) -> None:
    import json

    from cocoon.hypervisor.jail import CAP_SYS_CHROOT, FILE_CAPS, VIRTIOFSD_CAPS
    from cocoon.hypervisor.uids import UID_BASE, UID_COUNT

    b = env.bundle(["/bin/sleep", "600"])
    r = env.run(
        "create", "--bundle", str(b), f"j{fs}", env={"COCOON_SHARED_FS": FS[fs]}, capture=False
    )
    assert r.returncode == 0, (env.work / "out.log").read_text()
    try:
        state = json.loads((env.root / f"j{fs}" / "state.json").read_text())
        qemu = state["qemu_pid"]
        uids = {int(u) for u in _status(qemu)["Uid"].split()}
        gids = {int(g) for g in _status(qemu)["Gid"].split()}
        # QEMU: a uid of its own (real, effective, saved, fs), no root group.
        assert len(uids) == 1 and UID_BASE <= uids.pop() < UID_BASE + UID_COUNT, uids
        assert len(gids) == 1 and 0 not in gids, gids
        # QEMU chroots into the sandbox's empty jail dir once its devices are up.
        assert os.readlink(f"/proc/{qemu}/root") == str(env.root / f"j{fs}" / "jail")
        procs = [(qemu, (*FILE_CAPS, CAP_SYS_CHROOT))]
        if fs == "virtiofs":
            # virtiofsd stays uid 0 (it switches to the guest's uid per request) and
            # lowers its own set further; it installs its own filter as well.
            procs.append((state["virtiofsd_pid"], VIRTIOFSD_CAPS))
        for pid, caps in procs:
            st = _status(pid)
            allowed = sum(1 << c for c in caps)
            assert int(st["CapBnd"], 16) & ~allowed == 0, (pid, st["CapBnd"])
            assert int(st["CapEff"], 16) & ~allowed == 0, (pid, st["CapEff"])
            assert st["NoNewPrivs"] == "1" and st["Seccomp"] == "2", st
    finally:
        assert env.run("delete", "--force", f"j{fs}").returncode == 0
