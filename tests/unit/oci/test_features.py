from __future__ import annotations

import json

import pytest

from cocoon.oci.features import features_document


def test_document_is_json_and_fresh() -> None:
    doc = features_document()
    assert json.loads(json.dumps(doc)) == doc
    doc["hooks"].clear()
    assert features_document()["hooks"]  # callers cannot corrupt the next one


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (("ociVersionMin",), "1.0.0"),
        (("ociVersionMax",), "1.1.0"),
        (
            ("hooks",),
            [
                "prestart",
                "createRuntime",
                "createContainer",
                "startContainer",
                "poststart",
                "poststop",
            ],
        ),
        (("linux", "cgroup"), {"v1": False, "v2": True, "systemd": False, "systemdUser": False}),
        (("linux", "apparmor", "enabled"), False),
        (("linux", "selinux", "enabled"), False),
        (("linux", "intelRdt", "enabled"), False),
        (("linux", "seccomp", "enabled"), True),
        (
            ("annotations",),
            {"io.cocoon.vm": "true", "org.opencontainers.runc.checkpoint.enabled": "false"},
        ),
        (
            ("potentiallyUnsafeConfigAnnotations",),
            ["io.cocoon.config.", "io.katacontainers.config."],
        ),
    ],
)
def test_fields(path: tuple[str, ...], expected: object) -> None:
    value: object = features_document()
    for key in path:
        assert isinstance(value, dict)
        value = value[key]
    assert value == expected


def test_namespaces_all_eight() -> None:
    assert sorted(features_document()["linux"]["namespaces"]) == [
        "cgroup",
        "ipc",
        "mount",
        "network",
        "pid",
        "time",
        "user",
        "uts",
    ]


def test_capabilities_linux_6_1() -> None:
    caps = features_document()["linux"]["capabilities"]
    assert len(caps) == 41 == len(set(caps))  # CAP_CHOWN (0) .. CAP_CHECKPOINT_RESTORE (40)
    assert caps[0] == "CAP_CHOWN" and caps[-1] == "CAP_CHECKPOINT_RESTORE"
    assert all(c.startswith("CAP_") for c in caps)


def test_seccomp_lists() -> None:
    sec = features_document()["linux"]["seccomp"]
    assert "SCMP_ACT_NOTIFY" in sec["actions"] and "SCMP_ACT_KILL_PROCESS" in sec["actions"]
    assert len(sec["operators"]) == 7
    assert "SCMP_ARCH_X86_64" in sec["archs"]
    assert set(sec["supportedFlags"]) <= set(sec["knownFlags"])


def test_mount_options() -> None:
    opts = features_document()["mountOptions"]
    for o in ("ro", "rw", "bind", "rbind", "nosuid", "nodev", "noexec", "rprivate", "tmpcopyup"):
        assert o in opts
    assert "idmap" not in opts
    assert len(opts) == len(set(opts))
