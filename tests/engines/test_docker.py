"""dockerd 20.10 (Debian) with ``runtimes.<name>.path`` = the runtime under test.

dockerd reaches the runtime through the private containerd's runc v2 shim (BinaryName);
runc itself is registered as ``runcx`` so that both runtimes take the same route.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.engines.conftest import Dockerd, check, describe, wait_for

IMG = "localhost/busybox:latest"
NONET = ("--network", "none")


def test_run_rm_output_and_exit_code(
    dockerd: Dockerd, runtime: str, cname: Callable[[], str]
) -> None:
    name = cname()
    rt = dockerd.runtime_name(runtime)
    p = dockerd(
        "run",
        "--rm",
        "--runtime",
        rt,
        *NONET,
        "--name",
        name,
        IMG,
        "sh",
        "-c",
        "echo out-$((6*7)); echo err-1 >&2; exit 7",
    )
    assert p.returncode == 7, describe(p)
    assert "out-42" in p.stdout, describe(p)
    assert "err-1" in p.stderr, describe(p)
    assert name not in dockerd.leftovers()


def test_detached_exec_stop_rm(dockerd: Dockerd, runtime: str, cname: Callable[[], str]) -> None:
    name = cname()
    rt = dockerd.runtime_name(runtime)
    check(dockerd("run", "-d", "--runtime", rt, *NONET, "--name", name, IMG, "sleep", "1000"))
    assert dockerd.inspect(name, "{{.State.Status}}") == "running"
    assert dockerd.inspect(name, "{{.HostConfig.Runtime}}") == rt

    p = check(dockerd("exec", name, "sh", "-c", "echo exec-$((2+3))"))
    assert p.stdout.strip() == "exec-5", describe(p)
    p = dockerd("exec", name, "sh", "-c", "exit 5")
    assert p.returncode == 5, describe(p)

    # sleep is PID 1 without a TERM handler: stop escalates to SIGKILL after 2 s.
    check(dockerd("stop", "-t", "2", name))
    assert dockerd.inspect(name, "{{.State.Status}}") == "exited"
    assert dockerd.inspect(name, "{{.State.ExitCode}}") in ("137", "143")
    check(dockerd("rm", name))
    assert name not in dockerd.leftovers()


def test_kill_signal(dockerd: Dockerd, runtime: str, cname: Callable[[], str]) -> None:
    name = cname()
    rt = dockerd.runtime_name(runtime)
    script = 'trap "echo got-usr1" USR1; echo ready; while :; do sleep 1; done'
    check(dockerd("run", "-d", "--runtime", rt, *NONET, "--name", name, IMG, "sh", "-c", script))

    def logs() -> str:
        p = dockerd("logs", name)
        return p.stdout + p.stderr

    wait_for("container to print ready", lambda: "ready" in logs())
    check(dockerd("kill", "-s", "USR1", name))
    wait_for("the USR1 trap to run", lambda: "got-usr1" in logs())
    assert dockerd.inspect(name, "{{.State.Status}}") == "running"

    check(dockerd("kill", name))  # SIGKILL
    p = check(dockerd("wait", name))
    assert p.stdout.strip() == "137", describe(p)
    check(dockerd("rm", name))


def test_pause_top(dockerd: Dockerd, runtime: str, cname: Callable[[], str]) -> None:
    name = cname()
    rt = dockerd.runtime_name(runtime)
    check(dockerd("run", "-d", "--runtime", rt, *NONET, "--name", name, IMG, "sleep", "1000"))

    # docker top -> runtime `ps --format json <id>`, then ps(1) on the host for those PIDs.
    p = dockerd("top", name)
    print(describe(p))
    check(p)
    lines = p.stdout.strip().splitlines()
    assert "PID" in lines[0].split() and len(lines) >= 2, describe(p)

    check(dockerd("pause", name))
    assert dockerd.inspect(name, "{{.State.Status}}") == "paused"
    check(dockerd("unpause", name))
    assert dockerd.inspect(name, "{{.State.Status}}") == "running"
    p = check(dockerd("exec", name, "echo", "alive"))
    assert p.stdout.strip() == "alive", describe(p)
    check(dockerd("rm", "-f", name))


def test_privileged_sees_the_guests_devices_not_the_hosts(
    dockerd: Dockerd, runtime: str, cname: Callable[[], str]
) -> None:
    """``docker run --privileged`` lists every host /dev node: a VM gives the guest's."""
    import os
    from pathlib import Path

    from tests.engines.conftest import COCOON

    rt = dockerd.runtime_name(runtime)
    script = "ls /dev; echo ==; cat /proc/partitions"
    p = dockerd("run", "--rm", "--privileged", "--runtime", rt, *NONET, IMG, "sh", "-c", script)
    if runtime != COCOON and "unable to apply caps" in p.stderr:
        # docker 20.10 asks for capabilities this host's runc cannot set.
        pytest.skip(f"runc here: {p.stderr.strip()}")
    check(p)
    devs, _, parts = p.stdout.partition("==\n")
    names = set(devs.split())
    host_only = {"kvm", "zram0", "vsock", "sda", "nvme0"} & set(os.listdir("/dev"))
    if runtime == COCOON:
        assert host_only and not names & host_only, describe(p)
        assert "vda" in names and parts.strip() != Path("/proc/partitions").read_text().strip()
    else:
        assert host_only <= names, describe(p)
