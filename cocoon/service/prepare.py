"""What a new sandbox needs before its service starts, for both front doors.

The CLI's ``create``/``run`` and the containerd shim's ``start`` validate the bundle,
decide the network namespace, compute the settings (configuration file, annotations,
sizing), check the host cgroup plan, locate the assets and the accelerator, and
write it all once into ``state.json``: the plan the service (or the shim's serve
process) reads and applies. Everything is checked before anything is created.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cocoon.cli.output import Reporter
from cocoon.errors import AlreadyExists, InvalidArgument
from cocoon.oci.ids import validate_id
from cocoon.service.persist import SandboxPaths

if TYPE_CHECKING:
    from cocoon.assets import GuestAssets
    from cocoon.config.schema import Config
    from cocoon.config.settings import Settings


def _paths(args: argparse.Namespace) -> SandboxPaths:
    from cocoon.config.paths import runtime_root

    return SandboxPaths(runtime_root(args.root), validate_id(args.id))


def effective_config(args: argparse.Namespace) -> Config:
    from cocoon.config.loader import load

    return load(getattr(args, "config", None))


def sandbox_settings(
    args: argparse.Namespace,
    spec: dict[str, Any],
    annotations: dict[str, str],
    base: Config | None = None,
) -> Settings:
    """Configuration file + the container's annotations (allowlisted) + sizing."""
    import os

    from cocoon.config.annotations import apply_annotations
    from cocoon.config.settings import host_memory_mib, resolve
    from cocoon.resources.sizing import boot_size

    config = apply_annotations(base or effective_config(args), annotations)
    size = boot_size(config, spec, os.cpu_count() or 1, host_memory_mib())
    return resolve(config, size)


def with_configured_files(assets: GuestAssets, config: Config) -> GuestAssets:
    """``[hypervisor.qemu] kernel/initrd/image``, when set, replace the cached assets."""
    from cocoon.assets import GuestAssets

    def pick(field: str, value: str, cached: Path) -> Path:
        if not value:
            return cached
        path = Path(value)
        if not path.is_absolute() or not path.is_file():
            raise InvalidArgument(f"[hypervisor.qemu] {field}: {value} is not a file")
        return path

    hv = config.hypervisor
    return GuestAssets(
        kernel=pick("kernel", hv.kernel, assets.kernel),
        initrd=pick("initrd", hv.initrd, assets.initrd),
        image=pick("image", hv.image, assets.image),
        key=assets.key,
        kernel_version=assets.kernel_version,
    )


def prepare_sandbox(
    args: argparse.Namespace, reporter: Reporter, check_terminal: Callable[[bool], None]
) -> tuple[SandboxPaths, Path]:
    """Validate the inputs, then create the state dir and state.json for a new sandbox.

    Everything that can be checked is checked before anything is created, so
    bad input leaves nothing behind. Raises InvalidArgument, AlreadyExists,
    AssetsMissing.
    """
    from cocoon.assets import locate
    from cocoon.cli.common import check_pid_file, now_rfc3339
    from cocoon.config.paths import assets_dir, cache_dir
    from cocoon.hypervisor.accel import decide
    from cocoon.oci.spec import load_bundle
    from cocoon.service import persist

    paths = _paths(args)
    bundle = load_bundle(args.bundle)
    if getattr(args, "verb", "") in ("create", "run", "restore"):
        from cocoon.oci.spec import require_process

        require_process(bundle)
        check_pid_file(getattr(args, "pid_file", None))
    check_terminal(bundle.terminal)
    from cocoon.errors import InvalidArgument
    from cocoon.oci.spec import vm_compatibility

    if getattr(args, "preserve_fds", 0):
        raise InvalidArgument("--preserve-fds is not supported: host fds cannot enter the VM")
    errors, warnings = vm_compatibility(bundle.spec)
    if errors:
        raise InvalidArgument(f"unsupported in {bundle.path}/config.json: {errors[0]}")
    from cocoon.network.netns import resolve as resolve_netns

    netns = resolve_netns(bundle.spec)  # refuses the host's and other containers' networks
    for warning in warnings:
        reporter.warn(warning)
    config = effective_config(args)
    settings = sandbox_settings(args, bundle.spec, bundle.annotations, config)
    from cocoon.service.hostcg import plan_for

    cgroup = plan_for(bundle.spec, paths.id, settings.memory_mib, settings.host_overhead_mib)
    for note in cgroup.skipped:  # limits the VM's host cgroup cannot take, as they are
        reporter.warn(f"host cgroup: {note}")
    assets = with_configured_files(locate(assets_dir(args.assets_dir)), config)
    paths.check_socket_lengths()
    if paths.dir.exists():
        raise AlreadyExists(f"container {paths.id!r} already exists")
    decision = decide(
        settings.qemu, assets.kernel, assets.initrd, assets.image, cache_dir() / "accel.json"
    )
    if decision.accel == "tcg":
        reporter.warn(f"{decision.reason}: running under software emulation (TCG), slowly")
    paths.root.mkdir(parents=True, exist_ok=True, mode=0o711)
    try:
        paths.dir.mkdir(mode=0o700)
    except FileExistsError:
        raise AlreadyExists(f"container {paths.id!r} already exists") from None
    paths.make_sock_dir()
    state = persist.SandboxState(
        id=paths.id,
        bundle=str(bundle.path),
        created=now_rfc3339(),
        accel=decision.accel,
        annotations=bundle.annotations,
        settings=settings.to_dict(),
        netns=netns,
        assets={
            "kernel": str(assets.kernel),
            "initrd": str(assets.initrd),
            "image": str(assets.image),
            "key": assets.key,
            "kernel_version": assets.kernel_version,
        },
    )
    persist.save(paths, state)
    return paths, bundle.path
