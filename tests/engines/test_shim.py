"""containerd 1.6 driving ``containerd-shim-cocoon-v2`` (runtime ``io.containerd.cocoon.v2``).

Through ctr: one container = a pod of one = one VM. Through the CRI plugin (a small
gRPC client standing in for the kubelet): a pod of two containers in one VM. Every
test ends with nothing of Cocoon's left: no shim, QEMU or virtiofsd process, no
sandbox state dir, no shim socket.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.engines.conftest import (
    LEAK_WAIT,
    PtySession,
    ShimContainerd,
    check,
    describe,
    mounts_under,
    processes_matching,
    run,
    wait_for,
)

pytestmark = pytest.mark.e2e

IMG = "localhost/busybox:latest"
RT = ShimContainerd.RUNTIME
SHIM_ROOT = Path("/run/cocoon-shim")


def qemu_pids(marker: str) -> list[int]:
    return sorted(
        pid for pid, cmd in processes_matching([marker]).items() if "qemu-system" in cmd.split()[0]
    )


class Events:
    """``ctr events`` in the background: (namespace, topic, payload) of each event."""

    def __init__(self, ctrd: ShimContainerd, path: Path) -> None:
        self.path = path
        self.out = open(path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            ctrd.ctr_argv("events"),
            stdout=self.out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        time.sleep(0.3)

    def events(self) -> list[tuple[str, str, dict[str, object]]]:
        out = []
        for line in self.path.read_text(errors="replace").splitlines():
            m = re.match(r"^\S+ \S+ \S+ \S+ (\S+) (/\S+) (\{.*\})$", line)
            if m:
                out.append((m.group(1), m.group(2), json.loads(m.group(3))))
        return out

    def topics_for(self, cid: str) -> list[str]:
        return [t for _, t, p in self.events() if p.get("container_id") == cid]

    def matching(self, cid: str, topic: str, pid_id: str = "") -> list[dict[str, object]]:
        return [
            p
            for _, t, p in self.events()
            if t == topic and p.get("container_id") == cid and (not pid_id or p.get("id") == pid_id)
        ]

    def wait_topic(
        self, cid: str, topic: str, pid_id: str = "", timeout: float = 60
    ) -> dict[str, object]:
        """The first ``topic`` event of container ``cid`` (and process ``pid_id``, if given)."""
        wait_for(f"{topic} for {cid}", lambda: bool(self.matching(cid, topic, pid_id)), timeout)
        return self.matching(cid, topic, pid_id)[0]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.out.close()


@pytest.fixture
def events(shim_containerd: ShimContainerd, tmp_path: Path) -> Iterator[Events]:
    ev = Events(shim_containerd, tmp_path / "events.txt")
    yield ev
    ev.stop()


@pytest.fixture(autouse=True)
def _no_shim_leaks(shim_containerd: ShimContainerd) -> Iterator[None]:
    """After each test: no process naming the shim's state, no state dir, no socket left."""
    markers = [str(SHIM_ROOT) + "/", f"-address\0{shim_containerd.address}\0"]

    def state() -> set[str]:
        return {str(p) for p in SHIM_ROOT.glob("*/*")} if SHIM_ROOT.exists() else set()

    before_procs = set(processes_matching(markers))
    before_state = state()
    yield

    def new() -> tuple[dict[int, str], set[str], list[str]]:
        procs = {p: c for p, c in processes_matching(markers).items() if p not in before_procs}
        return procs, state() - before_state, mounts_under(shim_containerd.state)

    try:
        wait_for("shim processes and state to go", lambda: new() == ({}, set(), []), LEAK_WAIT)
    except AssertionError:
        procs, left, mounts = new()
        pytest.fail(f"leaks after test: processes {procs}, state {sorted(left)}, mounts {mounts}")


@pytest.fixture
def cid() -> str:
    return f"sh{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------- ctr


def test_run_rm_output_exit_code(shim_containerd: ShimContainerd, cid: str) -> None:
    p = shim_containerd.ctr(
        "run", "--rm", "--runtime", RT, IMG, cid,
        "sh", "-c", "echo out-$((6*7)); echo err-1 >&2; seq 1 100000; exit 7",
    )  # fmt: skip
    assert p.returncode == 7, describe(p)
    lines = p.stdout.splitlines()
    assert lines[0] == "out-42", describe(p)
    # ~600 KiB right before the exit: none of it is lost.
    assert lines[1:] == [str(i) for i in range(1, 100001)], describe(p)[:2000]
    assert "err-1" in p.stderr, describe(p)
    assert cid not in shim_containerd.containers()
    # The shim's log reaches containerd's (through the bundle's log FIFO).
    wait_for(
        "the shim's log in containerd's",
        lambda: f"pod={cid}" in shim_containerd.log.read_text(errors="replace"),
        10,
    )


