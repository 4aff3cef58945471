"""Kubernetes volumes through containerd's CRI and the shim (issue 12, item 1).

The kubelet's host layouts are made by the test under ``tmp_path`` with the
kubelet's path shapes; containerd gets them as CRI mounts, as from the kubelet.
A symlink in a CRI ``host_path`` is resolved by containerd itself before the
runtime sees the path (the kubelet refuses a subPath escaping its volume before
that): Cocoon's own refusal is tested through the CLI (tests/e2e/test_volumes.py).
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from tests.engines import test_shim
from tests.engines.conftest import ShimContainerd
from tests.engines.test_shim import Pod, _container_config
from tests.fixtures.kubelet import configmap

# The shim tests' fixtures: a CRI pod removed after the test, the leak check.
cri_pod = test_shim.cri_pod
_no_shim_leaks = test_shim._no_shim_leaks


def _run_with_mounts(pod: Pod, name: str, mounts: list[tuple[str, Path, bool]]) -> str:
    from tests.engines.cri.client import cri

    cfg = _container_config(name, ["sleep", "100000"])
    for dest, src, ro in mounts:
        cfg.mounts.append(cri.Mount(container_path=dest, host_path=str(src), readonly=ro))  # type: ignore[attr-defined]
    ctr_id = pod.client.call(
        "CreateContainer",
        cri.CreateContainerRequest(pod_sandbox_id=pod.id, config=cfg, sandbox_config=pod.config),
        cri.CreateContainerResponse,
    ).container_id
    pod.client.call(
        "StartContainer", cri.StartContainerRequest(container_id=ctr_id), cri.StartContainerResponse
    )
    return ctr_id


def test_pod_volumes_binds_subpaths_ro_and_a_shared_emptydir(
    shim_containerd: ShimContainerd, cri_pod: Callable[..., Pod], tmp_path: Path
) -> None:
    kubelet = tmp_path / "kubelet" / "pods" / uuid.uuid4().hex
    vols = kubelet / "volumes"
    shared = vols / "kubernetes.io~empty-dir" / "shared"
    mem = vols / "kubernetes.io~empty-dir" / "mem"
    data = vols / "kubernetes.io~csi" / "data"
    cfg = vols / "kubernetes.io~configmap" / "cfg"
    for d in (shared, mem, data / "sub", cfg):
        d.mkdir(parents=True)
    (data / "sub" / "f").write_text("sub file\n")
    (data / "one").write_text("one\n")
    (data / "ro").write_text("host\n")
    subpaths = kubelet / "volume-subpaths" / "data" / "writer"
    subpaths.mkdir(parents=True)
    (subpaths / "0").mkdir()
    (subpaths / "1").touch()
    (shared / "sub").mkdir()  # the kubelet's subPath dir in the host emptyDir ...
    shared_sp = kubelet / "volume-subpaths" / "shared" / "reader" / "0"
    shared_sp.mkdir(parents=True)
    configmap(cfg, "2026_12_01_21_00_00.1", {"key": "v1\n"})
    mounted: list[Path] = []
    pod = cri_pod()
    try:
        # With the pod's VM running, the kubelet makes the emptyDir's tmpfs (medium:
        # Memory) and its subPath binds: mount points made after the sandbox started.
        for argv, target in (
            (["mount", "-t", "tmpfs", "kubelet-mem", str(mem)], mem),
            (["mount", "--bind", str(data / "sub"), str(subpaths / "0")], subpaths / "0"),
            (["mount", "--bind", str(data / "one"), str(subpaths / "1")], subpaths / "1"),
            (["mount", "--bind", str(shared / "sub"), str(shared_sp)], shared_sp),
        ):
            subprocess.run(argv, check=True)
            mounted.insert(0, target)
        writer = _run_with_mounts(
            pod,
            "writer",
            [
                ("/shared", shared, False),
                ("/mem", mem, False),
                ("/data", data, False),
                ("/one", data / "one", False),
                ("/sp", subpaths / "0", False),
                ("/spf", subpaths / "1", False),
                ("/ro", data / "ro", True),
            ],
        )
        reader = _run_with_mounts(
            pod,
            "reader",
            [("/shared", shared, False), ("/sub", shared_sp, False), ("/cfg", cfg, True)],
        )

        assert pod.exec_sync(writer, ["sh", "-c", "echo hi > /shared/f"]) == (0, "")
        assert pod.exec_sync(reader, ["cat", "/shared/f"]) == (0, "hi\n")
        # ... and its subPath is served from the guest copy too.
        assert pod.exec_sync(writer, ["sh", "-c", "echo s > /shared/sub/g"]) == (0, "")
        assert pod.exec_sync(reader, ["cat", "/sub/g"]) == (0, "s\n")
        assert [p.name for p in shared.iterdir()] == ["sub"]  # the data is in the guest only
        assert list((shared / "sub").iterdir()) == []
        code, out = pod.exec_sync(writer, ["cat", "/data/sub/f", "/one", "/sp/f", "/spf"])
        assert (code, out) == (0, "sub file\none\nsub file\none\n")
        assert pod.exec_sync(writer, ["sh", "-c", "echo w > /sp/new"]) == (0, "")
        assert (data / "sub" / "new").read_text() == "w\n"
        code, out = pod.exec_sync(writer, ["sh", "-c", "echo g > /ro"])
        assert code != 0 and "Read-only file system" in out, out
        assert (data / "ro").read_text() == "host\n"
        # A configMap update (the kubelet's ..data swap) reaches the running container.
        assert pod.exec_sync(reader, ["cat", "/cfg/key"]) == (0, "v1\n")
        configmap(cfg, "2026_12_01_21_00_05.2", {"key": "v2\n"})
        swapped = time.monotonic()
        while pod.exec_sync(reader, ["cat", "/cfg/key"]) != (0, "v2\n"):
            assert time.monotonic() - swapped < 5, "the update did not arrive within 5 s"
            time.sleep(0.2)
        # medium: Memory: a guest tmpfs, its pages in the guest's memory.
        script = (
            "stat -f -c %T /mem; a=$(grep ^Shmem: /proc/meminfo | tr -s ' ' | cut -d' ' -f2); "
            "dd if=/dev/zero of=/mem/z  bs=1M count=32 2>/dev/null; "
            "b=$(grep ^Shmem: /proc/meminfo | tr -s ' ' | cut -d' ' -f2); echo $(( (b-a)/1024 ))"
        )
        code, out = pod.exec_sync(writer, ["sh", "-c", script])
        kind, grown = out.split()
        assert (
            code == 0 and kind == "tmpfs" and int(grown) >= 24
        ), out  # of 32 MiB written (Shmem moves by a few)
        assert list(mem.iterdir()) == []

    finally:  # the pod is removed by cri_pod
        for m in mounted:
            subprocess.run(["umount", str(m)], check=False)
