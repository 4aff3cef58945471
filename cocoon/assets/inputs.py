"""What goes into the guest assets, and the cache key that names a built set.

Standard library only and cheap: :func:`cocoon.assets.locate` runs this on the
hot path of every VM start. Nothing here reads the kernel's contents or runs a
program; the key covers the kernel by path, size and mtime.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cocoon.assets.guestmodules import EXCLUDE, INCLUDE
from cocoon.assets.initscript import INIT_SCRIPT

#: Bump when the builder's output changes for the same inputs (trim list, image
#: options, cpio layout, init script helpers...). Part of every cache key.
BUILDER_VERSION = "2"

#: Bump when the cached base root tree changes for the same packages (mmdebstrap
#: options, the trim list, the bytecode compile step). Part of the base key only.
BASE_VERSION = "1"

#: Debian suite and packages of the guest root image (``mmdebstrap --include``).
#: ``python3`` rather than ``python3-minimal``: the agent needs asyncio, json and
#: ctypes, which live in ``libpython3.11-stdlib``; ``kmod`` for ``modprobe``
#: (the kernel's autoload helper and ``[agent] kernel_modules``).
SUITE = "bookworm"
PACKAGES: tuple[str, ...] = ("python3", "crun", "iproute2", "kmod")

#: Kernel modules the initramfs loads, by module name. Their dependencies are
#: added at build time (``modinfo -F depends``); see ``initramfs.order_modules``.
MODULES: tuple[str, ...] = (
    "virtio_pci",
    "virtio_mmio",
    "virtio_console",
    "virtio_blk",
    "virtio_net",
    "virtio_rng",
    "virtio_balloon",
    "fuse",
    "virtiofs",
    "9pnet",
    "9pnet_virtio",
    "9p",
    "crc32c_generic",
    "erofs",
    "overlay",
)

#: How the initramfs cpio is stored ("none" or "gzip", i.e. gzip -1). Measured under
#: TCG on pc (4.3 MiB cpio vs 1.8 MiB gzip): the kernel unpacks the plain cpio in
#: ~0.07-0.12 s and the gzip one in ~0.15-0.27 s; wall time to the agent launch was
#: equal within the host's noise (median 4.50 vs 4.49 s, 8 runs each). Plain it is.
INITRD_COMPRESSION = "none"

#: The guest agent: these paths (relative to the directory holding the
#: ``cocoon`` package) are copied into the image under ``/opt/cocoon/lib``.
AGENT_FILES: tuple[str, ...] = ("cocoon/__init__.py",)
AGENT_PACKAGES: tuple[str, ...] = ("cocoon/guest", "cocoon/wire", "cocoon/ttrpc")

BUSYBOX = Path("/bin/busybox")
BOOT_DIR = Path("/boot")
MODULES_ROOT = Path("/lib/modules")

#: Names of the files in a built set, inside ``<assets_dir>/<key>/``.
KERNEL_NAME = "vmlinux"
INITRD_NAME = "initrd.img"
IMAGE_NAME = "root.erofs"
MANIFEST_NAME = "manifest.json"
ASSET_NAMES: tuple[str, ...] = (KERNEL_NAME, INITRD_NAME, IMAGE_NAME, MANIFEST_NAME)

KEY_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class HostKernel:
    """An installed Debian kernel: the bzImage and its module tree."""

    image: Path
    version: str
    modules_dir: Path


@dataclass(frozen=True)
class KeyInputs:
    """Everything the cache key covers, as plain data (so tests can vary one field)."""

    builder_version: str
    kernel_path: str
    kernel_size: int
    kernel_mtime_ns: int
    busybox: str
    packages: tuple[str, ...]
    modules: tuple[str, ...]
    initrd_compression: str
    init_script: str
    agent_digest: str
    # The guest's /lib/modules selection (``guestmodules.INCLUDE``, then "-" EXCLUDE).
    guest_module_dirs: tuple[str, ...] = ()


def _version_sort_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Order kernel versions like ``sort -V``: numbers compare as numbers."""
    parts = re.findall(r"\d+|[^\d]+", version)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


