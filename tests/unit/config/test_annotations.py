from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from cocoon.config.annotations import apply_annotations, config_annotations, path_allowed
from cocoon.config.schema import DEFAULTS, Config
from cocoon.errors import InvalidArgument

C = "io.cocoon.config."
K = "io.katacontainers.config."


def with_hv(**kw: Any) -> Config:
    return replace(DEFAULTS, hypervisor=replace(DEFAULTS.hypervisor, **kw))


def test_no_annotations_is_the_same_config() -> None:
    assert apply_annotations(DEFAULTS, {}) is DEFAULTS


def test_unrelated_annotations_are_ignored() -> None:
    ann = {
        "io.kubernetes.cri.sandbox-cpu-quota": "200000",
        "io.katacontainers.pkg.oci.container_type": "pod_sandbox",
        "io.katacontainers.config_path": "/x",
        "io.cocoon.other": "1",
        "org.opencontainers.image.title": "x",
    }
    assert config_annotations(ann) == {}
    assert apply_annotations(DEFAULTS, ann) is DEFAULTS


@pytest.mark.parametrize("prefix", [C, K])
def test_allowed_hypervisor_keys(prefix: str) -> None:
    cfg = apply_annotations(
        with_hv(default_maxvcpus=8),
        {
            prefix + "hypervisor.default_vcpus": "4",
            prefix + "hypervisor.default_memory": "1024",
            prefix + "hypervisor.default_maxmemory": "4096",
        },
    )
    assert cfg.hypervisor.default_vcpus == 4
    assert cfg.hypervisor.default_memory == 1024
    assert cfg.hypervisor.default_maxmemory == 4096
    assert cfg.agent == DEFAULTS.agent


def test_kata_alias_name_for_maxvcpus() -> None:
    cfg = apply_annotations(DEFAULTS, {K + "hypervisor.default_max_vcpus": "6"})
    assert cfg.hypervisor.default_maxvcpus == 6
    cfg = apply_annotations(DEFAULTS, {K + "hypervisor.default_maxvcpus": "5"})
    assert cfg.hypervisor.default_maxvcpus == 5
    # the alias is Kata's spelling only
    with pytest.raises(InvalidArgument, match="no option default_max_vcpus"):
        apply_annotations(DEFAULTS, {C + "hypervisor.default_max_vcpus": "6"})
    # rule 1 also accepts a regex written with Kata's name
    only_kata = with_hv(enable_annotations=("default_max_vcpus",))
    assert apply_annotations(only_kata, {K + "hypervisor.default_max_vcpus": "2"}) != only_kata


def test_kernel_params_are_appended() -> None:
    cfg = apply_annotations(
        with_hv(kernel_params="quiet"), {C + "hypervisor.kernel_params": "a=1 b"}
    )
    assert cfg.hypervisor.kernel_params == "quiet a=1 b"
    cfg = apply_annotations(DEFAULTS, {C + "hypervisor.kernel_params": "a=1"})
    assert cfg.hypervisor.kernel_params == "a=1"


MODULES = "e1000e InterruptThrottleRate=3000,3000,3000 EEE=1; i915 enable_ppgtt=0"


def with_agent(**kw: Any) -> Config:
    return replace(DEFAULTS, agent=replace(DEFAULTS.agent, **kw))


def test_debug_console_by_annotation_only_if_allowed() -> None:
    ann = {C + "agent.debug_console": "true"}
    with pytest.raises(InvalidArgument) as err:
        apply_annotations(DEFAULTS, ann)
    assert str(err.value) == (
        "annotation io.cocoon.config.agent.debug_console: not allowed: debug_console matches "
        'no regex in [agent] enable_annotations ["dial_timeout", "kernel_modules"]'
    )
    allowed = with_agent(enable_annotations=("debug_console",))
    assert apply_annotations(allowed, ann).agent.debug_console is True


def test_agent_keys_follow_their_own_allowlist() -> None:
    with pytest.raises(InvalidArgument, match=r"\[agent\] enable_annotations \[\]"):
        apply_annotations(with_agent(enable_annotations=()), {C + "agent.dial_timeout": "7"})
    with pytest.raises(InvalidArgument, match="cannot be set by annotation"):
        apply_annotations(DEFAULTS, {C + "agent.clock_sync_interval": "1"})


