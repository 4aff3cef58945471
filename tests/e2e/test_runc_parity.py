"""Where a VM need not differ from runc: namespace paths, the hostname, mount names.

Each test runs ``cocoon`` on a busybox bundle as podman or a conformance tool would
and checks what runc does on the same host.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Env

pytestmark = pytest.mark.e2e


def _edit(bundle: Path, **changes: Any) -> Path:
    spec = json.loads((bundle / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = value
    (bundle / "config.json").write_text(json.dumps(spec))
    return bundle


def _with_namespace(bundle: Path, entry: dict[str, str]) -> Path:
    """The bundle with ``entry`` instead of the spec's namespace of the same type."""
    linux = json.loads((bundle / "config.json").read_text())["linux"]
    ns = [n for n in linux["namespaces"] if n["type"] != entry["type"]]
    linux["namespaces"] = [*ns, entry]
    return _edit(bundle, linux=linux)


def _one_error_line(r: subprocess.CompletedProcess[bytes], needle: str) -> None:
    assert r.returncode == 1, r
    lines = [ln for ln in r.stderr.decode().splitlines() if "warning" not in ln]
    assert len(lines) == 1 and needle in lines[0], lines
    assert "Traceback" not in r.stderr.decode()


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        ({"type": "uts", "path": "/proc/self/ns/ipc"}, "is an ipc namespace, not uts"),
        ({"type": "pid", "path": "/proc/self/ns/mnt"}, "is a mount namespace, not pid"),
        ({"type": "ipc", "path": "/etc/hostname"}, "is not a namespace"),
        ({"type": "mount", "path": "/nonexistent/ns"}, "does not exist"),
    ],
    ids=["uts-ipc", "pid-mnt", "not-a-namespace", "missing"],
)
def test_namespace_path_of_another_type_is_an_error(
    env: Env, entry: dict[str, str], needle: str
) -> None:
    bundle = _with_namespace(env.bundle(["true"]), entry)
    _one_error_line(env.run("run", "--bundle", str(bundle), "badns"), needle)


@pytest.mark.parametrize("kind", ["ipc", "uts", "pid", "mnt", "cgroup"])
def test_joining_a_host_process_namespace_is_refused_in_one_line(env: Env, kind: str) -> None:
    """A ``/proc/<pid>/ns/<kind>`` of a process that is not Cocoon's (here: this test's
    own, a host process's) is no namespace a VM can enter: one line, nothing made."""
    oci = {"mnt": "mount"}.get(kind, kind)
    path = f"/proc/{os.getpid()}/ns/{kind}"
    bundle = _with_namespace(env.bundle(["true"]), {"type": oci, "path": path})
    _one_error_line(
        env.run("run", "--bundle", str(bundle), "joins"),
        f"cannot join {path}",
    )


def test_hostname_without_one_in_the_spec_is_the_nodes(env: Env) -> None:
    """runc leaves a new UTS namespace's name as inherited: the node's."""
    bundle = _edit(env.bundle(["hostname"]), hostname=None)
    r = env.run("run", "--bundle", str(bundle), "noname")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().strip() == socket.gethostname()
    named = env.bundle(["hostname"])  # the fixture's spec names it cocoon-test
    r = env.run("run", "--bundle", str(named), "named")
    assert (r.returncode, r.stdout) == (0, b"cocoon-test\n"), r.stderr.decode()


def test_guest_mountinfo_names_a_bind_mount_by_its_source(env: Env) -> None:
    """Tools match mounts by the last component of their source, as runc's show it."""
    data = env.work / "my-volume"
    data.mkdir()
    (data / "f").write_text("hi\n")
    single = env.work / "settings.conf"
    single.write_text("x=1\n")
    bundle = env.bundle(["sh", "-c", "cat /proc/self/mountinfo"])
    spec = json.loads((bundle / "config.json").read_text())
    spec["mounts"] += [
        {"destination": "/data", "type": "bind", "source": str(data), "options": ["rbind"]},
        {"destination": "/etc/settings.conf", "type": "bind", "source": str(single),
         "options": ["bind", "ro"]},
    ]  # fmt: skip
    (bundle / "config.json").write_text(json.dumps(spec))
    r = env.run("run", "--bundle", str(bundle), "mountname")
    assert r.returncode == 0, r.stderr.decode()
    roots = {line.split()[4]: line.split()[3] for line in r.stdout.decode().splitlines()}
    assert roots["/data"].endswith("/my-volume"), roots
    assert roots["/etc/settings.conf"].endswith("/settings.conf"), roots


def test_poststart_hooks_run_once_the_container_runs(env: Env) -> None:
    """startContainer sees it created, poststart sees it running (``cocoon state``)."""
    out = env.work / "hooks"
    out.mkdir()
    state = " ".join(shlex.quote(a) for a in env.argv("state", "hooked"))

    def hook(kind: str) -> list[dict[str, Any]]:
        script = f"{state} > {out}/{kind}.json; echo {kind} >> {out}/order"
        return [{"path": "/bin/sh", "args": ["sh", "-c", script]}]

    bundle = env.bundle(["sleep", "1000"])
    _edit(bundle, hooks={k: hook(k) for k in ("startContainer", "poststart")})
    # capture=False: the detached container keeps the creator's stdio open.
    r = env.run("run", "-d", "--bundle", str(bundle), "hooked", capture=False)
    try:
        assert r.returncode == 0, (env.work / "out.log").read_text()
        assert (out / "order").read_text().split() == ["startContainer", "poststart"]
        assert json.loads((out / "startContainer.json").read_text())["status"] == "created"
        assert json.loads((out / "poststart.json").read_text())["status"] == "running"
    finally:
        env.run("delete", "--force", "hooked")