def find_kernel(boot_dir: Path | None = None, modules_root: Path | None = None) -> HostKernel:
    """The newest installed kernel (``BOOT_DIR/vmlinuz-*``) that has a module tree.

    Raises:
        FileNotFoundError: no ``vmlinuz-*`` with a matching ``/lib/modules/<version>``.
    """
    boot_dir = BOOT_DIR if boot_dir is None else boot_dir
    modules_root = MODULES_ROOT if modules_root is None else modules_root
    candidates = []
    try:
        names = os.listdir(boot_dir)
    except OSError:
        names = []
    for name in names:
        if not name.startswith("vmlinuz-"):
            continue
        version = name[len("vmlinuz-") :]
        if (modules_root / version).is_dir():
            candidates.append(version)
    if not candidates:
        raise FileNotFoundError(
            f"no kernel found: need {boot_dir}/vmlinuz-<version> and {modules_root}/<version> "
            "(install linux-image-amd64)"
        )
    version = max(candidates, key=_version_sort_key)
    return HostKernel(boot_dir / f"vmlinuz-{version}", version, modules_root / version)


def package_root() -> Path:
    """The directory that holds the installed ``cocoon`` package."""
    import cocoon

    return Path(cocoon.__file__).resolve().parent.parent


def agent_sources(root: Path | None = None) -> list[tuple[str, Path]]:
    """The guest agent's source files as sorted ``(relative path, file)`` pairs.

    ``relative path`` is relative to ``root`` (default: :func:`package_root`),
    e.g. ``cocoon/guest/main.py``. Missing packages are skipped: other parts of
    the tree may not exist yet.
    """
    base = root if root is not None else package_root()
    found: dict[str, Path] = {}
    for rel in AGENT_FILES:
        path = base / rel
        if path.is_file():
            found[rel] = path
    for rel in AGENT_PACKAGES:
        pkg = base / rel
        if not pkg.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(pkg):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for name in filenames:
                if name.endswith(".py"):
                    path = Path(dirpath) / name
                    found[path.relative_to(base).as_posix()] = path
    return sorted(found.items())


def digest_files(files: Iterable[tuple[str, bytes]]) -> str:
    """sha256 over ``(relative path, contents)`` pairs, in the order given."""
    h = hashlib.sha256()
    for rel, data in files:
        encoded = rel.encode()
        h.update(len(encoded).to_bytes(4, "big"))
        h.update(encoded)
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


def agent_digest(root: Path | None = None) -> str:
    """sha256 of the guest agent sources (sorted relative paths + contents)."""
    return digest_files((rel, path.read_bytes()) for rel, path in agent_sources(root))


def compute_key(inputs: KeyInputs) -> str:
    """The cache key: sha256 (hex) over every field of ``inputs``, length-prefixed."""
    h = hashlib.sha256()

    def put(value: str) -> None:
        data = value.encode()
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)

    put("cocoon-assets")
    put(inputs.builder_version)
    put(inputs.kernel_path)
    put(str(inputs.kernel_size))
    put(str(inputs.kernel_mtime_ns))
    put(inputs.busybox)
    put("\0".join(inputs.packages))
    put("\0".join(inputs.modules))
    put(inputs.initrd_compression)
    put(inputs.init_script)
    put(inputs.agent_digest)
    put("\0".join(inputs.guest_module_dirs))
    return h.hexdigest()


def current_inputs(
    kernel: HostKernel | None = None, agent_root: Path | None = None
) -> tuple[HostKernel, KeyInputs]:
    """Gather the key inputs for this host and this copy of Cocoon.

    Raises:
        FileNotFoundError: no usable kernel is installed.
    """
    k = kernel if kernel is not None else find_kernel()
    st = k.image.stat()
    try:
        bst = BUSYBOX.stat()
        busybox = f"{BUSYBOX}:{bst.st_size}:{bst.st_mtime_ns}"
    except OSError:
        busybox = f"{BUSYBOX}:missing"
    inputs = KeyInputs(
        builder_version=BUILDER_VERSION,
        kernel_path=str(k.image),
        kernel_size=st.st_size,
        kernel_mtime_ns=st.st_mtime_ns,
        busybox=busybox,
        packages=PACKAGES,
        modules=MODULES,
        initrd_compression=INITRD_COMPRESSION,
        init_script=INIT_SCRIPT,
        agent_digest=agent_digest(agent_root),
        guest_module_dirs=(*INCLUDE, *(f"-{d}" for d in EXCLUDE)),
    )
    return k, inputs


def base_key(packages: Sequence[str] = PACKAGES, suite: str = SUITE) -> str:
    """Key of the cached base root tarball: packages + suite + base builder version.

    Independent of the agent, the kernel and the init script, so changing the
    agent never reruns mmdebstrap.
    """
    h = hashlib.sha256()
    for part in ("cocoon-base", BASE_VERSION, suite, *packages):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:32]