def test_agent_and_runtime_keys_need_no_hypervisor_allowlist() -> None:
    cfg = apply_annotations(
        replace(
            with_hv(enable_annotations=()),
            agent=replace(DEFAULTS.agent, enable_annotations=(".*_.*",)),
        ),
        {
            K + "agent.kernel_modules": MODULES,
            C + "agent.dial_timeout": "7.5",
            C + "agent.debug_console": "TRUE",
            K + "runtime.sandbox_cgroup_only": "true",
            C + "runtime.internetworking_model": "none",
            C + "runtime.static_sandbox_resource_mgmt": "false",
        },
    )
    assert cfg.agent.kernel_modules == (
        "e1000e InterruptThrottleRate=3000,3000,3000 EEE=1",
        "i915 enable_ppgtt=0",
    )
    assert cfg.agent.dial_timeout == 7.5
    assert cfg.agent.debug_console is True
    assert cfg.runtime.sandbox_cgroup_only is True
    assert cfg.runtime.internetworking_model == "none"


def test_rule1_refuses_hypervisor_keys_not_enabled() -> None:
    with pytest.raises(InvalidArgument) as err:
        apply_annotations(DEFAULTS, {C + "hypervisor.machine_type": "microvm"})
    msg = str(err.value)
    assert msg.startswith(f"annotation {C}hypervisor.machine_type: not allowed")
    assert "enable_annotations" in msg
    cfg = apply_annotations(
        with_hv(enable_annotations=("machine_.*",)), {C + "hypervisor.machine_type": "microvm"}
    )
    assert cfg.hypervisor.machine_type == "microvm"


def test_rule1_is_a_full_match() -> None:
    cfg = with_hv(enable_annotations=("default",))
    with pytest.raises(InvalidArgument, match="not allowed"):
        apply_annotations(cfg, {C + "hypervisor.default_vcpus": "2"})
    with pytest.raises(InvalidArgument, match="not allowed"):
        apply_annotations(with_hv(enable_annotations=()), {K + "hypervisor.default_vcpus": "2"})


ALL = (".*",)


@pytest.mark.parametrize(
    ("key", "value", "globs_key", "globs", "ok"),
    [
        (
            "path",
            "/usr/bin/qemu-system-aarch64",
            "valid_hypervisor_paths",
            ("/usr/bin/qemu-system-*",),
            True,
        ),
        (
            "path",
            "/tmp/qemu-system-x86_64",
            "valid_hypervisor_paths",
            ("/usr/bin/qemu-system-*",),
            False,
        ),
        (
            "path",
            "/usr/bin/qemu-system-x/../../../tmp/evil",
            "valid_hypervisor_paths",
            ("/usr/bin/qemu-system-*",),
            False,
        ),
        (
            "path",
            "/usr/bin/qemu-system-x/evil",
            "valid_hypervisor_paths",
            ("/usr/bin/qemu-system-*",),
            False,
        ),
        (
            "path",
            "/usr/bin//qemu-system-x86_64",
            "valid_hypervisor_paths",
            ("/usr/bin/qemu-system-*",),
            False,
        ),
        ("path", "/usr/bin/qemu-system-x86_64", "valid_hypervisor_paths", (), False),
        (
            "virtio_fs_daemon",
            "/usr/lib/qemu/virtiofsd",
            "valid_virtio_fs_daemon_paths",
            ("/usr/lib/qemu/virtiofsd",),
            True,
        ),
        (
            "virtio_fs_daemon",
            "/usr/libexec/virtiofsd",
            "valid_virtio_fs_daemon_paths",
            ("/usr/lib/qemu/virtiofsd",),
            False,
        ),
        (
            "virtio_fs_daemon",
            "/usr/libexec/virtiofsd",
            "valid_virtio_fs_daemon_paths",
            ("/usr/lib/qemu/virtiofsd", "/usr/libexec/*"),
            True,
        ),
        ("virtio_fs_daemon", "/usr/libexec/virtiofsd", "valid_virtio_fs_daemon_paths", (), False),
    ],
)
def test_rule2_path_globs(
    key: str, value: str, globs_key: str, globs: tuple[str, ...], ok: bool
) -> None:
    cfg = with_hv(enable_annotations=ALL, **{globs_key: globs})
    ann = {C + "hypervisor." + key: value}
    if ok:
        assert getattr(apply_annotations(cfg, ann).hypervisor, key) == value
    else:
        with pytest.raises(InvalidArgument) as err:
            apply_annotations(cfg, ann)
        assert f"annotation {C}hypervisor.{key}" in str(err.value)
        assert globs_key in str(err.value)


