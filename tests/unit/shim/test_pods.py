from __future__ import annotations

import pytest

from cocoon.shim.pods import PodRole, pod_role, socket_path

CRI = {"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "pod1"}
CRIO = {"io.kubernetes.cri-o.ContainerType": "container", "io.kubernetes.cri-o.SandboxID": "pod2"}


@pytest.mark.parametrize(
    ("desc", "cid", "annotations", "expected"),
    [
        ("plain ctr run: a pod of one", "c1", {}, PodRole("c1", True)),
        (
            "CRI sandbox container",
            "pod1",
            {"io.kubernetes.cri.container-type": "sandbox", "io.kubernetes.cri.sandbox-id": "pod1"},
            PodRole("pod1", True),
        ),
        ("CRI app container", "c2", CRI, PodRole("pod1", False)),
        ("CRI-O app container", "c3", CRIO, PodRole("pod2", False)),
        (
            "a container type without a sandbox id stands alone",
            "c4",
            {"io.kubernetes.cri.container-type": "container"},
            PodRole("c4", True),
        ),
    ],
)
def test_pod_role(desc: str, cid: str, annotations: dict[str, str], expected: PodRole) -> None:
    assert pod_role(cid, annotations) == expected, desc


def test_socket_path_is_stable_short_and_distinct() -> None:
    a = socket_path("/run/containerd/containerd.sock", "k8s.io", "a" * 64)
    assert a == socket_path("/run/containerd/containerd.sock", "k8s.io", "a" * 64)
    assert len(str(a)) < 108
    others = {
        socket_path("/other/containerd.sock", "k8s.io", "a" * 64),
        socket_path("/run/containerd/containerd.sock", "default", "a" * 64),
        socket_path("/run/containerd/containerd.sock", "k8s.io", "b" * 64),
    }
    assert a not in others and len(others) == 3
