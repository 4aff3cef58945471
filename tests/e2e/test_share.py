"""Bind sources as the host sees them now: rslave propagation from the host (the CLI)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.e2e.conftest import Env


def test_host_mounts_under_a_shared_source_reach_a_running_container(env: Env) -> None:
    src = env.work / "src"
    (src / "sub").mkdir(parents=True)
    mounted: list[Path] = []
    wait = "i=0; while [ ! -e /v/sub/y ]; do i=$((i+1)); [ $i -gt 600 ] && exit 3; sleep 0.1; done"
    b = env.bundle(["/bin/sh", "-c", f"touch /v/ready; {wait}; cat /v/sub/y"])
    spec = json.loads((b / "config.json").read_text())
    spec["mounts"].append(
        {"destination": "/v", "type": "bind", "source": str(src), "options": ["rbind", "rslave"]}
    )
    (b / "config.json").write_text(json.dumps(spec))
    try:
        subprocess.run(["mount", "--bind", str(src), str(src)], check=True)
        mounted.append(src)
        subprocess.run(["mount", "--make-shared", str(src)], check=True)
        proc = subprocess.Popen(
            env.argv("run", "--bundle", str(b), "cprop"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            for _ in range(1800):
                if (src / "ready").exists() or proc.poll() is not None:
                    break
                subprocess.run(["sleep", "0.1"], check=True)
            subprocess.run(["mount", "-t", "tmpfs", "later", str(src / "sub")], check=True)
            mounted.insert(0, src / "sub")
            (src / "sub" / "y").write_text("propagated\n")
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err.decode()
        assert out == b"propagated\n"
    finally:
        for m in mounted:
            subprocess.run(["umount", str(m)], check=False)


def test_readonly_rootfs_gets_mount_points_for_its_volumes(env: Env) -> None:
    vol = env.work / "vol"
    vol.mkdir()
    (vol / "f").write_text("dir volume\n")
    one = env.work / "one"
    one.write_text("file volume\n")
    b = env.bundle(["/bin/sh", "-c", "cat /data/new/f /etc/extra/one; echo x > /x || true"])
    spec = json.loads((b / "config.json").read_text())
    assert spec["root"]["readonly"] is True
    spec["mounts"] += [
        {"destination": "/data/new", "type": "bind", "source": str(vol), "options": ["rbind"]},
        {"destination": "/etc/extra/one", "type": "bind", "source": str(one), "options": ["bind"]},
    ]
    (b / "config.json").write_text(json.dumps(spec))
    r = env.run("run", "--bundle", str(b), "cmp")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b"dir volume\nfile volume\n"
    assert b"Read-only file system" in r.stderr
    rootfs = b / "rootfs"
    assert (rootfs / "data" / "new").is_dir() and (rootfs / "etc" / "extra" / "one").is_file()


def test_a_missing_bind_source_is_one_line_and_leaves_nothing(env: Env) -> None:
    b = env.bundle(["/bin/true"])
    spec = json.loads((b / "config.json").read_text())
    missing = env.work / "gone"
    spec["mounts"].append(
        {"destination": "/v", "type": "bind", "source": str(missing), "options": ["rbind"]}
    )
    (b / "config.json").write_text(json.dumps(spec))
    r = env.run("run", "--bundle", str(b), "cmiss")
    assert r.returncode == 1
    errors = [x for x in r.stderr.decode().splitlines() if "warning" not in x]
    assert errors == [f"cocoon: bind source {missing} does not exist"], errors