def test_rule2_needs_rule1_too() -> None:
    with pytest.raises(InvalidArgument, match="enable_annotations"):
        apply_annotations(DEFAULTS, {K + "hypervisor.path": "/usr/bin/qemu-system-x86_64"})


@pytest.mark.parametrize(
    ("path", "globs", "ok"),
    [
        ("/a/b", ("/a/*",), True),
        ("/a/b/c", ("/a/*",), False),
        ("/a/b", ("/a/?",), True),
        ("/a/./b", ("/a/*/b",), False),
        ("a/b", ("a/*",), False),
        ("/a/b", ("/a/[bc]",), True),
        ("/A/b", ("/a/*",), False),
    ],
)
def test_path_allowed(path: str, globs: tuple[str, ...], ok: bool) -> None:
    assert path_allowed(path, globs) is ok


@pytest.mark.parametrize(
    ("ann", "message"),
    [
        (
            {C + "hypervisor.default_vcpus": "two"},
            'default_vcpus: expected an integer >= 1, got "two"',
        ),
        ({C + "hypervisor.default_vcpus": "0"}, "default_vcpus: expected an integer >= 1"),
        ({C + "hypervisor.default_vcpus": "1.5"}, "default_vcpus: expected"),
        ({C + "hypervisor.default_vcpus": ""}, "default_vcpus: expected"),
        ({C + "hypervisor.default_memory": "64"}, "default_memory: expected an integer >= 128"),
        ({C + "hypervisor.default_memory": "-1"}, "default_memory: expected"),
        ({C + "agent.kernel_modules": "--config=/x"}, "kernel_modules: expected"),
        ({C + "agent.kernel_modules": "br/../x"}, "kernel_modules: expected"),
        ({C + "agent.dial_timeout": "0"}, "dial_timeout: expected a number of seconds > 0"),
        (
            {C + "runtime.internetworking_model": "macvtap"},
            "internetworking_model: expected one of",
        ),
        ({C + "hypervisor.kernel_params": "a\nb"}, "kernel_params: expected"),
        (
            {C + "hypervisor.default_vcpus": "4", C + "hypervisor.default_maxvcpus": "2"},
            "default_vcpus: 4 is more than default_maxvcpus 2",
        ),
        # unknown under our prefixes: an error, not ignored
        ({C + "hypervisor.enable_iommu": "true"}, "Cocoon has no option enable_iommu"),
        (
            {K + "runtime.disable_guest_seccomp": "true"},
            "Cocoon has no option disable_guest_seccomp",
        ),
        ({C + "factory.enable_template": "true"}, "unknown section"),
        ({C + "hypervisor": "x"}, "unknown section"),
        ({C + "qemu.path": "/x"}, "unknown section"),
        # never from a pod
        ({C + "hypervisor.enable_annotations": ".*"}, "cannot be set by annotation"),
        ({K + "hypervisor.valid_hypervisor_paths": "/*"}, "cannot be set by annotation"),
        ({C + "hypervisor.valid_virtio_fs_daemon_paths": "/*"}, "cannot be set by annotation"),
        ({C + "runtime.host_overhead_memory": "0"}, "cannot be set by annotation"),
        # the same key twice with different values
        (
            {C + "hypervisor.default_vcpus": "2", K + "hypervisor.default_vcpus": "3"},
            "conflicts with",
        ),
    ],
)
def test_bad_annotations_name_the_annotation(ann: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        apply_annotations(DEFAULTS, ann)
    assert str(err.value).startswith("annotation")
    assert message in str(err.value)
    first = sorted(ann)[0]
    if "more than" not in message:
        assert first in str(err.value)


def test_same_value_twice_is_fine() -> None:
    cfg = apply_annotations(
        DEFAULTS, {C + "hypervisor.default_vcpus": "2", K + "hypervisor.default_vcpus": "2"}
    )
    assert cfg.hypervisor.default_vcpus == 2


def test_bad_annotation_among_good_ones_fails_the_whole_set() -> None:
    with pytest.raises(InvalidArgument):
        apply_annotations(
            DEFAULTS, {C + "hypervisor.default_vcpus": "2", C + "hypervisor.path": "/bin/sh"}
        )
