from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

from cocoon.shim.main import DEAD_SHIM_STATUS, parse_args
from cocoon.shim.proto import shim_pb2 as pb
from cocoon.shim.task import SERVICE, TaskService


def test_parses_containerd_argv() -> None:
    argv = "-namespace k8s.io -address /run/c.sock -publish-binary /usr/bin/containerd"
    args = parse_args([*argv.split(), "-id", "abc", "-debug", "start"])
    assert (args.namespace, args.address, args.publish_binary) == (
        "k8s.io",
        "/run/c.sock",
        "/usr/bin/containerd",
    )
    assert (args.id, args.debug, args.action) == ("abc", True, "start")
    assert parse_args(["-id", "x", "-bundle", "/b", "delete"]).action == "delete"
    assert parse_args(["-id", "x"]).action == ""


def _shim(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "cocoon.shim.main", *argv],
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
        check=False,
    )


def _bundle(tmp_path: Path, annotations: dict[str, str]) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"annotations": annotations}))


def test_start_of_a_pod_member_without_its_pod_fails_cleanly(tmp_path: Path) -> None:
    _bundle(
        tmp_path,
        {"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "nopod"},
    )
    ns = f"unit-{uuid.uuid4().hex[:8]}"
    p = _shim(
        tmp_path, "-namespace", ns, "-address", str(tmp_path / "c.sock"), "-id", "c1", "start"
    )
    assert p.returncode == 1
    assert b"pod sandbox 'nopod' has no running shim" in p.stderr
    assert p.stdout == b""


def test_delete_prints_a_delete_response(tmp_path: Path) -> None:
    _bundle(tmp_path, {})
    ns = f"unit-{uuid.uuid4().hex[:8]}"
    p = _shim(
        tmp_path, "-namespace", ns, "-address", str(tmp_path / "c.sock"), "-id", "c1", "delete"
    )
    assert p.returncode == 0, p.stderr
    resp = pb.DeleteResponse.FromString(p.stdout)
    assert resp.exit_status == DEAD_SHIM_STATUS == 137
    assert resp.exited_at.seconds > 0


def test_every_task_method_is_served() -> None:
    from cocoon.ttrpc.server import Server

    server = Server()
    TaskService.register(object.__new__(TaskService), server)
    methods = {m for (svc, m) in server._handlers if svc == SERVICE}
    assert methods == {m.name for m in pb.DESCRIPTOR.services_by_name["Task"].methods}
    assert len(methods) == 17


def test_long_or_odd_ids_are_one_line(tmp_path: Path) -> None:
    from cocoon.shim.main import main

    _bundle(tmp_path, {})
    for argv in (
        ["-id", "a" * 300, "-bundle", str(tmp_path), "start"],
        ["-id", "a" * 300, "-bundle", str(tmp_path), "delete"],
        ["-id", "ok", "-namespace", "../x", "-bundle", str(tmp_path), "delete"],
    ):
        r = _shim(tmp_path, *argv)
        err = r.stderr.decode().strip().splitlines()
        assert r.returncode == 1 and len(err) == 1 and "id" in err[0], err
        assert main(argv) == 1
    cri = {"io.kubernetes.cri.container-type": "container"}
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "ociVersion": "1.0.2",
                "annotations": {**cri, "io.kubernetes.cri.sandbox-id": "p" * 300},
            }
        )
    )
    r = _shim(tmp_path, "-id", "member", "-bundle", str(tmp_path), "start")
    err = r.stderr.decode().strip().splitlines()
    assert r.returncode == 1 and len(err) == 1 and "pod sandbox id" in err[0], err
