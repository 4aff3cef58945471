from __future__ import annotations

from pathlib import Path

import pytest

from cocoon.hypervisor.cmdline import SharePlan, VMPlan, build_argv


def plan(**kw: object) -> VMPlan:
    base: dict[str, object] = dict(
        qemu="/usr/bin/qemu-system-x86_64",
        kernel=Path("/a/vmlinux"),
        initrd=Path("/a/initrd"),
        image=Path("/a/root.erofs"),
        qmp_socket=Path("/s/qmp.sock"),
        agent_socket=Path("/s/agent.sock"),
        console_log=Path("/s/console.log"),
        cpu_features=(),
    )
    base.update(kw)
    return VMPlan(**base)  # type: ignore[arg-type]


def pairs(argv: list[str]) -> list[tuple[str, str]]:
    return [(argv[i], argv[i + 1]) for i in range(1, len(argv) - 1) if argv[i].startswith("-")]


def test_pc_defaults_are_minimal_and_pvh() -> None:
    argv = build_argv(plan())
    p = pairs(argv)
    assert ("-M", "pc") in p and ("-accel", "tcg") in p and ("-cpu", "qemu64") in p
    assert ("-kernel", "/a/vmlinux") in p and ("-initrd", "/a/initrd") in p
    assert "-nodefaults" in argv and "-no-user-config" in argv and "-no-reboot" in argv
    devices = [v for k, v in p if k == "-device"]
    assert devices == [
        "virtio-serial-pci,id=vser0",
        "virtserialport,bus=vser0.0,chardev=agent,name=agent0",
        "virtio-blk-pci,drive=root",
        "virtio-rng-pci,id=rng0",
        "vmgenid,id=vmgenid0",
    ]
    assert "-incoming" not in argv and not any("memory-backend" in a for a in argv)
    assert ("-drive", "file=/a/root.erofs,if=none,id=root,format=raw,readonly=on") in p
    append = dict(p)["-append"]
    assert "cocoon.root=/dev/vda" in append
    assert "tsc_early_khz" not in append and "lpj=" not in append  # unknown host TSC


def test_the_guest_clock_runs_at_the_host_tsc_rate() -> None:
    append = dict(pairs(build_argv(plan(tsc_khz=2100000))))["-append"].split()
    assert "tsc_early_khz=2100000" in append and "lpj=8400000" in append
    # The configured kernel_params come after, so they can override it.
    extra = build_argv(plan(tsc_khz=2100000, extra_kernel_params=("tsc_early_khz=1",)))
    params = dict(pairs(extra))["-append"].split()
    assert params.index("tsc_early_khz=1") > params.index("tsc_early_khz=2100000")


def test_microvm_uses_mmio_and_modern_virtio() -> None:
    argv = build_argv(plan(machine="microvm", share=SharePlan("9p", path=Path("/sh"))))
    p = pairs(argv)
    assert ("-M", "microvm") in p
    assert ("-global", "virtio-mmio.force-legacy=false") in p
    devices = [v for k, v in p if k == "-device"]
    assert "virtio-serial-device,id=vser0" in devices
    assert "virtio-9p-device,fsdev=share,mount_tag=cocoon" in devices


def test_microvm_has_no_vmgenid_and_an_arat_cpu() -> None:
    argv = build_argv(plan(machine="microvm"))
    assert not any("vmgenid" in a for a in argv)
    assert ("-cpu", "qemu64,+arat") in pairs(argv)


def test_free_page_reporting() -> None:
    assert "-device" in build_argv(plan(free_page_reporting=True))
    p = pairs(build_argv(plan(free_page_reporting=True)))
    assert ("-device", "virtio-balloon-pci,id=balloon0,free-page-reporting=on") in p
    assert not any("balloon" in a for a in build_argv(plan()))


def test_tcg_translation_cache_size() -> None:
    assert ("-accel", "tcg,tb-size=32") in pairs(build_argv(plan(tcg_tb_size=32)))
    assert ("-accel", "kvm") in pairs(build_argv(plan(tcg_tb_size=32, accel="kvm")))


def test_template_ram_is_a_shared_file_and_a_clone_maps_it_private() -> None:
    share = SharePlan("9p", path=Path("/sb/shared"))
    tmpl = pairs(build_argv(plan(share=share, memory_file=Path("/t/memory"), memory_shared=True)))
    assert ("-M", "pc,memory-backend=mem") in tmpl
    assert (
        "-object",
        "memory-backend-file,id=mem,size=256M,mem-path=/t/memory,share=on",
    ) in tmpl
    clone_argv = build_argv(plan(share=share, memory_file=Path("/t/memory"), incoming=True))
    clone = pairs(clone_argv)
    assert ("-object", "memory-backend-file,id=mem,size=256M,mem-path=/t/memory,share=off") in clone
    assert clone_argv[-2:] == ["-incoming", "defer"]


