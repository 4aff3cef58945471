"""Checkpoint and restore of a pod: a sandbox container and a member that joined its
VM (its spec names the home's stub PID, as podman's pod members and ``--network
container:A`` do) are saved together through the home, and restored home first,
then the member, which joins the restored VM (here under another ID).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tests.e2e.conftest import Env
from tests.e2e.test_checkpoint import BLOCK, _count, _status, _wait_count, _writable
from tests.e2e.test_cli import wait_status
from tests.e2e.test_join import _joiner_bundle, _qemu_of

COUNT = "i=0; while :; do i=$((i+1)); echo $i > /count; sleep 0.1; done"


def _one_line(stderr: bytes) -> str:
    lines = [ln for ln in stderr.decode().splitlines() if "warning" not in ln]
    assert len(lines) == 1, stderr
    return lines[0]


def _ns(env: Env, cid: str, kind: str) -> str:
    r = env.run("exec", cid, "/bin/readlink", f"/proc/self/ns/{kind}")
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode().strip()


def test_a_pod_is_checkpointed_whole_and_restored_home_first(env: Env) -> None:
    home = _writable(env.bundle(["/bin/sh", "-c", COUNT]))
    r = env.run("run", "-d", "--bundle", str(home), "pa", env=BLOCK, capture=False)
    assert r.returncode == 0, (env.work / "out.log").read_text()
    apid = int(wait_status(env, "pa", "running")["pid"])  # type: ignore[call-overload]
    member = _writable(_joiner_bundle(env, ["/bin/sh", "-c", COUNT], apid))
    r = env.run("run", "-d", "--bundle", str(member), "pm", capture=False)
    assert r.returncode == 0, (env.work / "out.log").read_text()
    wait_status(env, "pm", "running")
    image = env.work / "pod"
    qemu = 0
    try:
        ipc = _ns(env, "pa", "ipc")
        assert _ns(env, "pm", "ipc") == ipc
        _wait_count(env, "pa", 10)
        _wait_count(env, "pm", 10)

        # A member alone: one line naming the home to checkpoint; both run on.
        r = env.run("checkpoint", "--image-path", str(env.work / "alone"), "pm")
        assert r.returncode != 0 and "checkpoint 'pa'" in _one_line(r.stderr), r.stderr
        assert _status(env, "pa") == _status(env, "pm") == "running"

        # --leave-running: both saved, both go on.
        r = env.run("checkpoint", "--image-path", str(env.work / "lr"), "--leave-running", "pa")
        assert r.returncode == 0, r.stderr.decode()
        for cid in ("pa", "pm"):
            n = _count(env, cid)
            assert _status(env, cid) == "running" and _wait_count(env, cid, n + 5) > n
        lr = json.loads((env.work / "lr" / "manifest.json").read_text())
        assert sorted(c["id"] for c in lr["containers"]) == ["pa", "pm"]

        # The home: every container of its VM saved, every process ended (137).
        r = env.run("checkpoint", "--image-path", str(image), "pa")
        assert r.returncode == 0, r.stderr.decode()
        assert _status(env, "pa") == _status(env, "pm") == "stopped"
        saved = json.loads((image / "manifest.json").read_text())
        rows = {c["id"]: c for c in saved["containers"]}
        assert (rows["pa"]["role"], rows["pm"]["role"]) == ("home", "member")
        assert rows["pm"]["joins"] == "pa" and "ipc" in rows["pm"]["namespaces"]
        assert rows["pm"]["bundle"] == str(member) and rows["pm"]["scratch"]
        counts = {}
        for cid in ("pm", "pa"):
            assert env.run("delete", cid).returncode == 0
        assert not (env.root / "pa").exists() and not (env.root / "pm").exists()

        # The member before its home: one line, nothing made.
        r = env.run("restore", "--image-path", str(image), "--bundle", str(member), "-d", "pm")
        assert r.returncode != 0 and "restore 'pa' first" in _one_line(r.stderr), r.stderr
        assert not (env.root / "pm").exists()

        # The home: the VM with both; the member awaits its own restore.
        r = env.run(
            "restore", "--image-path", str(image), "--bundle", str(home), "-d", "pa",
            capture=False,
        )  # fmt: skip
        assert r.returncode == 0, (env.work / "out.log").read_text()
        assert _status(env, "pa") == "running"
        qemu = _qemu_of(env, "pa")
        counts["pa"] = _count(env, "pa")
        assert counts["pa"] > 5  # from where it stood, not from 0
        assert env.run("state", "pm").returncode != 0
        home_state = json.loads((env.root / "pa" / "state.json").read_text())
        assert [a["id"] for a in home_state["awaiting"]] == ["pm"]

        # The member joins it, under another ID (renamed in the guest).
        r = env.run(
            "restore", "--image-path", str(image), "--bundle", str(member), "-d", "pm2",
            "--pid-file", str(env.work / "pm2.pid"), capture=False,
        )  # fmt: skip
        assert r.returncode == 0, (env.work / "out.log").read_text()
        st = wait_status(env, "pm2", "running")
        assert st["pid"] == int((env.work / "pm2.pid").read_text())
        assert st["annotations"]["io.cocoon.sandbox"] == "pa"  # type: ignore[index]
        assert json.loads((env.root / "pm2" / "state.json").read_text())["sandbox"] == "pa"
        assert _qemu_of(env, "pa") == qemu  # one VM: nothing booted for the member
        assert json.loads((env.root / "pa" / "state.json").read_text())["awaiting"] == []
        counts["pm2"] = _count(env, "pm2")
        assert counts["pm2"] > 5
        for cid, n in counts.items():
            assert _wait_count(env, cid, n + 5) > n
        assert _ns(env, "pm2", "ipc") == _ns(env, "pa", "ipc")
        ids = sorted(c["id"] for c in json.loads(env.run("list", "--format", "json").stdout))
        assert ids == ["pa", "pm2"]
        # The member's delete leaves the home running; the home's then ends the VM.
        assert env.run("delete", "--force", "pm2").returncode == 0
        assert _status(env, "pa") == "running"
        assert env.run("delete", "--force", "pa").returncode == 0
        deadline = time.monotonic() + 30
        while os.path.exists(f"/proc/{qemu}") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not os.path.exists(f"/proc/{qemu}")
        assert not any(Path(env.root).glob("p*"))
    finally:
        for cid in ("pm2", "pm", "pa"):
            env.run("delete", "--force", cid)
