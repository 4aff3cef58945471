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

from tests.e2e.conftest import Env

POD_UID = "0d2c6e1e-7a41-4b7c-9d0e-3f1a2b3c4d5e"


def kubelet_volume(env: Env, plugin: str, name: str) -> Path:
    d = env.work / "kubelet" / "pods" / POD_UID / "volumes" / f"kubernetes.io~{plugin}" / name
    d.mkdir(parents=True)
    return d


def configmap(vol: Path, version: str, data: dict[str, str]) -> None:
    """The kubelet's atomic writer: a timestamped dir, ``..data`` swapped onto it by rename."""
    ts = vol / f"..{version}"
    ts.mkdir()
    for k, v in data.items():
        (ts / k).write_text(v)
    tmp = vol / "..data_tmp"
    os.symlink(ts.name, tmp)
    old = os.readlink(vol / "..data") if (vol / "..data").is_symlink() else None
    os.rename(tmp, vol / "..data")
    for k in data:
        if not (vol / k).is_symlink():
            os.symlink(f"..data/{k}", vol / k)
    if old:
        subprocess.run(["rm", "-rf", str(vol / old)], check=True)


def add_mount(b: Path, dest: str, source: Path, opts: list[str] | None = None) -> None:
    spec: dict[str, Any] = json.loads((b / "config.json").read_text())
    spec["mounts"].append(
        {"destination": dest, "type": "bind", "source": str(source), "options": opts or ["rbind"]}
    )
    (b / "config.json").write_text(json.dumps(spec))


def test_a_configmap_swap_reaches_a_running_container_within_5s(env: Env) -> None:
    vol = kubelet_volume(env, "configmap", "cfg")
    configmap(vol, "2026_12_01_21_00_00.1", {"key": "v1\n"})
    flag = env.work / "flag"
    flag.mkdir()
    script = (
        "cat /cfg/key; touch /flag/ready; i=0; "
        'while [ "$(cat /cfg/key)" != v2 ]; do i=$((i+1)); [ $i -gt 600 ] && exit 3; sleep 0.1; done; '
        "touch /flag/seen; cat /cfg/key"
    )
    b = env.bundle(["/bin/sh", "-c", script])
    add_mount(b, "/cfg", vol, ["rbind", "ro"])
    add_mount(b, "/flag", flag)
    proc = subprocess.Popen(
        env.argv("run", "--bundle", str(b), "ccm"),
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