def test_a_template_cannot_use_virtio_fs() -> None:
    with pytest.raises(ValueError, match="virtio-fs"):
        plan(share=SharePlan("virtiofs", socket=Path("/v.sock")), memory_file=Path("/t/m"))


def test_9p_share() -> None:
    p = pairs(build_argv(plan(share=SharePlan("9p", path=Path("/sb/shared")))))
    assert ("-fsdev", "local,id=share,path=/sb/shared,security_model=none") in p
    assert ("-device", "virtio-9p-pci,fsdev=share,mount_tag=cocoon") in p


def test_virtiofs_needs_shared_memory() -> None:
    p = pairs(build_argv(plan(memory_mib=512, share=SharePlan("virtiofs", socket=Path("/v")))))
    assert ("-object", "memory-backend-memfd,id=mem,size=512M,share=on") in p
    assert ("-numa", "node,memdev=mem") in p
    assert ("-device", "vhost-user-fs-pci,chardev=vfs,tag=cocoon") in p
    mp = pairs(build_argv(plan(machine="microvm", share=SharePlan("virtiofs", socket=Path("/v")))))
    assert ("-M", "microvm,memory-backend=mem") in mp


def test_kvm_uses_host_cpu() -> None:
    assert ("-cpu", "host") in pairs(build_argv(plan(accel="kvm")))


@pytest.mark.parametrize("kw", [{"machine": "q99"}, {"accel": "hvf"}])
def test_bad_plans_are_refused(kw: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        plan(**kw)


def test_hotplug_ceilings_on_pc_only() -> None:
    p = pairs(
        build_argv(plan(vcpus=1, max_vcpus=4, memory_mib=256, max_memory_mib=2048, memory_slots=8))
    )
    assert ("-smp", "1,maxcpus=4") in p
    assert ("-m", "256M,slots=8,maxmem=2048M") in p
    assert "memhp_default_state=online swiotlb=noforce" in dict(p)["-append"]
    micro = pairs(
        build_argv(plan(machine="microvm", max_vcpus=4, max_memory_mib=2048, memory_slots=8))
    )
    assert ("-smp", "1") in micro and ("-m", "256M") in micro
    assert "memhp_default_state" not in dict(micro)["-append"]


def test_microvm_nics_on_the_command_line_pc_none() -> None:
    from cocoon.hypervisor.cmdline import NicArg

    nic = NicArg("hostnet0", "net0", 7, "aa:bb:cc:00:00:01")
    p = pairs(build_argv(plan(machine="microvm", nics=(nic,))))
    assert ("-netdev", "tap,id=hostnet0,fd=7") in p
    assert ("-device", "virtio-net-device,netdev=hostnet0,id=net0,mac=aa:bb:cc:00:00:01") in p
    assert not any(k == "-netdev" for k, _ in pairs(build_argv(plan())))


def test_guest_cpu_offers_1g_pages_where_the_host_has_them(tmp_path: Path) -> None:
    from cocoon.hypervisor.cmdline import host_cpu_features

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu pse pdpe1gb lm\n\nflags\t: fpu pdpe1gb\n")
    assert host_cpu_features(str(info)) == ("pdpe1gb",)
    info.write_text("flags\t\t: fpu pse lm\n")
    assert host_cpu_features.__wrapped__(str(info)) == ()
    assert ("-cpu", "qemu64,+pdpe1gb") in pairs(build_argv(plan(cpu_features=("pdpe1gb",))))
    argv = build_argv(plan(machine="microvm", cpu_features=("pdpe1gb",)))
    assert ("-cpu", "qemu64,+arat,+pdpe1gb") in pairs(argv)
    assert ("-cpu", "host") in pairs(build_argv(plan(accel="kvm", cpu_features=("pdpe1gb",))))


def test_the_debug_console_is_a_console_port_only_when_asked_for() -> None:
    assert not any("virtconsole" in a for a in build_argv(plan()))
    argv = build_argv(plan(debug_socket=Path("/s/debug.sock")))
    p = pairs(argv)
    assert ("-chardev", "socket,id=debugcon,path=/s/debug.sock,server=on,wait=off") in p
    assert ("-device", "virtconsole,bus=vser0.0,chardev=debugcon,name=cocoon.debug") in p
    assert "cocoon.debug_console=1" in dict(p)["-append"].split()


def test_qemu_runs_under_its_seccomp_sandbox() -> None:
    for share in (None, SharePlan("9p", path=Path("/s")), SharePlan("virtiofs", socket=Path("/v"))):
        p = pairs(build_argv(plan(share=share)))
        sandbox = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
        assert ("-sandbox", sandbox) in p


def test_a_migration_destination_can_start_paused() -> None:
    argv = build_argv(plan(incoming=True, start_paused=True))
    assert argv[-3:] == ["-S", "-incoming", "defer"]
    assert "-S" not in build_argv(plan(incoming=True))
