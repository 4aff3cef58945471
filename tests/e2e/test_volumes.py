"""Volumes as the kubelet hands them over (issue 12, item 1), through the CLI.

The kubelet's layouts are made by the tests under a directory with the
kubelet's path shape (``.../pods/<uid>/volumes/kubernetes.io~<plugin>/<name>``).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Env
from tests.fixtures.kubelet import configmap

POD_UID = "0d2c6e1e-7a41-4b7c-9d0e-3f1a2b3c4d5e"


def kubelet_volume(env: Env, plugin: str, name: str) -> Path:
    d = env.work / "kubelet" / "pods" / POD_UID / "volumes" / f"kubernetes.io~{plugin}" / name
    d.mkdir(parents=True)
    return d


def add_mount(b: Path, dest: str, source: Path, opts: list[str] | None = None) -> None:
    spec: dict[str, Any] = json.loads((b / "config.json").read_text())
    spec["mounts"].append(
        {"destination": dest, "type": "bind", "source": str(source), "options": opts or ["rbind"]}
    )
    (b / "config.json").write_text(json.dumps(spec))


@pytest.mark.parametrize("fs", ["9p", "virtiofs"])
def test_a_configmap_swap_reaches_a_running_container_within_5s(env: Env, fs: str) -> None:
    """No watcher: the share shows the kubelet's new ``..data`` by itself (checked first)."""
    vol = kubelet_volume(env, "configmap", "cfg")
    configmap(vol, "2026_12_01_21_00_00.1", {"key": "v1\n"})
    flag = env.work / "flag"
    flag.mkdir()
    wait = 'while [ "$(cat /cfg/key)" != v2 ]; do i=$((i+1)); [ $i -gt 600 ] && exit 3; '
    wait += "sleep 0.1; done"
    script = f"cat /cfg/key; touch /flag/ready; i=0; {wait}; touch /flag/seen; cat /cfg/key"
    b = env.bundle(["/bin/sh", "-c", script])
    add_mount(b, "/cfg", vol, ["rbind", "ro"])
    add_mount(b, "/flag", flag)
    proc = subprocess.Popen(
        env.argv("run", "--bundle", str(b), f"ccm{fs}"),
        env={**os.environ, "COCOON_SHARED_FS": fs},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        for _ in range(1800):
            if (flag / "ready").exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert (flag / "ready").exists(), proc.communicate(timeout=10)
        configmap(vol, "2026_12_01_21_00_05.2", {"key": "v2\n"})
        swapped = time.monotonic()
        while (
            not (flag / "seen").exists() and time.monotonic() - swapped < 5 and proc.poll() is None
        ):
            time.sleep(0.1)
        seen = (flag / "seen").exists()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert seen, f"the container did not see the new value within 5 s: {out!r} {err!r}"
    assert proc.returncode == 0, err.decode()
    assert out == b"v1\nv2\n"


def _errors(r: subprocess.CompletedProcess[bytes]) -> list[str]:
    return [x for x in r.stderr.decode().splitlines() if "warning" not in x]


def test_file_and_directory_binds_and_kubelet_subpaths_of_each(env: Env) -> None:
    vol = kubelet_volume(env, "csi", "pv")
    (vol / "sub").mkdir()
    (vol / "sub" / "f").write_text("in sub\n")
    (vol / "one").write_text("one file\n")
    # The kubelet's subPath: its own bind of the checked path under volume-subpaths/.
    subpaths = env.work / "kubelet" / "pods" / POD_UID / "volume-subpaths" / "pv" / "app"
    subpaths.mkdir(parents=True)
    (subpaths / "0").mkdir()
    (subpaths / "1").touch()
    plain = env.work / "plain"
    plain.mkdir()
    (plain / "p").write_text("plain dir\n")
    lone = env.work / "lone"
    lone.write_text("plain file\n")
    b = env.bundle(
        [
            "/bin/sh",
            "-c",
            "cat /d/p /f /sp/f /spf /below/f /belowf; echo w > /sp/new; echo w > /d/new",
        ]
    )
    add_mount(b, "/d", plain)
    add_mount(b, "/f", lone, ["bind"])
    add_mount(b, "/sp", subpaths / "0")
    add_mount(b, "/spf", subpaths / "1", ["bind"])
    add_mount(b, "/below", vol / "sub")  # below a volume root: resolved beneath it
    add_mount(b, "/belowf", vol / "one", ["bind"])
    mounted: list[Path] = []
    try:
        for src, dst in ((vol / "sub", subpaths / "0"), (vol / "one", subpaths / "1")):
            subprocess.run(["mount", "--bind", str(src), str(dst)], check=True)
            mounted.insert(0, dst)
        r = env.run("run", "--bundle", str(b), "cbinds")
    finally:
        for m in mounted:
            subprocess.run(["umount", str(m)], check=False)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b"plain dir\nplain file\nin sub\none file\nin sub\none file\n"
    assert (vol / "sub" / "new").read_text() == "w\n" and (plain / "new").read_text() == "w\n"


def test_a_symlink_out_of_a_kubelet_volume_is_refused(env: Env) -> None:
    vol = kubelet_volume(env, "configmap", "cfg")
    secret = env.work / "outside"
    secret.mkdir()
    (secret / "s").write_text("host secret\n")
    os.symlink(str(secret), vol / "abs")
    os.symlink("../../../../../../outside", vol / "rel")
    for name in ("abs", "rel"):
        b = env.bundle(["/bin/cat", "/v/s"])
        add_mount(b, "/v", vol / name)
        r = env.run("run", "--bundle", str(b), f"cesc{name}")
        assert r.returncode == 1, r.stdout
        assert _errors(r) == [
            f"cocoon: bind source {vol / name}: a symlink in it leads out of its volume {vol}"
        ], r.stderr.decode()
        assert b"host secret" not in r.stdout


def test_a_plain_source_through_a_symlink_is_followed_as_runc_does(env: Env) -> None:
    real = env.work / "real"
    real.mkdir()
    (real / "x").write_text("through the link\n")
    os.symlink(str(real), env.work / "link")
    b = env.bundle(["/bin/cat", "/v/x"])
    add_mount(b, "/v", env.work / "link")
    r = env.run("run", "--bundle", str(b), "clink")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b"through the link\n"


def test_ro_binds_cannot_be_written(env: Env) -> None:
    d = env.work / "rod"
    d.mkdir()
    (d / "x").write_text("host\n")
    f = env.work / "rof"
    f.write_text("host file\n")
    script = "echo g > /d/x; echo g > /d/new; echo g > /f; cat /d/x /f"
    b = env.bundle(["/bin/sh", "-c", script])
    add_mount(b, "/d", d, ["rbind", "ro"])
    add_mount(b, "/f", f, ["bind", "ro"])
    r = env.run("run", "--bundle", str(b), "cro")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b"host\nhost file\n"
    assert r.stderr.decode().count("Read-only file system") == 3, r.stderr.decode()
    assert (d / "x").read_text() == "host\n" and not (d / "new").exists()
    assert f.read_text() == "host file\n"


def test_an_emptydir_is_a_guest_tmpfs_charged_to_guest_memory(env: Env) -> None:
    ed = kubelet_volume(env, "empty-dir", "cache")
    mem = kubelet_volume(env, "empty-dir", "mem")
    subprocess.run(["mount", "-t", "tmpfs", "kubelet-mem", str(mem)], check=True)
    try:
        script = (
            "stat -f -c %T /cache; grep -w /cache /proc/mounts | cut -d' ' -f1; "
            "grep -w /mem /proc/mounts | cut -d' ' -f1; df -k /cache | tail -1 | awk '{print $2}'; "
            "s0=$(grep ^Shmem: /proc/meminfo | tr -s ' ' | cut -d' ' -f2); "
            "dd if=/dev/zero of=/mem/z bs=1M count=32 2>/dev/null; echo x > /cache/f; "
            "s1=$(grep ^Shmem: /proc/meminfo | tr -s ' ' | cut -d' ' -f2); "
            "echo $(( (s1 - s0) / 1024 ))"
        )
        b = env.bundle(["/bin/sh", "-c", script])
        spec = json.loads((b / "config.json").read_text())
        spec.setdefault("annotations", {})["emptydir.cocoon.io/cache"] = "8Mi"
        (b / "config.json").write_text(json.dumps(spec))
        add_mount(b, "/cache", ed)
        add_mount(b, "/mem", mem)
        r = env.run("run", "--bundle", str(b), "cempty")
        host_mem = sorted(p.name for p in mem.iterdir())
    finally:
        subprocess.run(["umount", str(mem)], check=False)
    assert r.returncode == 0, r.stderr.decode()
    lines = r.stdout.decode().split()
    assert lines[:4] == ["tmpfs", "emptydir-disk", "emptydir-memory", "8192"], lines
    assert int(lines[4]) >= 24, lines  # of the 32 MiB written: they show in the guest's memory
    assert list(ed.iterdir()) == [] and host_mem == []  # never on the host


def test_a_subpath_of_an_emptydir_is_served_from_the_guest_copy(env: Env) -> None:
    ed = kubelet_volume(env, "empty-dir", "shared")
    (ed / "sub").mkdir(mode=0o750)  # the kubelet makes the subPath in the host emptyDir
    sp = env.work / "kubelet" / "pods" / POD_UID / "volume-subpaths" / "shared" / "app" / "0"
    sp.mkdir(parents=True)
    b = env.bundle(["/bin/sh", "-c", "echo x > /all/sub/f; cat /sub/f; stat -c %a /sub"])
    add_mount(b, "/all", ed)
    add_mount(b, "/sub", sp)
    subprocess.run(["mount", "--bind", str(ed / "sub"), str(sp)], check=True)
    try:
        r = env.run("run", "--bundle", str(b), "csubed")
    finally:
        subprocess.run(["umount", str(sp)], check=False)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b"x\n750\n"
    assert list((ed / "sub").iterdir()) == []
