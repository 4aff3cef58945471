"""podman 4.3 (via conmon) driving the runtime under test: ``podman --runtime <path>``."""

from __future__ import annotations

from collections.abc import Callable

from tests.engines.conftest import Podman, PtySession, check, describe, wait_for

IMG = "localhost/busybox:latest"
NONET = ("--network", "none")


def test_run_rm_output_and_exit_code(
    podman: Podman, runtime: str, cname: Callable[[], str]
) -> None:
    name = cname()
    p = podman(
        "run",
        "--rm",
        *NONET,
        "--name",
        name,
        IMG,
        "sh",
        "-c",
        "echo out-$((6*7)); echo err-1 >&2; exit 7",
        runtime=runtime,
    )
    assert p.returncode == 7, describe(p)
    assert "out-42" in p.stdout, describe(p)
    assert "err-1" in p.stderr, describe(p)
    assert name not in podman.leftovers()


def test_detached_exec_stop_rm(podman: Podman, runtime: str, cname: Callable[[], str]) -> None:
    name = cname()
    check(podman("run", "-d", *NONET, "--name", name, IMG, "sleep", "1000", runtime=runtime))
    assert podman.status(name) == "running"

    p = check(podman("exec", name, "sh", "-c", "echo exec-$((2+3))", runtime=runtime))
    assert p.stdout.strip() == "exec-5", describe(p)
    p = podman("exec", name, "sh", "-c", "exit 5", runtime=runtime)
    assert p.returncode == 5, describe(p)

    # sleep is PID 1 and has no TERM handler: stop falls back to SIGKILL after 2 s.
    check(podman("stop", "-t", "2", name, runtime=runtime))
    assert podman.status(name) == "exited"
    code = check(podman("inspect", "--format", "{{.State.ExitCode}}", name)).stdout.strip()
    assert code in ("137", "143"), code
    check(podman("rm", name, runtime=runtime))
    assert name not in podman.leftovers()


def test_kill_signal(podman: Podman, runtime: str, cname: Callable[[], str]) -> None:
    name = cname()
    script = 'trap "echo got-usr1" USR1; echo ready; while :; do sleep 1; done'
    check(podman("run", "-d", *NONET, "--name", name, IMG, "sh", "-c", script, runtime=runtime))

    def logs() -> str:
        p = podman("logs", name)
        return p.stdout + p.stderr

    wait_for("container to print ready", lambda: "ready" in logs())
    check(podman("kill", "-s", "USR1", name, runtime=runtime))
    wait_for("the USR1 trap to run", lambda: "got-usr1" in logs())
    assert podman.status(name) == "running"

    check(podman("kill", name, runtime=runtime))  # podman's default is SIGKILL
    p = check(podman("wait", name, runtime=runtime))
    assert p.stdout.strip() == "137", describe(p)
    check(podman("rm", name, runtime=runtime))


def test_interactive_tty(
    podman: Podman,
    runtime: str,
    cname: Callable[[], str],
    spawn_pty: Callable[..., PtySession],
) -> None:
    name = cname()
    s = spawn_pty(
        podman.argv("run", "-it", "--rm", *NONET, "--name", name, IMG, "/bin/sh", runtime=runtime),
        env=podman.env,
    )
    s.expect("# ")  # busybox sh prompt for root
    s.send("echo hi-$((1+1))\r")
    s.expect("hi-2")
    s.send("tty\r")
    s.expect("/dev/pts/")
    s.send("exit 3\r")
    assert s.wait() == 3, s.output


def test_pause_unpause(podman: Podman, runtime: str, cname: Callable[[], str]) -> None:
    name = cname()
    check(podman("run", "-d", *NONET, "--name", name, IMG, "sleep", "1000", runtime=runtime))
    check(podman("pause", name, runtime=runtime))
    assert podman.status(name) == "paused"
    check(podman("unpause", name, runtime=runtime))
    assert podman.status(name) == "running"
    p = check(podman("exec", name, "echo", "alive", runtime=runtime))
    assert p.stdout.strip() == "alive"
    check(podman("rm", "-f", "-t", "0", name, runtime=runtime))


