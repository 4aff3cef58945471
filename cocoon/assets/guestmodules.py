"""The guest kernel's loadable modules in the root image: ``/lib/modules/<version>``.

So ``modprobe`` works in the guest (the kernel's own autoload helper, a
privileged container's ``ip link add ... type bridge``, ``[agent]
kernel_modules``). Not the whole Debian tree (~400 MB, mostly hardware
drivers a VM never sees): the directories a sandbox can use (filesystems,
networking, netfilter, crypto, block and virtual NIC drivers), plus whatever
those depend on, computed from the host tree's ``modules.dep`` as plain data
(:func:`select_modules`). ``depmod`` then indexes the copy. Size costs no
boot time: the image is erofs on virtio-blk and only pages read are loaded.

The lists are on the asset-key path (:mod:`.inputs`): cheap to import.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

#: Module directories copied (relative to the version's directory).
INCLUDE: tuple[str, ...] = (
    "kernel/arch",
    "kernel/block",
    "kernel/crypto",
    "kernel/fs",
    "kernel/lib",
    "kernel/mm",
    "kernel/net",
    "kernel/virt",
    "kernel/drivers/block",
    "kernel/drivers/char",
    "kernel/drivers/md",
    "kernel/drivers/net",
    "kernel/drivers/vhost",
    "kernel/drivers/virtio",
)

#: Hardware a VM has not got, under the included directories.
EXCLUDE: tuple[str, ...] = (
    "kernel/drivers/net/can",
    "kernel/drivers/net/ethernet",
    "kernel/drivers/net/ieee802154",
    "kernel/drivers/net/usb",
    "kernel/drivers/net/wireless",
    "kernel/drivers/net/wwan",
    "kernel/net/bluetooth",
    "kernel/net/mac80211",
    "kernel/net/wireless",
)

#: Index files copied as they are (depmod writes the modules.dep family anew).
INDEX_FILES: tuple[str, ...] = ("modules.order", "modules.builtin", "modules.builtin.modinfo")


def parse_modules_dep(text: str) -> dict[str, list[str]]:
    """``modules.dep`` as ``{module path: [dependency paths]}`` (paths relative to the tree)."""
    deps: dict[str, list[str]] = {}
    for line in text.splitlines():
        mod, sep, rest = line.partition(":")
        if sep and mod.strip():
            deps[mod.strip()] = rest.split()
    return deps


def _under(path: str, dirs: Iterable[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in dirs)


def select_modules(
    deps: Mapping[str, Sequence[str]],
    include: Sequence[str] = INCLUDE,
    exclude: Sequence[str] = EXCLUDE,
) -> list[str]:
    """The module files to copy: those under ``include`` but not ``exclude``, with
    every dependency (wherever it lives), sorted."""
    chosen: set[str] = set()
    stack = [m for m in deps if _under(m, include) and not _under(m, exclude)]
    while stack:
        mod = stack.pop()
        if mod in chosen:
            continue
        chosen.add(mod)
        stack.extend(deps.get(mod, ()))
    return sorted(chosen)


def _link_or_copy(src: Path, dst: Path) -> None:
    import shutil

    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def install_modules(root: Path, modules_dir: Path, version: str, log: Path) -> int:
    """Copy the selected modules of ``modules_dir`` into ``root``'s ``/lib/modules/<version>``
    and run ``depmod`` on the copy; return how many modules went in.

    Files are hard links (new names only: nothing is written through them).

    Raises:
        BuildError: depmod is missing or fails.
    """
    import shutil

    from cocoon.assets.command import require_tool, run

    require_tool("depmod")
    deps = parse_modules_dep((modules_dir / "modules.dep").read_text())
    dest = root / "lib/modules" / version
    chosen = select_modules(deps)
    for rel in chosen:
        _link_or_copy(modules_dir / rel, dest / rel)
    for name in INDEX_FILES:
        if (modules_dir / name).is_file():
            shutil.copyfile(modules_dir / name, dest / name)
    run(["depmod", "-b", str(root), version], log, "indexing the guest kernel modules (depmod)")
    return len(chosen)
