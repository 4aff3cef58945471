"""Containers in a user namespace: root mapped to an unprivileged host range."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import Env

SCRIPT = "id; ls -ln / | grep -E ' (bin|etc|tmp)$'; echo written > /tmp/f && cat /tmp/f"
MAP = [{"containerID": 0, "hostID": 100000, "size": 65536}]


def mapped_bundle(env: Env) -> Path:
    b = env.bundle(["/bin/sh", "-c", SCRIPT])
    spec = json.loads((b / "config.json").read_text())
    spec["linux"]["namespaces"].append({"type": "user"})
    spec["linux"]["uidMappings"] = MAP
    spec["linux"]["gidMappings"] = MAP
    (b / "config.json").write_text(json.dumps(spec))
    # runc (the reference) needs the mapped root to reach the bundle; Cocoon does not.
    os.chmod(env.work, 0o711)
    return b


def runc_output(env: Env, bundle: Path, cid: str) -> list[str]:
    runc = shutil.which("runc")
    if runc is None:
        pytest.skip("runc is not installed")
    r = subprocess.run(
        [runc, "--root", str(env.work / "runc"), "run", "--bundle", str(bundle), cid],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode().splitlines()


def columns(lines: list[str]) -> list[str]:
    """``ls -ln`` rows as mode, owner, group, name (sizes and dates differ)."""
    out = []
    for line in lines:
        f = line.split()
        out.append(" ".join([f[0], f[2], f[3], f[-1]]) if len(f) >= 9 else line)
    return out


@pytest.mark.parametrize("shared_fs", ["9p", "virtiofs"])
def test_container_with_mapped_root_runs_and_sees_ownership_as_runc(
    env: Env, shared_fs: str
) -> None:
    b = mapped_bundle(env)
    r = env.run("run", "--bundle", str(b), "cu1", env={"COCOON_SHARED_FS": shared_fs})
    assert r.returncode == 0, r.stderr.decode()
    got = r.stdout.decode().splitlines()
    assert got[0].startswith("uid=0(root) gid=0(root)"), got
    assert got[-1] == "written"
    # Files the bundle's rootfs has owned by host root are unmapped: nobody (65534).
    rows = columns(got[1:-1])
    assert [r for r in rows if r.endswith((" bin", " etc"))] == [
        "drwxr-xr-x 65534 65534 bin",
        "drwxr-xr-x 65534 65534 etc",
    ], got
    assert "drwxrwxrwt 0 0 tmp" in rows  # the tmpfs is the namespace's own
    assert columns(got) == columns(runc_output(env, b, "cu1-runc"))
