"""Checkpoint and restore of a whole VM (cocoon checkpoint / cocoon restore), end to end.

A container counts every 0.1 s into a file of its rootfs and echoes TCP on the pod
IP; a client in the peer namespace holds one connection open across a checkpoint
with --leave-running, a checkpoint that stops it, a delete and a restore.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.e2e.conftest import Env
from tests.e2e.test_network import POD_IP, Pod, pod, write_spec  # noqa: F401 - fixture

BLOCK = {"COCOON_ROOTFS_MODE": "block"}
COUNTER = (
    "nc -ll -p 7007 -e /bin/cat & " "i=0; while :; do i=$((i+1)); echo $i > /count; sleep 0.1; done"
)
# One connection, held: each line from the test is sent and its echo printed.
CLIENT = (
    "import socket,sys,time\n"
    "for _ in range(100):\n"
    "    try:\n"
    f"        c=socket.create_connection(('{POD_IP}', 7007), timeout=120); break\n"
    "    except ConnectionRefusedError: time.sleep(0.2)\n"
    "print('connected', flush=True)\n"
    "for line in sys.stdin:\n"
    "    c.sendall(line.encode()); data=b''\n"
    "    while not data.endswith(b'\\n'):\n"
    "        chunk=c.recv(100)\n"
    "        if not chunk: print('closed', flush=True); sys.exit(1)\n"
    "        data+=chunk\n"
    "    print(data.decode().strip(), flush=True)\n"
)


def _writable(bundle: Path) -> Path:
    spec = json.loads((bundle / "config.json").read_text())
    spec["root"]["readonly"] = False
    (bundle / "config.json").write_text(json.dumps(spec))
    return bundle


def _count(env: Env, cid: str) -> int:
    r = env.run("exec", cid, "/bin/sh", "-c", "cat /count 2>/dev/null || echo 0")
    assert r.returncode == 0, r.stderr.decode()
    return int(r.stdout.decode().strip() or 0)


def _wait_count(env: Env, cid: str, at_least: int) -> int:
    deadline = time.monotonic() + 60
    while (n := _count(env, cid)) < at_least:
        assert time.monotonic() < deadline, f"the counter stays at {n}"
        time.sleep(0.5)
    return n


def _echo(client: subprocess.Popen[str], line: str) -> str:
    assert client.stdin is not None and client.stdout is not None
    client.stdin.write(line + "\n")
    client.stdin.flush()
    return client.stdout.readline().strip()


def _status(env: Env, cid: str) -> str:
    r = env.run("state", cid)
    assert r.returncode == 0, r.stderr.decode()
    return str(json.loads(r.stdout)["status"])


def test_checkpoint_and_restore_continue_the_counter_and_the_connection(
    env: Env,
    pod: Pod,  # noqa: F811 - the fixture
) -> None:
    bundle = _writable(env.bundle(["/bin/sh", "-c", COUNTER]))
    write_spec(bundle, [{"type": "network", "path": pod.path}])
    r = env.run("run", "--detach", "--bundle", str(bundle), "c1", env=BLOCK, capture=False)
    assert r.returncode == 0, (env.work / "out.log").read_text()
    client = subprocess.Popen(
        ["ip", "netns", "exec", pod.peer, sys.executable, "-c", CLIENT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    images = env.work / "images"
    try:
        assert client.stdout is not None and client.stdout.readline().strip() == "connected"
        assert _echo(client, "one") == "one"
        first = _wait_count(env, "c1", 10)

        # --leave-running: the original goes on, the connection too.
        r = env.run("checkpoint", "--image-path", str(images / "a"), "--leave-running", "c1")
        assert r.returncode == 0, r.stderr.decode()
        assert _status(env, "c1") == "running"
        assert _wait_count(env, "c1", first + 5) > first
        assert _echo(client, "two") == "two"

        # Without it: saved, then stopped (as CRIU's dump ends the tree).
        before = _count(env, "c1")
        r = env.run("checkpoint", "--image-path", str(images / "b"), "--tcp-established", "c1")
        assert r.returncode == 0, r.stderr.decode()
        assert _status(env, "c1") == "stopped"
        saved = json.loads((images / "b" / "manifest.json").read_text())
        assert saved["containers"][0]["id"] == "c1"
        assert env.run("delete", "c1").returncode == 0
        assert not (env.root / "c1").exists()

        # A restore with a file missing, or made for other guest assets: one line,
        # nothing created.
        broken = images / "broken"
        shutil.copytree(images / "b", broken)
        (broken / "vm.state.gz").unlink()
        r = env.run("restore", "--image-path", str(broken), "--bundle", str(bundle), "-d", "c1")
        assert r.returncode != 0 and b"vm.state.gz is missing" in r.stderr, r.stderr
        assert len(r.stderr.decode().strip().splitlines()) == 1, r.stderr
        assert not (env.root / "c1").exists()
        shutil.rmtree(broken)
        shutil.copytree(images / "b", broken)
        doctored = json.loads((broken / "manifest.json").read_text())
        doctored["assets_key"] = "0" * 64
        (broken / "manifest.json").write_text(json.dumps(doctored))
        r = env.run("restore", "--image-path", str(broken), "--bundle", str(bundle), "-d", "c1")
        assert r.returncode != 0 and b"guest assets" in r.stderr, r.stderr
        assert not (env.root / "c1").exists()

        # The restore: the counter goes on from where it was, the connection holds.
        r = env.run(
            "restore", "--image-path", str(images / "b"), "--bundle", str(bundle), "-d", "c1",
            capture=False,
        )  # fmt: skip
        assert r.returncode == 0, (env.work / "out.log").read_text()
        assert _status(env, "c1") == "running"
        after = _count(env, "c1")
        assert after >= before, (before, after)
        assert _wait_count(env, "c1", after + 5) > after
        assert _echo(client, "three") == "three"
    finally:
        client.kill()
        client.wait()
        env.run("delete", "--force", "c1")


def test_checkpoint_refuses_what_it_cannot_save_and_leaves_it_running(env: Env) -> None:
    shared = env.bundle(["/bin/sleep", "600"])
    r = env.run("run", "--detach", "--bundle", str(shared), "s1", capture=False)
    assert r.returncode == 0, (env.work / "out.log").read_text()
    vol = env.work / "vol"
    vol.mkdir()
    bound = env.bundle(["/bin/sleep", "600"])
    spec = json.loads((bound / "config.json").read_text())
    spec["mounts"].append(
        {"destination": "/data", "type": "bind", "source": str(vol), "options": ["rbind"]}
    )
    (bound / "config.json").write_text(json.dumps(spec))
    r = env.run("run", "--detach", "--bundle", str(bound), "s2", env=BLOCK, capture=False)
    assert r.returncode == 0, (env.work / "out.log").read_text()
    try:
        r = env.run("checkpoint", "--image-path", str(env.work / "i1"), "s1")
        assert r.returncode != 0 and b"rootfs_mode = block" in r.stderr, r.stderr
        r = env.run("checkpoint", "--image-path", str(env.work / "i2"), "s2")
        assert r.returncode != 0 and str(vol).encode() in r.stderr, r.stderr
        for cid in ("s1", "s2"):
            assert len(r.stderr.decode().strip().splitlines()) == 1, r.stderr
            assert _status(env, cid) == "running"
            assert env.run("exec", cid, "/bin/true").returncode == 0
        assert not (Path(env.work / "i2") / "manifest.json").exists()
    finally:
        env.run("delete", "--force", "s1")
        env.run("delete", "--force", "s2")


def test_a_foreground_restore_relays_the_output_and_exits_with_the_status(env: Env) -> None:
    bundle = env.bundle(
        ["/bin/sh", "-c", "i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.2; done"]
    )
    r = env.run("run", "--detach", "--bundle", str(bundle), "f1", env=BLOCK, capture=False)
    assert r.returncode == 0, (env.work / "out.log").read_text()
    image = env.work / "img"
    try:
        time.sleep(3)
        r = env.run("checkpoint", "--image-path", str(image), "f1")
        assert r.returncode == 0, r.stderr.decode()
        assert env.run("delete", "f1").returncode == 0
        last = max(
            int(line.split()[1])
            for line in (env.work / "out.log").read_text().splitlines()
            if line.startswith("tick ")
        )
        fg = subprocess.Popen(
            env.argv("restore", "--image-path", str(image), "--bundle", str(bundle), "f1"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert fg.stdout is not None
            first = int(fg.stdout.readline().split()[1])
            # It goes on from where it stood (a tick may have been in flight), not from 1.
            assert last - 2 <= first <= last + 2, (last, first)
            assert int(fg.stdout.readline().split()[1]) == first + 1
            assert env.run("kill", "f1", "KILL").returncode == 0
            assert fg.wait(60) == 137
        finally:
            fg.kill()
            fg.wait()
        assert not (env.root / "f1").exists()
    finally:
        env.run("delete", "--force", "f1")