def test_run_stdin_reaches_the_container(shim_containerd: ShimContainerd, cid: str) -> None:
    p = subprocess.run(
        shim_containerd.ctr_argv("run", "--rm", "--runtime", RT, IMG, cid, "sh", "-c", "wc -l"),
        input="a\nb\nc\n",
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert p.returncode == 0 and p.stdout.strip() == "3", describe(p)


def test_run_tty(
    shim_containerd: ShimContainerd, cid: str, spawn_pty: Callable[..., PtySession]
) -> None:
    s = spawn_pty(shim_containerd.ctr_argv("run", "-t", "--rm", "--runtime", RT, IMG, cid, "sh"))
    s.send("stty size; tty; echo tty-$((1+1))\n")
    s.expect("24 80")  # ctr sent our window size with ResizePty
    s.expect("/dev/pts/")
    s.expect("tty-2")
    s.send("exit 3\n")
    assert s.wait() == 3, s.output


def test_exec_with_a_tty_and_kill_all(
    shim_containerd: ShimContainerd, cid: str, spawn_pty: Callable[..., PtySession]
) -> None:
    c = shim_containerd
    check(c.ctr("run", "-d", "--runtime", RT, IMG, cid, "sleep", "1000"))
    s = spawn_pty(c.ctr_argv("task", "exec", "-t", "--exec-id", "tty1", cid, "sh"))
    s.send("stty size; echo in-$((3*3))\n")
    s.expect("24 80")
    s.expect("in-9")
    s.send("exit 4\n")
    assert s.wait() == 4, s.output
    check(c.ctr("task", "exec", "-d", "--exec-id", "bg", cid, "sleep", "1000"))
    check(c.ctr("task", "kill", "--all", "-s", "SIGKILL", cid))
    wait_for("task to stop", lambda: c.tasks()[cid][1] == "STOPPED", 60)
    check(c.ctr("task", "delete", cid))
    check(c.ctr("container", "rm", cid))


def test_detached_exec_ps_metrics_pause_resume_kill_delete(
    shim_containerd: ShimContainerd, cid: str, events: Events
) -> None:
    c = shim_containerd
    check(c.ctr("run", "-d", "--runtime", RT, IMG, cid, "sleep", "1000"))
    pid, status = c.tasks()[cid]
    assert status == "RUNNING"
    assert qemu_pids(f"/{c.namespace}/{cid}/") == [pid]  # the task's pid is its VM's QEMU

    p = check(c.ctr("task", "exec", "--exec-id", "x1", cid, "sh", "-c", "echo exec-$((2+3))"))
    assert p.stdout.strip() == "exec-5", describe(p)
    p = c.ctr("task", "exec", "--exec-id", "x2", cid, "sh", "-c", "echo e >&2; exit 5")
    assert p.returncode == 5 and "e" in p.stderr, describe(p)

    p = check(c.ctr("task", "ps", cid))
    rows = p.stdout.strip().splitlines()
    assert rows[0].split() == ["PID", "INFO"] and len(rows) >= 2, describe(p)

    p = check(c.ctr("task", "metrics", cid))
    usage = re.search(r"memory\.usage\s+(\d+)", p.stdout)
    assert usage and int(usage.group(1)) > 0, describe(p)
    assert re.search(r"pids\.current\s+[1-9]", p.stdout), describe(p)

    check(c.ctr("task", "pause", cid))
    assert c.tasks()[cid][1] == "PAUSED"
    check(c.ctr("task", "resume", cid))
    assert c.tasks()[cid][1] == "RUNNING"

    check(c.ctr("task", "kill", "-s", "SIGKILL", cid))
    exit_event = events.wait_topic(cid, "/tasks/exit", pid_id=cid)
    assert exit_event.get("exit_status") == 137, exit_event
    wait_for("task to stop", lambda: c.tasks()[cid][1] == "STOPPED", 60)
    check(c.ctr("task", "delete", cid))
    check(c.ctr("container", "rm", cid))
    events.wait_topic(cid, "/tasks/delete")
    topics = events.topics_for(cid)
    for topic in (
        "/tasks/create", "/tasks/start", "/tasks/exec-added", "/tasks/exec-started",
        "/tasks/paused", "/tasks/resumed", "/tasks/exit", "/tasks/delete",
    ):  # fmt: skip
        assert topic in topics, topics
    assert topics.index("/tasks/create") < topics.index("/tasks/start")


def test_task_api_direct_error_codes_update_stats_connect(
    shim_containerd: ShimContainerd, cid: str
) -> None:
    """Talk to the running shim directly, as containerd would: bad requests get gRPC codes;
    Update reaches the guest cgroup (seen in Stats); Connect names the shim and the VM."""
    from google.protobuf import any_pb2

    from cocoon.shim.pods import socket_path
    from cocoon.shim.proto import cgroups2_pb2 as cg
    from cocoon.shim.proto import shim_pb2 as pb
    from cocoon.ttrpc.client import Client
    from cocoon.ttrpc.status import Code, RPCError
    from cocoon.ttrpc.transport import connect_unix

    c = shim_containerd
    check(c.ctr("run", "-d", "--runtime", RT, IMG, cid, "sleep", "1000"))
    sock = socket_path(c.address, c.namespace, cid)
    bundle = c.state / "io.containerd.runtime.v2.task" / c.namespace / cid

    async def calls() -> dict[str, int]:
        client = Client(await connect_unix(str(sock)), "shim")
        codes: dict[str, int] = {}

        async def code_of(name: str, method: str, req: object) -> None:
            try:
                await client.call("containerd.task.v2.Task", method, req.SerializeToString())  # type: ignore[attr-defined]
                codes[name] = 0
            except RPCError as exc:
                codes[name] = exc.code

        await code_of("unknown", "State", pb.StateRequest(id="nope"))
        await code_of("unknown-exec", "Kill", pb.KillRequest(id=cid, exec_id="nope", signal=9))
        await code_of("create-again", "Create", pb.CreateTaskRequest(id=cid, bundle=str(bundle)))
        await code_of("start-again", "Start", pb.StartRequest(id=cid))
        bad = any_pb2.Any(type_url="types.containerd.io/x", value=b"{not json")
        await code_of("exec-bad-json", "Exec", pb.ExecProcessRequest(id=cid, exec_id="e", spec=bad))
        await code_of("checkpoint", "Checkpoint", pb.CheckpointTaskRequest(id=cid))
        await code_of("state-ok", "State", pb.StateRequest(id=cid))
        # Update reaches the guest cgroup; Stats and Connect answer.
        limit = any_pb2.Any(
            type_url="types.containerd.io/opencontainers/runtime-spec/1/LinuxResources",
            value=json.dumps({"memory": {"limit": 48 << 20}}).encode(),
        )
        await code_of("update", "Update", pb.UpdateTaskRequest(id=cid, resources=limit))
        raw = await client.call(
            "containerd.task.v2.Task", "Stats", pb.StatsRequest(id=cid).SerializeToString()
        )
        stats = pb.StatsResponse.FromString(raw).stats
        assert stats.type_url == "io.containerd.cgroups.v2.Metrics"
        assert cg.Metrics.FromString(stats.value).memory.usage_limit == 48 << 20
        raw = await client.call(
            "containerd.task.v2.Task", "Connect", pb.ConnectRequest(id=cid).SerializeToString()
        )
        connect = pb.ConnectResponse.FromString(raw)
        assert connect.shim_pid > 0 and connect.task_pid == c.tasks()[cid][0]
        await client.close()
        return codes

    codes = asyncio.run(calls())
    assert codes == {
        "unknown": Code.NOT_FOUND,
        "unknown-exec": Code.NOT_FOUND,
        "create-again": Code.ALREADY_EXISTS,
        "start-again": Code.FAILED_PRECONDITION,
        "exec-bad-json": Code.INVALID_ARGUMENT,
        "checkpoint": Code.INVALID_ARGUMENT,  # no image path given
        "state-ok": 0,
        "update": 0,
    }, codes
    check(c.ctr("task", "kill", "-s", "SIGKILL", cid))
    wait_for("task to stop", lambda: c.tasks()[cid][1] == "STOPPED", 60)
    check(c.ctr("task", "delete", cid))
    check(c.ctr("container", "rm", cid))


def test_killed_vm_publishes_exit_and_deletes_cleanly(
    shim_containerd: ShimContainerd, cid: str, events: Events
) -> None:
    c = shim_containerd
    check(c.ctr("run", "-d", "--runtime", RT, IMG, cid, "sleep", "1000"))
    check(c.ctr("task", "exec", "-d", "--exec-id", "bg", cid, "sleep", "1000"))
    events.wait_topic(cid, "/tasks/exec-started")
    (qemu,) = qemu_pids(f"/{c.namespace}/{cid}/")
    os.kill(qemu, signal.SIGKILL)
    exits = []

    def both_exited() -> bool:
        exits[:] = events.matching(cid, "/tasks/exit")
        return len(exits) >= 2

    wait_for("TaskExit for the task and its exec", both_exited, 60)
    assert {e.get("id") for e in exits} == {cid, "bg"}, exits
    assert all(e.get("exit_status") not in (None, 0) for e in exits), exits
    wait_for("task to stop", lambda: c.tasks()[cid][1] == "STOPPED", 60)
    check(c.ctr("task", "delete", cid))
    check(c.ctr("container", "rm", cid))


# --------------------------------------------------------------------------- CRI


def _pod_config(name: str, logs: Path) -> object:
    from tests.engines.cri.client import cri

    # A pod network namespace from a loopback-only CNI config: the host's network
    # (NODE) is refused, and a bridge would touch the host's interfaces.
    pod = cri.NamespaceOption(network=cri.POD)
    return cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name=name, uid=uuid.uuid4().hex, namespace="default"),
        log_directory=str(logs),
        linux=cri.LinuxPodSandboxConfig(
            security_context=cri.LinuxSandboxSecurityContext(namespace_options=pod)
        ),
    )


