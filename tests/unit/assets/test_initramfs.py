"""Module ordering, module resolution and the cpio writer (pure; no modinfo)."""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from cocoon.assets import initramfs as ir
from cocoon.assets.errors import BuildError
from cocoon.assets.initscript import APPLETS

# The real dependency map of Debian's 6.1 kernel for the wanted modules.
DEPENDS = {
    "virtio_pci": ["virtio_ring", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio"],
    "virtio": ["virtio_ring"],
    "virtio_mmio": ["virtio", "virtio_ring"],
    "virtio_console": ["virtio", "virtio_ring"],
    "virtio_blk": ["virtio", "virtio_ring"],
    "virtio_net": ["virtio_ring", "virtio", "net_failover"],
    "net_failover": ["failover"],
    "virtiofs": ["fuse", "virtio", "virtio_ring"],
    "9pnet_virtio": ["virtio", "9pnet", "virtio_ring"],
    "9p": ["9pnet", "fscache", "netfs"],
    "fscache": ["netfs"],
    "erofs": ["libcrc32c"],
}
WANTED = [
    "virtio_pci", "virtio_mmio", "virtio_console", "virtio_blk", "virtio_net", "virtio_rng",
    "virtio_balloon", "fuse", "virtiofs", "9pnet", "9pnet_virtio", "9p", "crc32c_generic",
    "erofs", "overlay",
]  # fmt: skip


def assert_deps_first(order: list[str], depends: dict[str, list[str]]) -> None:
    pos = {m: i for i, m in enumerate(order)}
    for mod, deps in depends.items():
        if mod in pos:
            for dep in deps:
                if dep in pos:
                    assert pos[dep] < pos[mod], f"{dep} must load before {mod}: {order}"


def test_order_puts_dependencies_first_without_duplicates() -> None:
    order = ir.order_modules(WANTED, DEPENDS)
    assert len(order) == len(set(order))
    assert_deps_first(order, DEPENDS)
    expected = set(WANTED) | {m for deps in DEPENDS.values() for m in deps}
    assert set(order) == expected
    assert order.index("crc32c_generic") < order.index("libcrc32c") < order.index("erofs")


def test_crc32c_generic_before_libcrc32c_even_when_listed_last() -> None:
    order = ir.order_modules(["erofs", "overlay", "crc32c_generic"], {"erofs": ["libcrc32c"]})
    assert order.index("crc32c_generic") < order.index("libcrc32c")
    assert order.index("crc32c_generic") < order.index("erofs")


def test_pre_deps_only_apply_to_wanted_modules() -> None:
    assert ir.order_modules(["erofs"], {"erofs": ["libcrc32c"]}) == ["libcrc32c", "erofs"]


def test_order_follows_the_wanted_list_otherwise() -> None:
    assert ir.order_modules(["c", "b", "a"], {}) == ["c", "b", "a"]


def test_order_survives_cycles() -> None:
    depends = {"a": ["b"], "b": ["c"], "c": ["a"], "d": ["d"]}
    order = ir.order_modules(["a", "d"], depends)
    assert sorted(order) == ["a", "b", "c", "d"]
    assert order.index("c") < order.index("b") < order.index("a")


def test_order_normalizes_dashes_and_skips_builtins() -> None:
    order = ir.order_modules(["virtio-rng", "x"], {"x": ["crc32"]}, skip=["crc32"])
    assert order == ["virtio_rng", "x"]


def fake_lookup(table: dict[str, ir.ModuleInfo]) -> Callable[[str], ir.ModuleInfo | None]:
    return table.get


def info(name: str, *deps: str) -> ir.ModuleInfo:
    return ir.ModuleInfo(name, Path(f"/lib/modules/x/{name}.ko"), tuple(deps))


def test_resolve_reports_a_missing_module_by_name() -> None:
    table = {"erofs": info("erofs", "libcrc32c")}
    with pytest.raises(BuildError, match="kernel module libcrc32c is missing"):
        ir.resolve_modules(["erofs"], fake_lookup(table), builtin=set())


def test_resolve_skips_builtin_modules() -> None:
    table = {"erofs": info("erofs", "libcrc32c"), "crc32c_generic": info("crc32c_generic")}
    got = ir.resolve_modules(["crc32c_generic", "erofs"], fake_lookup(table), {"libcrc32c"})
    assert [m.name for m in got] == ["crc32c_generic", "erofs"]
    builtin_by_modinfo = {"erofs": ir.ModuleInfo("erofs", None, ())}
    assert ir.resolve_modules(["erofs"], fake_lookup(builtin_by_modinfo), set()) == []


def test_builtin_modules_reads_modules_builtin(tmp_path: Path) -> None:
    (tmp_path / "modules.builtin").write_text(
        "kernel/lib/crc32.ko\nkernel/drivers/x/virtio-foo.ko\n"
    )
    assert ir.builtin_modules(tmp_path) == {"crc32", "virtio_foo"}
    assert ir.builtin_modules(tmp_path / "missing") == set()


def parse_cpio(data: bytes) -> list[tuple[str, int, int, bytes, tuple[int, int], int]]:
    """(name, mode, nlink, data, rdev, ino) per entry, up to the trailer."""
    out: list[tuple[str, int, int, bytes, tuple[int, int], int]] = []
    pos = 0
    while True:
        assert data[pos : pos + 6] == b"070701"
        f = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        ino, mode, uid, gid, nlink, mtime, size = f[:7]
        namesize = f[11]
        assert uid == gid == mtime == 0
        name_start = pos + 110
        name = data[name_start : name_start + namesize - 1].decode()
        pos = name_start + namesize
        pos += -pos % 4
        body = data[pos : pos + size]
        pos += size
        pos += -pos % 4
        if name == "TRAILER!!!":
            assert pos == len(data)
            return out
        out.append((name, mode, nlink, body, (f[9], f[10]), ino))


def test_cpio_roundtrip_sorted_and_deterministic() -> None:
    entries = [
        ir.regular("init", b"#!/bin/sh\n", 0o755),
        ir.directory("bin"),
        ir.symlink("bin/sh", "busybox"),
        ir.regular("bin/busybox", b"\x7fELF" * 3, 0o755),
        ir.chardev("dev/console", 5, 1),
        ir.directory("dev"),
    ]
    data = ir.write_cpio(entries)
    assert data == ir.write_cpio(reversed(entries))
    parsed = parse_cpio(data)
    assert [p[0] for p in parsed] == ["bin", "bin/busybox", "bin/sh", "dev", "dev/console", "init"]
    by_name = {p[0]: p for p in parsed}
    assert stat.S_ISDIR(by_name["bin"][1]) and by_name["bin"][2] == 2
    assert by_name["bin/sh"][3] == b"busybox" and stat.S_ISLNK(by_name["bin/sh"][1])
    assert stat.S_ISCHR(by_name["dev/console"][1]) and by_name["dev/console"][4] == (5, 1)
    assert stat.S_IMODE(by_name["init"][1]) == 0o755 and by_name["init"][2] == 1
    assert [p[5] for p in parsed] == list(range(1, 7))


def test_cpio_rejects_duplicates() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        ir.write_cpio([ir.directory("a"), ir.directory("a")])


def test_initramfs_entries_layout() -> None:
    modules = [("virtio_ring", b"ko1"), ("virtio", b"ko2")]
    entries = {e.name: e for e in ir.initramfs_entries(b"BB", modules, "#!/bin/sh\n")}
    assert entries["etc/modorder"].data == b"virtio_ring\nvirtio\n"
    assert entries["lib/modules/virtio.ko"].data == b"ko2"
    assert entries["init"].data == b"#!/bin/sh\n" and entries["init"].mode & 0o111
    assert entries["dev/console"].rdev == (5, 1)
    for d in ("newroot", "proc", "sys", "dev"):
        assert stat.S_ISDIR(entries[d].mode)
    for applet in APPLETS:
        assert entries[f"bin/{applet}"].data == b"busybox"
    parse_cpio(ir.write_cpio(entries.values()))  # parents sort before children


def test_read_module_decompresses(tmp_path: Path) -> None:
    import gzip
    import lzma

    (tmp_path / "a.ko").write_bytes(b"plain")
    (tmp_path / "b.ko.xz").write_bytes(lzma.compress(b"xz", format=lzma.FORMAT_XZ))
    (tmp_path / "c.ko.gz").write_bytes(gzip.compress(b"gz"))
    assert ir.read_module(tmp_path / "a.ko") == b"plain"
    assert ir.read_module(tmp_path / "b.ko.xz") == b"xz"
    assert ir.read_module(tmp_path / "c.ko.gz") == b"gz"
