"""Checkpoint/restore through the engines (issue 13): podman, dockerd, ctr.

Every test runs a container that counts to ``/count`` every 0.1 s and appends one line to
``/starts`` when it starts: after a restore the counter goes on from where it was (no
restart from 0) and ``/starts`` still holds one line. Both files are in the container's
rootfs (for Cocoon: on the guest's scratch disk, saved in the image).

runc (with CRIU) is the reference and passes today; the ``cocoon`` variants need
``cocoon checkpoint``/``cocoon restore`` (and the shim's ``Checkpoint`` / ``Create`` from a
checkpoint): their containers use a block rootfs (checkpointable), by annotation for podman
and ctr, by the ``cocoon-block`` runtime (a config file) for dockerd. What each engine
passes to the runtime and expects back: docs/checkpoint-engines.md.

CRIU: podman checks ``criu --version`` >= 3.11 before it calls any runtime (Debian's
criu, scripts/setup-engines.sh); runc really dumps with it, and Debian 12's CRIU 3.17
cannot on kernels >= 6.13 (``vdso: Unexpected rt vDSO area bounds``, CRIU issue 2532,
fixed in 4.1): there the runc variants are skipped with that reason, never silently
(put a CRIU >= 4.1 first on PATH, e.g. /usr/local/sbin/criu, to run them).

Run: ``.venv/bin/pytest -q tests/engines/test_checkpoint.py -k runc`` (the reference,
~1 min), ``-k cocoon`` once the core has landed (boots VMs).
"""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.engines.conftest import (
    COCOON,
    LEAK_WAIT,
    RUNC,
    Containerd,
    Dockerd,
    Podman,
    ShimContainerd,
    check,
    describe,
    processes_matching,
    wait_for,
)

IMG = "localhost/busybox:latest"
NONET = ("--network", "none")
BLOCK = "io.cocoon.config.runtime.rootfs_mode=block"
COUNTER = "echo start >> /starts; i=0; while :; do i=$((i+1)); echo $i > /count; sleep 0.1; done"
MIN_COUNT = 15  # counted before the checkpoint: a restart from 0 cannot pass for a restore
SHIM_ROOT = Path("/run/cocoon-shim")