def test_top(podman: Podman, runtime: str, cname: Callable[[], str]) -> None:
    """podman top reads /proc of the container's PID itself (no runtime call)."""
    name = cname()
    check(podman("run", "-d", *NONET, "--name", name, IMG, "sleep", "1000", runtime=runtime))
    p = podman("top", name, "pid", "comm", "args", runtime=runtime)
    print(describe(p))  # recorded for the report: what top sees with this runtime
    check(p)
    lines = p.stdout.strip().splitlines()
    assert lines[0].split()[:2] == ["PID", "COMMAND"], describe(p)
    assert len(lines) >= 2, describe(p)
    check(podman("rm", "-f", "-t", "0", name, runtime=runtime))


def test_uidmap_container_runs_with_the_image_owned_by_its_root(
    podman: Podman, runtime: str, cname: Callable[[], str]
) -> None:
    """``--uidmap``: podman chowns the image to the range; inside, it is root's."""
    script = (
        "id; cat /proc/self/uid_map /proc/self/gid_map; ls -ln / | grep -E ' (bin|etc)$';"
        " echo written > /dev/shm/f && cat /dev/shm/f"
    )
    maps = ("--uidmap", "0:100000:65536", "--gidmap", "0:100000:65536")
    p = check(
        podman(
            "run",
            "--rm",
            *NONET,
            *maps,
            "--name",
            cname(),
            IMG,
            "sh",
            "-c",
            script,
            runtime=runtime,
        )
    )
    lines = p.stdout.splitlines()
    assert lines[0].startswith("uid=0(root) gid=0(root)"), describe(p)
    assert [ln.split() for ln in lines[1:3]] == [["0", "100000", "65536"]] * 2, describe(p)
    owners = [(f[2], f[3], f[-1]) for f in (ln.split() for ln in lines[3:5])]
    assert owners == [("0", "0", "bin"), ("0", "0", "etc")], describe(p)
    assert lines[5] == "written", describe(p)


def test_privileged_sees_the_guests_devices_not_the_hosts(
    podman: Podman, runtime: str, cname: Callable[[], str]
) -> None:
    """``--privileged`` lists every host /dev node in the spec: in a VM the container
    gets the guest's devices instead (Kata's privileged_without_host_devices)."""
    import os
    from pathlib import Path

    from tests.engines.conftest import COCOON

    script = "ls /dev; echo ==; cat /proc/partitions"
    p = check(
        podman("run", "--rm", "--privileged", *NONET, IMG, "sh", "-c", script, runtime=runtime)
    )
    devs, _, parts = p.stdout.partition("==\n")
    names = set(devs.split())
    host_only = {"kvm", "zram0", "vsock", "sda", "nvme0"} & set(os.listdir("/dev"))
    host_parts = Path("/proc/partitions").read_text()
    if runtime == COCOON:
        assert host_only and not names & host_only, describe(p)
        assert "vda" in names and parts.strip() != host_parts.strip(), describe(p)
    else:  # runc: the host's own devices
        assert host_only <= names, describe(p)


def test_device_loop_is_written_through(
    podman: Podman, runtime: str, cname: Callable[[], str], tmp_path: object
) -> None:
    """``--device /dev/loopN:/dev/xdisk``: the container writes the host's block device."""
    import subprocess
    from pathlib import Path

    backing = Path(str(tmp_path)) / "disk.img"
    backing.write_bytes(b"\0" * (4 << 20))
    loop = subprocess.run(
        ["losetup", "-f", "--show", str(backing)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        script = "echo via-device | dd of=/dev/xdisk conv=sync 2>/dev/null; head -c 10 /dev/xdisk"
        p = check(
            podman(
                "run",
                "--rm",
                *NONET,
                "--device",
                f"{loop}:/dev/xdisk",
                IMG,
                "sh",
                "-c",
                script,
                runtime=runtime,
            )
        )
        assert p.stdout.startswith("via-device"), describe(p)
        assert backing.read_bytes()[:11] == b"via-device\n"
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)
