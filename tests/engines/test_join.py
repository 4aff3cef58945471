"""Containers that join a running Cocoon container's namespaces live in its VM.

podman pods (infra + members) and ``--network container:A`` (podman, docker): one
QEMU for all, the members reach each other on localhost, share IPC/UTS (and PID
with ``--share pid``), keep their own exit codes, and go in any order. A runc
container's namespace stays refused and untouched.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.engines.conftest import (
    COCOON,
    COCOON_DEFAULT_ROOT,
    RUNC,
    Dockerd,
    Podman,
    PtySession,
    check,
    describe,
    run,
    wait_for,
)

IMG = "localhost/busybox:latest"
NONET = ("--network", "none")
# A server that answers every connection (busybox nc, persistent with -ll).
SERVER = ("nc", "-ll", "-p", "7000", "-e", "echo", "hello-from-server")
CLIENT = "for i in $(seq 60); do nc 127.0.0.1 7000 </dev/null && break; sleep 1; done"

# Cocoon only (the leak check follows the runtime parameter); runc has no VM to share.
pytestmark = [pytest.mark.e2e, pytest.mark.parametrize("runtime", ["cocoon"], indirect=True)]


@pytest.fixture
def cocoon_rt(runtime: str) -> str:
    return runtime


def _states(root: Path) -> dict[str, dict[str, object]]:
    out = {}
    for d in root.iterdir() if root.is_dir() else []:
        try:
            out[d.name] = json.loads((d / "state.json").read_text())
        except (OSError, ValueError):
            continue
    return out


def qemu_pids_of(root: Path, ids: list[str]) -> set[int]:
    """The QEMU PIDs recorded by the sandboxes these containers live in."""
    states = _states(root)
    pids = set()
    for cid in ids:
        st = states.get(cid)
        assert st is not None, f"no state for {cid} under {root}"
        home = states.get(str(st.get("sandbox") or cid), {})
        pid = int(home.get("qemu_pid", 0) or 0)  # type: ignore[call-overload]
        assert pid and os.path.exists(f"/proc/{pid}"), f"{cid}: no live QEMU ({home})"
        pids.add(pid)
    return pids


def full_id(engine: Callable[..., object], name: str) -> str:
    p = engine("inspect", "--format", "{{.Id}}", name)
    return check(p).stdout.strip()  # type: ignore[arg-type]


@pytest.fixture
def pod(podman: Podman, cname: Callable[[], str]) -> Iterator[str]:
    name = cname()
    yield name
    podman("pod", "rm", "-f", "-t", "0", name, runtime=COCOON)


def test_podman_pod_is_one_vm(
    podman: Podman, cocoon_rt: str, cname: Callable[[], str], pod: str
) -> None:
    check(
        podman(
            "pod", "create", "--name", pod, "--share", "net,ipc,uts,pid", *NONET, runtime=cocoon_rt
        )
    )
    srv, cli = cname(), cname()
    check(podman("run", "-d", "--pod", pod, "--name", srv, IMG, *SERVER, runtime=cocoon_rt))
    # The client reaches the server on the pod's localhost and exits with its own code.
    p = podman(
        "run", "--pod", pod, "--name", cli, IMG, "sh", "-c", CLIENT + "; exit 9", runtime=cocoon_rt
    )
    assert "hello-from-server" in p.stdout, describe(p)
    infra = check(podman("pod", "inspect", "--format", "{{.InfraContainerID}}", pod)).stdout
    ids = [infra.strip(), full_id(podman, srv)]
    assert len(qemu_pids_of(COCOON_DEFAULT_ROOT, ids)) == 1
    # A third member: IPC and UTS namespaces are the pod's, and so is PID (--share pid):
    # it sees the server's nc.
    probe = podman(
        "run",
        "--rm",
        "--pod",
        pod,
        IMG,
        "sh",
        "-c",
        "readlink /proc/self/ns/ipc; hostname; ps -o args",
        runtime=cocoon_rt,
    )
    check(probe)
    srv_ipc = check(podman("exec", srv, "readlink", "/proc/self/ns/ipc", runtime=cocoon_rt))
    assert srv_ipc.stdout.split()[0] == probe.stdout.split()[0], describe(probe)
    assert "nc -ll -p 7000" in probe.stdout, describe(probe)
    # Exit codes are per member; the server keeps running.
    code = check(podman("inspect", "--format", "{{.State.ExitCode}}", cli)).stdout.strip()
    assert code == "9"
    assert podman.status(srv) == "running"
    # Member state says which sandbox it lives in.
    st = json.loads(check(run([COCOON, "state", ids[1]])).stdout)
    assert st["annotations"]["io.cocoon.sandbox"] == ids[0]
    check(podman("pod", "rm", "-f", "-t", "0", pod, runtime=cocoon_rt))
    assert not {i for i in ids if (COCOON_DEFAULT_ROOT / i).exists()}


def test_podman_pod_without_shared_pid_keeps_its_own(
    podman: Podman, cocoon_rt: str, cname: Callable[[], str], pod: str
) -> None:
    check(podman("pod", "create", "--name", pod, *NONET, runtime=cocoon_rt))
    srv = cname()
    check(podman("run", "-d", "--pod", pod, "--name", srv, IMG, *SERVER, runtime=cocoon_rt))
    probe = check(
        podman(
            "run", "--rm", "--pod", pod, IMG, "sh", "-c", "ps -o args; " + CLIENT, runtime=cocoon_rt
        )
    )
    assert "hello-from-server" in probe.stdout, describe(probe)
    assert "nc -ll" not in probe.stdout.split("hello-from-server")[0], describe(probe)
    # pod stop/start: a new infra VM, and the member joins it again.
    infra = check(podman("pod", "inspect", "--format", "{{.InfraContainerID}}", pod)).stdout
    ids = [infra.strip(), full_id(podman, srv)]
    (before,) = qemu_pids_of(COCOON_DEFAULT_ROOT, ids)
    check(podman("pod", "stop", "-t", "0", pod, runtime=cocoon_rt))
    wait_for("the VM to go", lambda: not os.path.exists(f"/proc/{before}"), 60, 0.5)
    check(podman("pod", "start", pod, runtime=cocoon_rt))
    assert len(qemu_pids_of(COCOON_DEFAULT_ROOT, ids)) == 1
    top = check(podman("pod", "top", pod, runtime=cocoon_rt))
    assert top.stdout.strip(), describe(top)
    check(podman("pod", "rm", "-f", "-t", "0", pod, runtime=cocoon_rt))


@pytest.mark.parametrize("owner_first", [True, False], ids=["owner-first", "joiner-first"])
def test_podman_network_container(
    podman: Podman, cocoon_rt: str, cname: Callable[[], str], owner_first: bool
) -> None:
    a, j = cname(), cname()
    check(podman("run", "-d", *NONET, "--name", a, IMG, *SERVER, runtime=cocoon_rt))
    check(
        podman(
            "run",
            "-d",
            "--network",
            f"container:{a}",
            "--name",
            j,
            IMG,
            "sh",
            "-c",
            CLIENT + " > /tmp/got; sleep 1000",
            runtime=cocoon_rt,
        )
    )
    got = lambda: podman("exec", j, "cat", "/tmp/got", runtime=cocoon_rt).stdout  # noqa: E731
    wait_for("the joiner to reach A on localhost", lambda: "hello-from-server" in got(), 120, 1)
    ids = [full_id(podman, a), full_id(podman, j)]
    assert len(qemu_pids_of(COCOON_DEFAULT_ROOT, ids)) == 1
    (qemu,) = qemu_pids_of(COCOON_DEFAULT_ROOT, ids)
    if owner_first:
        # podman removes no container others depend on: stop A first, as with runc the
        # joiner keeps running (in the same VM), then go in podman's order.
        check(podman("stop", "-t", "0", a, runtime=cocoon_rt))
        assert podman.status(j) == "running"
        assert os.path.exists(f"/proc/{qemu}")
        p = check(podman("exec", j, "echo", "still-here", runtime=cocoon_rt))
        assert "still-here" in p.stdout
    check(podman("rm", "-f", "-t", "0", j, runtime=cocoon_rt))
    if not owner_first:
        assert podman.status(a) == "running"
        p = check(podman("exec", a, "echo", "still-here", runtime=cocoon_rt))
        assert "still-here" in p.stdout
    check(podman("rm", "-f", "-t", "0", a, runtime=cocoon_rt))
    wait_for("the VM to go", lambda: not os.path.exists(f"/proc/{qemu}"), 60, 0.5)


@pytest.mark.parametrize("owner_first", [True, False], ids=["owner-first", "joiner-first"])
def test_docker_network_container(
    dockerd: Dockerd, cocoon_rt: str, cname: Callable[[], str], owner_first: bool
) -> None:
    rt = dockerd.runtime_name(COCOON)
    a, j0, j = cname(), cname(), cname()
    check(dockerd("run", "-d", "--runtime", rt, *NONET, "--name", a, IMG, *SERVER))
    p = dockerd(
        "run",
        "--runtime",
        rt,
        "--network",
        f"container:{a}",
        "--name",
        j0,
        IMG,
        "sh",
        "-c",
        CLIENT + "; exit 3",
    )
    assert p.returncode == 3 and "hello-from-server" in p.stdout, describe(p)
    check(dockerd("rm", j0))
    check(
        dockerd(
            "run",
            "-d",
            "--runtime",
            rt,
            "--network",
            f"container:{a}",
            "--name",
            j,
            IMG,
            "sh",
            "-c",
            CLIENT + "; sleep 1000",
        )
    )
    logs = lambda: dockerd("logs", j).stdout  # noqa: E731
    wait_for("the joiner to reach A on localhost", lambda: "hello-from-server" in logs(), 120, 1)
    root = dockerd.runtime_roots(COCOON)[0]
    aid, jid = dockerd.inspect(a, "{{.Id}}"), dockerd.inspect(j, "{{.Id}}")
    assert _states(root)[jid].get("sandbox") == aid
    (qemu,) = qemu_pids_of(root, [aid, jid])
    if owner_first:
        # As with runc, the joiner keeps running (and its namespaces) without A; A's
        # record is gone, its VM lives until its last container goes.
        check(dockerd("rm", "-f", a))
        assert dockerd.inspect(j, "{{.State.Status}}") == "running"
        assert _states(root)[aid].get("deleted")
        assert check(run([COCOON, "--root", str(root), "state", aid]), 1)
        assert os.path.exists(f"/proc/{qemu}")
        assert "still" in check(dockerd("exec", j, "echo", "still")).stdout
        check(dockerd("rm", "-f", j))
    else:
        check(dockerd("rm", "-f", j))
        assert dockerd.inspect(a, "{{.State.Status}}") == "running"
        assert os.path.exists(f"/proc/{qemu}")
        check(dockerd("rm", "-f", a))
    wait_for("the VM to go", lambda: not os.path.exists(f"/proc/{qemu}"), 60, 0.5)
    assert not {aid, jid} & set(_states(root))


def test_podman_pod_member_with_a_tty(
    podman: Podman,
    cocoon_rt: str,
    cname: Callable[[], str],
    pod: str,
    spawn_pty: Callable[..., PtySession],
) -> None:
    """A member's pty and exit status are its own (the stub's console socket)."""
    check(podman("pod", "create", "--name", pod, *NONET, runtime=cocoon_rt))
    srv = cname()
    check(podman("run", "-d", "--pod", pod, "--name", srv, IMG, *SERVER, runtime=cocoon_rt))
    s = spawn_pty(
        podman.argv("run", "-it", "--rm", "--pod", pod, IMG, "/bin/sh", runtime=cocoon_rt),
        env=podman.env,
    )
    s.expect("# ")
    s.send("tty; nc 127.0.0.1 7000 </dev/null\r")
    s.expect("/dev/pts/")
    s.expect("hello-from-server")
    s.send("exit 4\r")
    assert s.wait() == 4, s.output
    assert podman.status(srv) == "running"
    check(podman("pod", "rm", "-f", "-t", "0", pod, runtime=cocoon_rt))


def test_podman_pid_and_ipc_of_a_with_a_network_of_its_own(
    podman: Podman, cocoon_rt: str, cname: Callable[[], str]
) -> None:
    """``--pid/--ipc container:A --network none``: in A's VM, seeing A's processes and
    sharing its IPC, but on a loopback of its own (A's server is not on it)."""
    a = cname()
    check(podman("run", "-d", *NONET, "--name", a, IMG, *SERVER, runtime=cocoon_rt))
    p = podman(
        "run", "--rm", "--pid", f"container:{a}", "--ipc", f"container:{a}", *NONET, IMG,
        "sh", "-c", "ps -o args; readlink /proc/self/ns/ipc; nc -w 2 127.0.0.1 7000 "
        "</dev/null; echo nc=$?",
        runtime=cocoon_rt,
    )  # fmt: skip
    check(p)
    assert "nc -ll -p 7000" in p.stdout, describe(p)  # A's process, seen
    assert "nc=1" in p.stdout and "refused" in p.stderr, describe(p)  # not A's localhost
    a_ipc = check(podman("exec", a, "readlink", "/proc/self/ns/ipc", runtime=cocoon_rt)).stdout
    assert a_ipc.strip() in p.stdout, describe(p)
    check(podman("rm", "-f", "-t", "0", a, runtime=cocoon_rt))


def test_runc_namespace_is_refused_and_untouched(
    podman: Podman, cocoon_rt: str, cname: Callable[[], str]
) -> None:
    a, j = cname(), cname()
    check(podman("run", "-d", *NONET, "--name", a, IMG, "sleep", "1000", runtime=RUNC))
    pid = check(podman("inspect", "--format", "{{.State.Pid}}", a)).stdout.strip()
    before = check(podman("exec", a, "ip", "-o", "link", runtime=RUNC)).stdout
    p = podman(
        "run", "-d", "--network", f"container:{a}", "--name", j, IMG, "true", runtime=cocoon_rt
    )
    assert p.returncode != 0, describe(p)
    assert "not Cocoon's" in p.stderr, describe(p)
    assert f"process {pid}" in p.stderr or "belongs to another container" in p.stderr
    podman("rm", "-f", "-t", "0", j)
    after = check(podman("exec", a, "ip", "-o", "link", runtime=RUNC)).stdout
    assert after == before
    assert podman.status(a) == "running"
    check(podman("rm", "-f", "-t", "0", a, runtime=RUNC))