@functools.cache
def _criu_problem() -> str:
    """Why runc cannot checkpoint on this host ("" if it can)."""
    try:
        p = subprocess.run(["criu", "check"], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        return "criu is not installed (scripts/setup-engines.sh)"
    if p.returncode == 0:
        return ""
    version = subprocess.run(["criu", "--version"], capture_output=True, text=True).stdout
    err = (p.stderr or p.stdout).strip().splitlines()
    return (
        f"runc needs a CRIU that works on this kernel ({' '.join(version.split()[:2])}, "
        f"{subprocess.run(['uname', '-r'], capture_output=True, text=True).stdout.strip()}): "
        f"`criu check`: {err[0] if err else p.returncode}"
    )


def need_checkpoint(runtime: str) -> None:
    if runtime == RUNC and (why := _criu_problem()):
        pytest.skip(why)


def block_flags(runtime: str) -> list[str]:
    """podman/ctr flags that make a Cocoon container checkpointable."""
    return ["--annotation", BLOCK] if runtime == COCOON else []


def read_state(exec_cat: Callable[[str], str]) -> tuple[int, int]:
    """(count, number of starts) inside the container."""
    count = exec_cat("/count").strip()
    starts = exec_cat("/starts").split()
    return int(count or 0), len(starts)


def wait_counting(exec_cat: Callable[[str], str], above: int) -> int:
    """Wait until the counter exceeds ``above``; return the value seen."""
    seen = [0]

    def counted() -> bool:
        seen[0] = read_state(exec_cat)[0]
        return seen[0] > above

    wait_for(f"the counter to pass {above}", counted, interval=0.3)
    return seen[0]


def assert_continued(exec_cat: Callable[[str], str], before: int) -> None:
    """The restored counter goes on from ``before`` (at least), in the one original start."""
    count, starts = read_state(exec_cat)
    assert starts == 1, f"the container was restarted, not restored: {starts} starts"
    assert count >= before, f"counter went back: {count} < {before} (restarted from 0?)"
    wait_counting(exec_cat, count)  # and it is still counting


# --------------------------------------------------------------------------- podman


def _podman_cat(podman: Podman, runtime: str, name: str) -> Callable[[str], str]:
    return lambda path: check(podman("exec", name, "cat", path, runtime=runtime)).stdout


def _podman_run_counter(podman: Podman, runtime: str, name: str) -> Callable[[str], str]:
    args = ["run", "-d", *NONET, *block_flags(runtime), "--name", name, IMG, "sh", "-c", COUNTER]
    check(podman(*args, runtime=runtime))
    cat = _podman_cat(podman, runtime, name)
    wait_counting(cat, MIN_COUNT)
    return cat


def test_podman_checkpoint_and_restore_continues_the_counter(
    podman: Podman, runtime: str, cname: Callable[[], str]
) -> None:
    need_checkpoint(runtime)
    name = cname()
    cat = _podman_run_counter(podman, runtime, name)
    before = read_state(cat)[0]

    p = check(podman("container", "checkpoint", name, runtime=runtime))
    assert name in p.stdout, describe(p)
    state = "{{.State.Status}} {{.State.Checkpointed}}"
    assert check(podman("inspect", "--format", state, name)).stdout.split() == ["exited", "true"]

    p = check(podman("container", "restore", name, runtime=runtime))
    assert podman.status(name) == "running", describe(p)
    assert_continued(cat, before)
    # The restored container is an ordinary one to podman: pid, stats, kill, wait, rm.
    assert int(check(podman("inspect", "--format", "{{.State.Pid}}", name)).stdout) > 0
    check(podman("stats", "--no-stream", "--format", "{{.MemUsage}}", name, runtime=runtime))
    check(podman("kill", "-s", "KILL", name, runtime=runtime))
    assert check(podman("wait", name, runtime=runtime)).stdout.strip() == "137"
    check(podman("rm", "-f", "-t", "0", name, runtime=runtime))


def test_podman_checkpoint_leave_running_then_restore_that_image(
    podman: Podman, runtime: str, cname: Callable[[], str]
) -> None:
    need_checkpoint(runtime)
    name = cname()
    cat = _podman_run_counter(podman, runtime, name)
    before = read_state(cat)[0]

    # podman passes --leave-running twice, and CRIU-only flags (--tcp-established,
    # --file-locks) the runtime must accept.
    args = ["--leave-running", "--tcp-established", "--file-locks"]
    check(podman("container", "checkpoint", *args, name, runtime=runtime))
    assert podman.status(name) == "running"
    running = wait_counting(cat, before)  # the original goes on, never stopped

    check(podman("stop", "-t", "0", name, runtime=runtime))
    check(podman("container", "restore", "--tcp-established", name, runtime=runtime))
    assert podman.status(name) == "running"
    # The image was taken at `before` or a little later, and `running` was counted after it.
    assert_continued(cat, before)
    assert running > before
    check(podman("rm", "-f", "-t", "0", name, runtime=runtime))


def test_podman_export_and_import_under_a_new_name(
    podman: Podman, runtime: str, cname: Callable[[], str], tmp_path: Path
) -> None:
    need_checkpoint(runtime)
    name, new = cname(), cname()
    cat = _podman_run_counter(podman, runtime, name)
    before = read_state(cat)[0]

    archive = tmp_path / "ckpt.tar.zst"  # podman 4.3 compresses with zstd by default
    check(podman("container", "checkpoint", "--export", str(archive), name, runtime=runtime))
    assert archive.stat().st_size > 0
    assert podman.status(name) == "exited"

    args = ["container", "restore", "--import", str(archive), "--name", new]
    check(podman(*args, runtime=runtime))
    assert podman.status(new) == "running"
    assert podman.status(name) == "exited"  # the original is untouched
    assert_continued(_podman_cat(podman, runtime, new), before)
    check(podman("rm", "-f", "-t", "0", new, name, runtime=runtime))


# --------------------------------------------------------------------------- docker


def _docker_runtime(dockerd: Dockerd, runtime: str) -> str:
    return dockerd.COCOON_BLOCK if runtime == COCOON else dockerd.runtime_name(runtime)


def test_docker_checkpoint_create_and_start_from_it(
    dockerd: Dockerd, runtime: str, cname: Callable[[], str]
) -> None:
    need_checkpoint(runtime)
    name = cname()
    rt = _docker_runtime(dockerd, runtime)
    check(dockerd("run", "-d", "--runtime", rt, *NONET, "--name", name, IMG, "sh", "-c", COUNTER))

    def cat(path: str) -> str:
        return check(dockerd("exec", name, "cat", path)).stdout

    wait_counting(cat, MIN_COUNT)

    # dockerd pauses, checkpoints, resumes: with --leave-running the container goes on.
    check(dockerd("checkpoint", "create", "--leave-running", name, "cp0"))
    assert dockerd.inspect(name, "{{.State.Status}}") == "running"
    before = wait_counting(cat, read_state(cat)[0])

    check(dockerd("checkpoint", "create", name, "cp1"))
    assert dockerd.inspect(name, "{{.State.Status}}") == "exited"
    ls = check(dockerd("checkpoint", "ls", name)).stdout.split()
    assert {"cp0", "cp1"} <= set(ls), ls

    check(dockerd("start", "--checkpoint", "cp1", name))
    assert dockerd.inspect(name, "{{.State.Status}}") == "running"
    assert_continued(cat, before)
    check(dockerd("rm", "-f", name))


# --------------------------------------------------------------------------- ctr


def _ctr_checkpoint_restore(ctrd: Containerd, run_flags: list[str], cid: str) -> None:
    """``ctr container checkpoint --task --rw`` (pause, checkpoint leaving it running,
    resume, into an image), then ``ctr container restore --live --rw`` under a new id.
    --rw: for runc the files are in the rw layer; for Cocoon on the scratch disk, in the
    image."""
    new, ref = f"{cid}-r", f"localhost/ckpt-{cid}:1"

    def cat_in(task: str) -> Callable[[str], str]:
        n = iter(range(1000))
        return lambda path: check(
            ctrd.ctr("task", "exec", "--exec-id", f"cat{next(n)}", task, "cat", path)
        ).stdout

    check(ctrd.ctr("run", "-d", *run_flags, IMG, cid, "sh", "-c", COUNTER))
    try:
        cat = cat_in(cid)
        wait_counting(cat, MIN_COUNT)
        before = read_state(cat)[0]
        check(ctrd.ctr("container", "checkpoint", "--task", "--rw", cid, ref))
        assert ctrd.tasks()[cid][1] == "RUNNING"  # ctr's default: leave it running
        wait_counting(cat, before)
        ctrd.force_remove(cid)

        check(ctrd.ctr("container", "restore", "--live", "--rw", new, ref))
        assert ctrd.tasks()[new][1] == "RUNNING"
        assert_continued(cat_in(new), before)
    finally:
        for c in (cid, new):
            if c in ctrd.containers():
                ctrd.force_remove(c)
        ctrd.ctr("image", "rm", ref)


def test_ctr_checkpoint_and_restore_through_the_runc_shim(
    containerd: Containerd, cname: Callable[[], str]
) -> None:
    """The reference: containerd's runc v2 shim running runc (BinaryName)."""
    need_checkpoint(RUNC)
    _ctr_checkpoint_restore(containerd, ["--runc-binary", RUNC], cname())


@pytest.mark.e2e
def test_ctr_checkpoint_and_restore_through_the_cocoon_shim(
    shim_containerd: ShimContainerd, cname: Callable[[], str]
) -> None:
    """The shim v2's ``Checkpoint`` and ``Create`` with a checkpoint (restored at Start).

    containerd gives the shim no options for a non-runc runtime: no image path (a temp dir
    it tars into its content store, sparse files expanded), no ``exit``."""
    markers = [str(SHIM_ROOT) + "/", f"-address\0{shim_containerd.address}\0"]
    before = set(processes_matching(markers))
    try:
        flags = ["--runtime", ShimContainerd.RUNTIME, "--annotation", BLOCK]
        _ctr_checkpoint_restore(shim_containerd, flags, cname())
    finally:

        def left() -> dict[int, str]:
            return {p: c for p, c in processes_matching(markers).items() if p not in before}

        try:
            wait_for("shim processes to go", lambda: not left(), LEAK_WAIT)
        except AssertionError:
            pytest.fail(f"shim processes left: {left()}")


def test_cocoon_checkpoint_help_for_podmans_probe() -> None:
    """podman calls ``<runtime> checkpoint --help`` before every checkpoint and restore
    and refuses the runtime unless it exits 0."""
    p = subprocess.run([COCOON, "checkpoint", "--help"], capture_output=True, text=True)
    assert p.returncode == 0, describe(p)
    for flag in ("--image-path", "--work-path", "--leave-running"):
        assert flag in p.stdout, describe(p)
    p = subprocess.run([COCOON, "restore", "--help"], capture_output=True, text=True)
    assert p.returncode == 0, describe(p)
    for flag in ("--image-path", "--bundle", "--detach", "--pid-file"):
        assert flag in p.stdout, describe(p)


@pytest.mark.e2e
def test_ctr_checkpoint_of_a_pod_member_alone_is_refused_with_one_line(
    shim_containerd: ShimContainerd, cname: Callable[[], str]
) -> None:
    """A pod (CRI annotations by hand) is one VM: its member alone cannot be saved, and
    the pod's VM cannot be saved by its sandbox container while a member runs in it;
    both are refused with one line, the containers left running."""
    c = shim_containerd
    pod = cname()
    member = f"{pod}-m"
    rt = ["--runtime", ShimContainerd.RUNTIME, "--annotation", BLOCK]
    sandbox_ann = [
        "--annotation", "io.kubernetes.cri.container-type=sandbox",
        "--annotation", f"io.kubernetes.cri.sandbox-id={pod}",
    ]  # fmt: skip
    member_ann = [
        "--annotation", "io.kubernetes.cri.container-type=container",
        "--annotation", f"io.kubernetes.cri.sandbox-id={pod}",
    ]  # fmt: skip
    check(c.ctr("run", "-d", *rt, *sandbox_ann, IMG, pod, "sleep", "1000"))
    try:
        check(c.ctr("run", "-d", *rt, *member_ann, IMG, member, "sleep", "1000"))
        for task, why in ((member, "checkpointed whole"), (pod, "checkpointed whole")):
            p = c.ctr("task", "checkpoint", task)
            assert p.returncode != 0, describe(p)
            assert why in p.stderr and len(p.stderr.strip().splitlines()) == 1, describe(p)
        tasks = c.tasks()
        assert tasks[pod][1] == tasks[member][1] == "RUNNING", tasks
    finally:
        for x in (member, pod):
            if x in c.containers():
                c.force_remove(x)
