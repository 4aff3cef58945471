"""Guest assets: the kernel, initramfs and root image every Cocoon VM boots.

* ``vmlinux``: the uncompressed kernel ELF from the installed Debian kernel
  (PVH direct boot with ``-kernel``);
* ``initrd.img``: busybox-static + the virtio/9p/virtiofs/erofs/overlay modules
  and an ``/init`` that mounts the root image and starts the agent
  (see :mod:`cocoon.assets.initscript`);
* ``root.erofs``: a read-only Debian bookworm root (python3, crun, iproute2)
  with the guest agent in ``/opt/cocoon`` (attach as a read-only virtio-blk disk,
  the first one, ``/dev/vda``, unless the kernel command line says
  ``cocoon.root=/dev/...``).

Sets live in ``<assets_dir>/<key>/``; the key covers every input (builder
version, kernel file, package and module lists, the init script, the agent
sources), so :func:`locate` finds the right set or says it must be built.

This module is on the VM start path: standard library only, and cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cocoon.assets import inputs as _inputs
from cocoon.errors import AssetsMissing

__all__ = ["BuiltAssets", "GuestAssets", "build", "list_built", "locate"]


@dataclass(frozen=True)
class GuestAssets:
    """One built set of guest assets."""

    kernel: Path  # uncompressed vmlinux ELF (PVH direct boot)
    initrd: Path  # initramfs cpio (newc)
    image: Path  # read-only erofs root image
    key: str  # cache key (hex)
    kernel_version: str  # e.g. "6.1.0-56-amd64"

    @property
    def directory(self) -> Path:
        return self.kernel.parent


@dataclass(frozen=True)
class BuiltAssets:
    """A set found in the cache, as :func:`list_built` reports it."""

    assets: GuestAssets
    built_at: float  # unix time
    kernel_size: int
    initrd_size: int
    image_size: int
    current: bool  # the set :func:`locate` would return


def set_for_key(assets_dir: Path, key: str, kernel_version: str) -> GuestAssets:
    """The paths of the set named ``key`` (whether or not it exists)."""
    d = assets_dir / key
    return GuestAssets(
        kernel=d / _inputs.KERNEL_NAME,
        initrd=d / _inputs.INITRD_NAME,
        image=d / _inputs.IMAGE_NAME,
        key=key,
        kernel_version=kernel_version,
    )


def complete(set_dir: Path) -> bool:
    """Whether ``set_dir`` holds every file of a set (the manifest is written last)."""
    return all((set_dir / name).is_file() for name in _inputs.ASSET_NAMES)


def current_key() -> tuple[str, str]:
    """``(key, kernel version)`` for the current inputs.

    Raises:
        AssetsMissing: no usable kernel is installed.
    """
    try:
        kernel, inputs = _inputs.current_inputs()
    except FileNotFoundError as exc:
        raise AssetsMissing(f"cannot compute the guest assets key: {exc}") from exc
    return _inputs.compute_key(inputs), kernel.version


def locate(assets_dir: Path) -> GuestAssets:
    """The built set for the current inputs (cheap: a few stats and a hash of the agent).

    Raises:
        AssetsMissing: it is not built (run ``cocoon assets build``).
    """
    key, version = current_key()
    if not complete(assets_dir / key):
        raise AssetsMissing(
            f"guest assets are not built for this version of Cocoon (looked in {assets_dir}): "
            "run `cocoon assets build`"
        )
    return set_for_key(assets_dir, key, version)


def build(
    assets_dir: Path, *, force: bool = False, progress: Callable[[str], None] | None = None
) -> GuestAssets:
    """Build (or find already built) the set for the current inputs; see :mod:`.builder`.

    ``progress`` is called with a short description at the start of each step,
    and with ``"warning: ..."`` and ``"note: ..."`` lines that are not steps.

    Raises:
        cocoon.assets.errors.BuildError: not root, a missing tool or module, a failed step.
    """
    from cocoon.assets.builder import build as _build

    return _build(assets_dir, force=force, progress=progress)


def list_built(assets_dir: Path) -> list[BuiltAssets]:
    """Every complete set in ``assets_dir``, newest first."""
    import json

    try:
        current: str | None = current_key()[0]
    except AssetsMissing:
        current = None
    found: list[BuiltAssets] = []
    try:
        entries = list(assets_dir.iterdir())
    except OSError:
        return []
    for entry in entries:
        if not _inputs.KEY_RE.match(entry.name) or not complete(entry):
            continue
        try:
            manifest = json.loads((entry / _inputs.MANIFEST_NAME).read_text())
            version = str(manifest["kernel"]["version"])
            built_at = float(manifest["built_at"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        assets = set_for_key(assets_dir, entry.name, version)
        found.append(
            BuiltAssets(
                assets=assets,
                built_at=built_at,
                kernel_size=assets.kernel.stat().st_size,
                initrd_size=assets.initrd.stat().st_size,
                image_size=assets.image.stat().st_size,
                current=entry.name == current,
            )
        )
    found.sort(key=lambda b: b.built_at, reverse=True)
    return found
