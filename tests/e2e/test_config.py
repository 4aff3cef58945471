"""Configuration file, annotation overrides and boot sizing, end to end."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.e2e.conftest import Env


def _annotated(env: Env, args: list[str], annotations: dict[str, str]) -> Path:
    b = env.bundle(args)
    spec = json.loads((b / "config.json").read_text())
    spec["annotations"] = annotations
    (b / "config.json").write_text(json.dumps(spec))
    return b


def test_allowed_annotation_sizes_the_vm(env: Env) -> None:
    b = _annotated(
        env,
        ["/bin/sh", "-c", "nproc; grep MemTotal /proc/meminfo"],
        {
            "io.katacontainers.config.hypervisor.default_vcpus": "2",
            "io.cocoon.config.hypervisor.default_memory": "384",
        },
    )
    r = env.run("run", "--bundle", str(b), "ca")
    assert r.returncode == 0, r.stderr.decode()
    nproc, meminfo = r.stdout.decode().splitlines()
    assert nproc == "2"
    assert 300_000 < int(meminfo.split()[1]) <= 384 * 1024  # kB, minus what the kernel keeps


def test_forbidden_annotations_are_refused(env: Env) -> None:
    # Rule 2 applies once rule 1 lets the key through: paths must match the globs.
    conf = env.work / "paths.toml"
    conf.write_text('[hypervisor.qemu]\nenable_annotations = ["path", "virtio_fs_daemon"]\n')
    for key, value, why, config in [
        ("io.katacontainers.config.hypervisor.path", "/tmp/evil-qemu", "enable_annotations", None),
        ("io.cocoon.config.hypervisor.machine_type", "microvm", "enable_annotations", None),
        ("io.cocoon.config.hypervisor.default_vcpus", "lots", "default_vcpus", None),
        (
            "io.katacontainers.config.hypervisor.path",
            "/tmp/evil-qemu",
            "valid_hypervisor_paths",
            conf,
        ),
        ("io.cocoon.config.hypervisor.virtio_fs_daemon", "/bin/sh", "valid_virtio_fs_daemon", conf),
    ]:
        b = _annotated(env, ["true"], {key: value})
        extra = ["--config", str(config)] if config else []
        r = env.run(*extra, "run", "--bundle", str(b), "cf")
        assert r.returncode == 1, (key, r)
        err = r.stderr.decode()
        assert key in err and why in err, err
        assert not (env.root / "cf").exists()


def test_static_sizing_from_the_containers_limits(env: Env) -> None:
    conf = env.work / "cocoon.toml"
    conf.write_text(
        "[runtime]\nstatic_sandbox_resource_mgmt = true\n"
        "[hypervisor.qemu]\ndefault_memory = 192\n"
    )
    b = env.bundle(["/bin/sh", "-c", "nproc; grep MemTotal /proc/meminfo"])
    spec = json.loads((b / "config.json").read_text())
    spec["linux"]["resources"] = {
        "memory": {"limit": 256 << 20},
        "cpu": {"quota": 150000, "period": 100000},
    }
    (b / "config.json").write_text(json.dumps(spec))
    r = env.run("--config", str(conf), "run", "--bundle", str(b), "cs")
    assert r.returncode == 0, r.stderr.decode()
    nproc, meminfo = r.stdout.decode().splitlines()
    assert nproc == "3"  # 1 default + ceil(1.5)
    assert 360_000 < int(meminfo.split()[1]) <= 448 * 1024  # 192 + 256 MiB


def test_malformed_configuration(env: Env) -> None:
    conf = env.work / "bad.toml"
    conf.write_text("[hypervisor.qemu]\ndefault_vcpus = \n")
    r = env.run("--config", str(conf), "run", "--bundle", str(env.bundle(["true"])), "cm")
    assert r.returncode == 1 and b"bad.toml" in r.stderr and b"line" in r.stderr
    conf.write_text("[hypervisor.qemu]\nno_such_key = 1\n")
    r = env.run("--config", str(conf), "env")
    assert r.returncode == 1 and b"no_such_key" in r.stderr
    good = env.work / "good.toml"
    good.write_text("[hypervisor.qemu]\ndefault_memory = 512\n")
    out = json.loads(env.run("--config", str(good), "env", "--json").stdout)
    assert out["hypervisor"]["qemu"]["default_memory"] == 512


def test_dynamic_sizing_hotplugs_vcpus_and_memory(env: Env) -> None:
    b = env.bundle(["/bin/sh", "-c", "nproc; grep MemTotal /proc/meminfo"])
    spec = json.loads((b / "config.json").read_text())
    spec["linux"]["resources"] = {
        "memory": {"limit": 256 << 20},
        "cpu": {"quota": 150000, "period": 100000},
    }
    (b / "config.json").write_text(json.dumps(spec))
    r = env.run("run", "--bundle", str(b), "cd")  # boots 1 vCPU / 256 MiB, then grows
    assert r.returncode == 0, r.stderr.decode()
    nproc, meminfo = r.stdout.decode().splitlines()
    assert int(nproc) == min(3, os.cpu_count() or 1)  # ceil(1 + 1.5), capped at host cores
    assert int(meminfo.split()[1]) > 400_000  # 256 + 256 MiB (minus what the kernel keeps)


def test_update_grows_the_vm(env: Env) -> None:
    b = env.bundle(["/bin/sleep", "600"])
    assert env.run("run", "-d", "--bundle", str(b), "cu", capture=False).returncode == 0

    def mem_total() -> int:
        out = env.run("exec", "cu", "/bin/grep", "MemTotal", "/proc/meminfo").stdout
        return int(out.split()[1])

    before = mem_total()
    res = env.work / "res.json"
    res.write_text(json.dumps({"memory": {"limit": 384 << 20}}))
    assert env.run("update", "--resources", str(res), "cu").returncode == 0
    assert mem_total() >= before + 384 * 1024
    assert env.run("delete", "--force", "cu").returncode == 0


def test_kernel_params_annotation_reaches_the_guest_kernel(env: Env) -> None:
    b = _annotated(
        env,
        ["/bin/cat", "/proc/cmdline"],
        {"io.cocoon.config.hypervisor.kernel_params": "cocoon.test=42"},
    )
    r = env.run("run", "--bundle", str(b), "ck")
    assert r.returncode == 0, r.stderr.decode()
    assert "cocoon.test=42" in r.stdout.decode().split()


def test_static_sizing_from_cri_sandbox_annotations(env: Env) -> None:
    conf = env.work / "static.toml"
    conf.write_text("[runtime]\nstatic_sandbox_resource_mgmt = true\n")
    b = _annotated(
        env,
        ["/bin/sh", "-c", "nproc; grep MemTotal /proc/meminfo"],
        {
            "io.kubernetes.cri.container-type": "sandbox",
            "io.kubernetes.cri.sandbox-cpu-quota": "100000",
            "io.kubernetes.cri.sandbox-cpu-period": "100000",
            "io.kubernetes.cri.sandbox-memory": str(128 << 20),
        },
    )
    r = env.run("--config", str(conf), "run", "--bundle", str(b), "cc")
    assert r.returncode == 0, r.stderr.decode()
    nproc, meminfo = r.stdout.decode().splitlines()
    assert nproc == "2"  # 1 default + 1 from the pod's annotations
    assert 300_000 < int(meminfo.split()[1]) <= 384 * 1024  # 256 + 128 MiB


def test_configured_kernel_must_exist(env: Env) -> None:
    conf = env.work / "k.toml"
    conf.write_text('[hypervisor.qemu]\nkernel = "/nonexistent/vmlinux"\n')
    r = env.run("--config", str(conf), "run", "--bundle", str(env.bundle(["true"])), "ck")
    assert r.returncode == 1 and b"kernel: /nonexistent/vmlinux is not a file" in r.stderr


def test_sysctls_namespaced_applied_others_refused(env: Env) -> None:
    ns = [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")]
    ok = env.bundle(
        ["/bin/cat", "/proc/sys/net/ipv4/ip_forward"],
        linux={"namespaces": ns, "sysctl": {"net.ipv4.ip_forward": "1"}},
    )
    r = env.run("run", "--bundle", str(ok), "sy1")
    assert r.returncode == 0 and r.stdout == b"1\n", r.stderr.decode()
    bad = env.bundle(["/bin/true"], linux={"namespaces": ns, "sysctl": {"vm.swappiness": "10"}})
    r = env.run("run", "--bundle", str(bad), "sy2")
    assert r.returncode == 1 and b"vm.swappiness" in r.stderr and b"not namespaced" in r.stderr