def _container_config(name: str, command: list[str]) -> object:
    from tests.engines.cri.client import cri

    pod = cri.NamespaceOption(network=cri.POD)
    return cri.ContainerConfig(
        metadata=cri.ContainerMetadata(name=name),
        image=cri.ImageSpec(image=IMG),
        command=command,
        log_path=f"{name}.log",
        linux=cri.LinuxContainerConfig(
            security_context=cri.LinuxContainerSecurityContext(namespace_options=pod)
        ),
    )


def test_cri_pod_of_two_containers_shares_one_vm(
    shim_containerd: ShimContainerd, events: Events, tmp_path: Path
) -> None:
    from tests.engines.cri.client import CRI, cri

    c = shim_containerd
    client = CRI(c.address)
    logs = tmp_path / "logs"
    logs.mkdir()
    pod = _pod_config(f"pod{uuid.uuid4().hex[:6]}", logs)
    sid = client.call(
        "RunPodSandbox",
        cri.RunPodSandboxRequest(config=pod, runtime_handler="cocoon"),
        cri.RunPodSandboxResponse,
    ).pod_sandbox_id
    try:
        server = _container_config(
            "server",
            ["sh", "-c", "mkdir /tmp/w && echo pong > /tmp/w/index.html && "
             "exec httpd -f -p 8080 -h /tmp/w"],
        )  # fmt: skip
        client_ctr = _container_config("client", ["sleep", "100000"])
        ids = []
        for cfg in (server, client_ctr):
            ctr_id = client.call(
                "CreateContainer",
                cri.CreateContainerRequest(pod_sandbox_id=sid, config=cfg, sandbox_config=pod),
                cri.CreateContainerResponse,
            ).container_id
            client.call(
                "StartContainer",
                cri.StartContainerRequest(container_id=ctr_id),
                cri.StartContainerResponse,
            )
            ids.append(ctr_id)
        server_id, client_id = ids

        # One VM for the pod: one QEMU under the pod's sandbox state, none of its own
        # for either container.
        pod_root = SHIM_ROOT / ShimContainerd.CRI_NAMESPACE
        assert len(qemu_pids(f"{pod_root}/{sid}/")) == 1
        for x in ids:
            assert not qemu_pids(f"{pod_root}/{x}/") and not (pod_root / x).exists()

        def exec_sync(ctr_id: str, cmd: list[str]) -> tuple[int, str]:
            r = client.call(
                "ExecSync",
                cri.ExecSyncRequest(container_id=ctr_id, cmd=cmd, timeout=60),
                cri.ExecSyncResponse,
            )
            return r.exit_code, r.stdout.decode() + r.stderr.decode()

        # The containers talk over localhost (the server may still be starting).
        got: list[tuple[int, str]] = []

        def fetched() -> bool:
            got[:] = [exec_sync(client_id, ["wget", "-qO-", "http://127.0.0.1:8080/"])]
            return got[0] == (0, "pong\n")

        try:
            wait_for("the client to reach the server over localhost", fetched, 60, 1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: last try {got}") from None
        # The pod network (CNI: a veth to the test node namespace) is in the VM: the
        # guest owns the pod IP and the node reaches the server through it.
        code, out = exec_sync(server_id, ["ip", "-4", "-o", "addr", "show", "eth0"])
        match = re.search(rf"inet ({re.escape(c.POD_PREFIX)}\.\d+)/24", out)
        assert code == 0 and match, out
        fetch = (
            "import sys, urllib.request as u; "
            "print(u.urlopen(sys.argv[1], timeout=20).read().decode(), end='')"
        )
        from_node = run(
            ["nsenter", f"--net=/run/netns/{c.node}", sys.executable, "-c", fetch,
             f"http://{match.group(1)}:8080/"]
        )  # fmt: skip
        assert from_node.stdout == "pong\n", describe(from_node)
        # ... and share the pod's IPC, UTS and network namespaces.
        for ns in ("ipc", "uts", "net"):
            links = {
                exec_sync(x, ["readlink", f"/proc/self/ns/{ns}"]) for x in (server_id, client_id)
            }
            assert len(links) == 1, (ns, links)
        code, out = exec_sync(client_id, ["sh", "-c", "echo to-stderr >&2; exit 3"])
        assert (code, out) == (3, "to-stderr\n")
        for x in (sid, server_id, client_id):
            events.wait_topic(x, "/tasks/start", pid_id="")
    finally:
        client.call(
            "StopPodSandbox",
            cri.StopPodSandboxRequest(pod_sandbox_id=sid),
            cri.StopPodSandboxResponse,
        )
        client.call(
            "RemovePodSandbox",
            cri.RemovePodSandboxRequest(pod_sandbox_id=sid),
            cri.RemovePodSandboxResponse,
        )
        client.close()
    for x in (sid, server_id, client_id):
        events.wait_topic(x, "/tasks/exit")
    assert not qemu_pids(f"{SHIM_ROOT}/{ShimContainerd.CRI_NAMESPACE}/{sid}/")


def test_oom_kill_in_the_guest_publishes_task_oom(
    shim_containerd: ShimContainerd, cid: str, events: Events
) -> None:
    # dd's 128 MiB buffer cannot fit the container's 32 MiB guest cgroup.
    p = shim_containerd.ctr(
        "run", "--rm", "--runtime", RT, "--memory-limit", str(32 << 20), IMG, cid,
        "dd", "if=/dev/zero", "of=/dev/null", "bs=128M", "count=1",
    )  # fmt: skip
    assert p.returncode == 137, describe(p)
    events.wait_topic(cid, "/tasks/oom")
    topics = events.topics_for(cid)
    assert topics.index("/tasks/oom") < topics.index("/tasks/exit"), topics


def test_killed_shim_is_cleaned_up_by_delete(shim_containerd: ShimContainerd, cid: str) -> None:
    """containerd runs ``containerd-shim-cocoon-v2 delete`` for a shim that vanished: it must
    kill the VM the shim left and remove the pod's state."""
    c = shim_containerd
    check(c.ctr("run", "-d", "--runtime", RT, IMG, cid, "sleep", "1000"))
    shims = [
        pid
        for pid, cmd in processes_matching([f"{SHIM_ROOT}/{c.namespace}/{cid}\0"]).items()
        if "cocoon.shim.main" in cmd
    ]
    assert len(shims) == 1, shims
    assert qemu_pids(f"/{c.namespace}/{cid}/")
    os.kill(shims[0], signal.SIGKILL)
    # containerd drops the task of a dead shim once `delete` has cleaned up after it.
    wait_for("containerd to drop the task", lambda: cid not in c.tasks(), 60)
    wait_for(
        "the VM and the pod state to go",
        lambda: not qemu_pids(f"/{c.namespace}/{cid}/")
        and not (SHIM_ROOT / c.namespace / cid).exists(),
        30,
    )
    check(c.ctr("container", "rm", cid))


def test_annotated_pod_through_ctr_and_sandbox_delete_takes_members_down(
    shim_containerd: ShimContainerd, cid: str, events: Events
) -> None:
    """A pod made of CRI annotations by hand (the member with CRI-O's spelling): one VM;
    deleting the stopped sandbox container stops the member (TaskExit) too."""
    c = shim_containerd
    pod, member = cid, f"{cid}-m"
    sandbox_ann = [
        "--annotation", "io.kubernetes.cri.container-type=sandbox",
        "--annotation", f"io.kubernetes.cri.sandbox-id={pod}",
    ]  # fmt: skip
    member_ann = [
        "--annotation", "io.kubernetes.cri-o.ContainerType=container",
        "--annotation", f"io.kubernetes.cri-o.SandboxID={pod}",
    ]  # fmt: skip
    check(c.ctr("run", "-d", "--runtime", RT, *sandbox_ann, IMG, pod, "sleep", "1000"))
    check(c.ctr("run", "-d", "--runtime", RT, *member_ann, IMG, member, "sleep", "1000"))
    tasks = c.tasks()
    assert tasks[pod][0] == tasks[member][0] and tasks[member][1] == "RUNNING"
    assert len(qemu_pids(f"/{c.namespace}/{pod}/")) == 1
    assert not (SHIM_ROOT / c.namespace / member).exists()
    links = {
        check(c.ctr("task", "exec", "--exec-id", "l", x, "readlink", "/proc/self/ns/ipc")).stdout
        for x in (pod, member)
    }
    assert len(links) == 1, links

    check(c.ctr("task", "kill", "-s", "SIGKILL", pod))
    wait_for("the sandbox to stop", lambda: c.tasks()[pod][1] == "STOPPED", 60)
    check(c.ctr("task", "delete", pod))
    exit_event = events.wait_topic(member, "/tasks/exit", pid_id=member)
    assert exit_event.get("exit_status") == 137, exit_event
    wait_for("the member to stop", lambda: c.tasks()[member][1] == "STOPPED", 60)
    check(c.ctr("task", "delete", member))
    for x in (pod, member):
        check(c.ctr("container", "rm", x))


class Pod:
    """A CRI pod (sandbox + containers) through containerd's CRI, removed on exit."""

    def __init__(self, c: ShimContainerd, logs: Path, pid: int | None = None) -> None:
        from tests.engines.cri.client import CRI, cri

        self.c = c
        self.client = CRI(c.address)
        self.config = _pod_config(f"pod{uuid.uuid4().hex[:6]}", logs)
        if pid is not None:
            self.config.linux.security_context.namespace_options.pid = pid  # type: ignore[attr-defined]
        self.pid_mode = pid
        self.id = self.client.call(
            "RunPodSandbox",
            cri.RunPodSandboxRequest(config=self.config, runtime_handler="cocoon"),
            cri.RunPodSandboxResponse,
        ).pod_sandbox_id

    def run(self, name: str, command: list[str]) -> str:
        from tests.engines.cri.client import cri

        cfg = _container_config(name, command)
        if self.pid_mode is not None:
            cfg.linux.security_context.namespace_options.pid = self.pid_mode  # type: ignore[attr-defined]
        ctr_id = self.client.call(
            "CreateContainer",
            cri.CreateContainerRequest(
                pod_sandbox_id=self.id, config=cfg, sandbox_config=self.config
            ),
            cri.CreateContainerResponse,
        ).container_id
        self.client.call(
            "StartContainer",
            cri.StartContainerRequest(container_id=ctr_id),
            cri.StartContainerResponse,
        )
        return ctr_id

    def exec_sync(self, ctr_id: str, cmd: list[str]) -> tuple[int, str]:
        from tests.engines.cri.client import cri

        r = self.client.call(
            "ExecSync",
            cri.ExecSyncRequest(container_id=ctr_id, cmd=cmd, timeout=60),
            cri.ExecSyncResponse,
        )
        return r.exit_code, r.stdout.decode() + r.stderr.decode()

    def stop_container(self, ctr_id: str, timeout: int) -> None:
        from tests.engines.cri.client import cri

        self.client.call(
            "StopContainer",
            cri.StopContainerRequest(container_id=ctr_id, timeout=timeout),
            cri.StopContainerResponse,
        )

    def remove(self) -> None:
        from tests.engines.cri.client import cri

        self.client.call(
            "StopPodSandbox",
            cri.StopPodSandboxRequest(pod_sandbox_id=self.id),
            cri.StopPodSandboxResponse,
        )
        self.client.call(
            "RemovePodSandbox",
            cri.RemovePodSandboxRequest(pod_sandbox_id=self.id),
            cri.RemovePodSandboxResponse,
        )
        self.client.close()


@pytest.fixture
def cri_pod(shim_containerd: ShimContainerd, tmp_path: Path) -> Iterator[Callable[..., Pod]]:
    pods: list[Pod] = []

    def make(pid: int | None = None) -> Pod:
        logs = tmp_path / f"logs{len(pods)}"
        logs.mkdir()
        pods.append(Pod(shim_containerd, logs, pid))
        return pods[-1]

    yield make
    for p in pods:
        p.remove()


def test_exec_with_a_tty_and_kubernetes_length_ids(
    shim_containerd: ShimContainerd,
    cri_pod: Callable[..., Pod],
    spawn_pty: Callable[..., PtySession],
) -> None:
    """``kubectl exec -it``: 64-hex container and exec ids, a terminal (the guest's console
    socket path must not be built from them: AF_UNIX paths are limited to 108 bytes)."""
    pod = cri_pod()
    ctr_id = pod.run("tty", ["sleep", "100000"])
    assert re.fullmatch(r"[0-9a-f]{64}", ctr_id)
    exec_id = uuid.uuid4().hex + uuid.uuid4().hex
    argv = shim_containerd.ctr_argv(
        "task", "exec", "-t", "--exec-id", exec_id, ctr_id, "sh",
        namespace=ShimContainerd.CRI_NAMESPACE,
    )  # fmt: skip
    s = spawn_pty(argv)
    s.send("tty; echo in-$((3*4))\n")
    s.expect("/dev/pts/")
    s.expect("in-12")
    s.send("exit 5\n")
    assert s.wait() == 5, s.output


def test_exec_whose_start_fails_ends_at_once(
    shim_containerd: ShimContainerd, cid: str, events: Events
) -> None:
    """An exec registered while its container ran, started after the container stopped:
    Start fails, and the exec ends there (Wait returns, TaskExit), so containerd does not
    wait for a Delete to release it."""
    from google.protobuf import any_pb2

    from cocoon.shim.pods import socket_path
    from cocoon.shim.proto import shim_pb2 as pb
    from cocoon.ttrpc.client import Client
    from cocoon.ttrpc.status import RPCError
    from cocoon.ttrpc.transport import connect_unix

    c = shim_containerd
    check(c.ctr("run", "-d", "--runtime", RT, IMG, cid, "sleep", "1000"))
    sock = socket_path(c.address, c.namespace, cid)
    task = "containerd.task.v2.Task"
    spec = any_pb2.Any(
        type_url="types.containerd.io/opencontainers/runtime-spec/1/Process",
        value=json.dumps({"args": ["true"], "cwd": "/"}).encode(),
    )

    async def calls() -> tuple[str, int]:
        client = Client(await connect_unix(str(sock)), "shim")
        try:
            req = pb.ExecProcessRequest(id=cid, exec_id="late", spec=spec)
            await client.call(task, "Exec", req.SerializeToString())
            check(c.ctr("task", "kill", "-s", "SIGKILL", cid))
            wait_for("task to stop", lambda: c.tasks()[cid][1] == "STOPPED", 60)
            try:
                await client.call(
                    task, "Start", pb.StartRequest(id=cid, exec_id="late").SerializeToString()
                )
                error = ""
            except RPCError as exc:
                error = str(exc)
            raw = await asyncio.wait_for(
                client.call(
                    task, "Wait", pb.WaitRequest(id=cid, exec_id="late").SerializeToString()
                ),
                30,
            )
            return error, pb.WaitResponse.FromString(raw).exit_status
        finally:
            await client.close()

    error, status = asyncio.run(calls())
    assert error and status != 0, (error, status)
    exit_event = events.wait_topic(cid, "/tasks/exit", pid_id="late")
    assert exit_event.get("exit_status") == status, exit_event
    check(c.ctr("task", "delete", cid))
    check(c.ctr("container", "rm", cid))


def test_pod_sharing_its_pid_namespace_stops_a_container_with_sigterm(
    cri_pod: Callable[..., Pod], events: Events
) -> None:
    """A pod that shares its PID namespace: the pause process is PID 1 there, so the
    container's command is not, and SIGTERM (StopContainer) ends it: 143, not 137."""
    from tests.engines.cri.client import cri

    pod = cri_pod(pid=cri.POD)
    ctr_id = pod.run("sleeper", ["sleep", "100000"])
    code, out = pod.exec_sync(ctr_id, ["cat", "/proc/1/cmdline"])
    assert code == 0 and "2147483647" in out, out  # the pause image's sleep
    code, out = pod.exec_sync(ctr_id, ["ps", "-o", "pid,args"])
    assert "sleep 100000" in out and "sleep 2147483647" in out, out
    pod.stop_container(ctr_id, timeout=20)
    exit_event = events.wait_topic(ctr_id, "/tasks/exit", pid_id=ctr_id)
    assert exit_event.get("exit_status") == 143, exit_event


def test_pod_container_with_its_own_pid_namespace(cri_pod: Callable[..., Pod]) -> None:
    from tests.engines.cri.client import cri

    pod = cri_pod(pid=cri.CONTAINER)
    ctr_id = pod.run("own", ["sleep", "100000"])
    code, out = pod.exec_sync(ctr_id, ["cat", "/proc/1/cmdline"])
    assert code == 0 and out.startswith("sleep\x00100000"), out


@pytest.mark.parametrize("shared", [True, False], ids=["shareProcessNamespace", "own"])
def test_pod_siblings_see_each_others_processes_only_when_shared(
    cri_pod: Callable[..., Pod], shared: bool
) -> None:
    """Kubernetes' shareProcessNamespace: one PID namespace for the pod in the guest, so
    a container sees (and may signal) its sibling's processes; without it, it does not."""
    from tests.engines.cri.client import cri

    pod = cri_pod(pid=cri.POD if shared else cri.CONTAINER)
    pod.run("first", ["sleep", "100001"])
    second = pod.run("second", ["sleep", "100002"])
    code, out = pod.exec_sync(second, ["ps", "-o", "args"])
    assert code == 0 and "sleep 100002" in out, out
    assert ("sleep 100001" in out) == shared, out


@pytest.mark.parametrize(
    ("ns", "needle"),
    [
        ("ipc:/proc/self/ns/ipc", "not Cocoon's"),
        ("uts:/proc/self/ns/ipc", "is an ipc namespace, not uts"),
    ],
    ids=["host-namespace", "wrong-type"],
)
def test_namespace_paths_outside_the_pod_are_refused(
    shim_containerd: ShimContainerd, cid: str, ns: str, needle: str
) -> None:
    c = shim_containerd
    p = c.ctr("run", "--rm", "--runtime", RT, "--with-ns", ns, IMG, cid, "true")
    assert p.returncode != 0 and needle in p.stderr, describe(p)
    c.ctr("container", "rm", cid)


def test_hooks_run_where_runc_runs_them_poststart_after_the_start(
    shim_containerd: ShimContainerd, cid: str, tmp_path: Path
) -> None:
    """containerd's runc shim leaves the spec's hooks to runc; Cocoon's shim runs them at
    the same points: poststart once the container's process runs, poststop after Delete."""
    from tests.fixtures.bundle import default_spec, make_rootfs

    c = shim_containerd
    out = tmp_path / "hooks"
    out.mkdir()
    spec = default_spec(["sleep", "1000"])
    spec["root"] = {"path": str(make_rootfs(tmp_path / "rootfs"))}
    kinds = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart",
             "poststop")  # fmt: skip
    spec["hooks"] = {
        k: [
            {
                "path": "/bin/sh",
                "args": ["sh", "-c", f"cat > {out}/{k}.json; echo {k} >> {out}/order"],
            }
        ]
        for k in kinds
    }
    config = tmp_path / "config.json"
    config.write_text(json.dumps(spec))
    check(c.ctr("run", "-d", "--runtime", RT, "--config", str(config), cid))
    assert (out / "order").read_text().split() == list(kinds[:5])
    poststart = json.loads((out / "poststart.json").read_text())
    assert poststart["id"] == cid and poststart["status"] == "running", poststart
    assert poststart["pid"] == c.tasks()[cid][0]
    assert c.tasks()[cid][1] == "RUNNING"
    check(c.ctr("task", "kill", "-s", "SIGKILL", cid))
    wait_for("task to stop", lambda: c.tasks()[cid][1] == "STOPPED", 60)
    check(c.ctr("task", "delete", cid))
    assert (out / "order").read_text().split() == list(kinds)
    assert json.loads((out / "poststop.json").read_text())["status"] == "stopped"
    check(c.ctr("container", "rm", cid))


def test_container_without_a_hostname_sees_the_nodes(
    shim_containerd: ShimContainerd, cid: str
) -> None:
    """ctr's spec names no hostname: a runc container then sees the node's name."""
    import socket

    p = check(shim_containerd.ctr("run", "--rm", "--runtime", RT, IMG, cid, "hostname"))
    assert p.stdout.strip() == socket.gethostname(), describe(p)


def test_pod_member_sees_a_bind_source_mounted_after_the_pod_started(
    shim_containerd: ShimContainerd, tmp_path: Path
) -> None:
    """The kubelet mounts volumes (subPath, propagated mounts) after the sandbox started:
    sources are taken from the host's current mount namespace, and rslave
    (HOST_TO_CONTAINER) keeps later host mounts under a shared source coming."""
    from tests.engines.cri.client import CRI, cri

    client = CRI(shim_containerd.address)
    logs = tmp_path / "logs"
    logs.mkdir()
    late = tmp_path / "late"
    late.mkdir()
    pod = _pod_config(f"late{uuid.uuid4().hex[:6]}", logs)
    sid = client.call(
        "RunPodSandbox",
        cri.RunPodSandboxRequest(config=pod, runtime_handler="cocoon"),
        cri.RunPodSandboxResponse,
    ).pod_sandbox_id
    mounted: list[Path] = []
    try:
        # Only now, with the pod's VM running, does the source become a mount point.
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "late", str(late)], check=True)
        mounted.append(late)
        subprocess.run(["mount", "--make-shared", str(late)], check=True)
        (late / "x").write_text("made after the pod\n")
        (late / "sub").mkdir()
        cfg = _container_config("reader", ["sleep", "100000"])
        cfg.mounts.append(
            cri.Mount(
                container_path="/late",
                host_path=str(late),
                propagation=cri.PROPAGATION_HOST_TO_CONTAINER,
            )
        )
        ctr_id = client.call(
            "CreateContainer",
            cri.CreateContainerRequest(pod_sandbox_id=sid, config=cfg, sandbox_config=pod),
            cri.CreateContainerResponse,
        ).container_id
        client.call(
            "StartContainer",
            cri.StartContainerRequest(container_id=ctr_id),
            cri.StartContainerResponse,
        )

        def cat(path: str) -> tuple[int, str]:
            r = client.call(
                "ExecSync",
                cri.ExecSyncRequest(container_id=ctr_id, cmd=["cat", path], timeout=60),
                cri.ExecSyncResponse,
            )
            return r.exit_code, r.stdout.decode() + r.stderr.decode()

        assert cat("/late/x") == (0, "made after the pod\n")
        # A host mount under the (shared) source after the container started.
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "later", str(late / "sub")], check=True
        )
        mounted.insert(0, late / "sub")
        (late / "sub" / "y").write_text("propagated\n")
        assert cat("/late/sub/y") == (0, "propagated\n")
    finally:
        client.call(
            "StopPodSandbox",
            cri.StopPodSandboxRequest(pod_sandbox_id=sid),
            cri.StopPodSandboxResponse,
        )
        client.call(
            "RemovePodSandbox",
            cri.RemovePodSandboxRequest(pod_sandbox_id=sid),
            cri.RemovePodSandboxResponse,
        )
        client.close()
        for m in mounted:
            subprocess.run(["umount", str(m)], check=False)


def test_block_rootfs_by_annotation_through_the_shim(
    shim_containerd: ShimContainerd, cid: str
) -> None:
    """``io.cocoon.config.runtime.rootfs_mode=block`` on a ctr run: the shim's own
    overlay rootfs becomes the guest's erofs image + scratch overlay."""
    script = "echo w > /written && cat /written && grep ' / ' /proc/mounts"
    p = shim_containerd.ctr(
        "run", "--rm", "--runtime", RT,
        "--annotation", "io.cocoon.config.runtime.rootfs_mode=block",
        IMG, cid, "sh", "-c", script,
    )  # fmt: skip
    assert p.returncode == 0, describe(p)
    lines = p.stdout.splitlines()
    assert lines[0] == "w" and lines[1].startswith("overlay / overlay rw,"), describe(p)
    assert "lowerdir=/run/cocoon/block/" in lines[1], describe(p)
    assert cid not in shim_containerd.containers()
