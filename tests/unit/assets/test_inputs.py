"""Cache key and input discovery (no /boot, no real kernel needed)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cocoon.assets import inputs as inp
from cocoon.assets.initscript import INIT_SCRIPT


def make_agent_tree(root: Path) -> Path:
    files = {
        "cocoon/__init__.py": "__version__ = '0'\n",
        "cocoon/errors.py": "# host only, not part of the agent\n",
        "cocoon/guest/__init__.py": "",
        "cocoon/guest/main.py": "def main() -> None:\n    pass\n",
        "cocoon/guest/sub/deep.py": "X = 1\n",
        "cocoon/guest/notes.txt": "not python\n",
        "cocoon/wire/__init__.py": "",
        "cocoon/ttrpc/framing.py": "HEADER = 10\n",
        "cocoon/hypervisor/qemu.py": "# host only\n",
    }
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    cache = root / "cocoon/guest/__pycache__"
    cache.mkdir()
    (cache / "main.cpython-311.pyc").write_bytes(b"\0" * 16)
    return root


def base_inputs(**changes: object) -> inp.KeyInputs:
    inputs = inp.KeyInputs(
        builder_version="1",
        kernel_path="/boot/vmlinuz-6.1.0-56-amd64",
        kernel_size=8_000_000,
        kernel_mtime_ns=1_700_000_000_000_000_000,
        busybox="/bin/busybox:1982256:1",
        packages=("python3", "crun", "iproute2"),
        modules=("virtio_pci", "erofs"),
        initrd_compression="none",
        init_script="#!/bin/sh\n",
        agent_digest="a" * 64,
    )
    return dataclasses.replace(inputs, **changes)  # type: ignore[arg-type]


def test_agent_sources_are_the_guest_packages_only(tmp_path: Path) -> None:
    make_agent_tree(tmp_path)
    rels = [rel for rel, _ in inp.agent_sources(tmp_path)]
    assert rels == [
        "cocoon/__init__.py",
        "cocoon/guest/__init__.py",
        "cocoon/guest/main.py",
        "cocoon/guest/sub/deep.py",
        "cocoon/ttrpc/framing.py",
        "cocoon/wire/__init__.py",
    ]


def test_agent_sources_tolerates_missing_packages(tmp_path: Path) -> None:
    (tmp_path / "cocoon").mkdir()
    (tmp_path / "cocoon/__init__.py").write_text("")
    assert [rel for rel, _ in inp.agent_sources(tmp_path)] == ["cocoon/__init__.py"]


def test_agent_digest_changes_with_agent_sources_only(tmp_path: Path) -> None:
    root = make_agent_tree(tmp_path)
    first = inp.agent_digest(root)
    assert inp.agent_digest(root) == first  # stable

    (root / "cocoon/errors.py").write_text("# changed, but host only\n")
    (root / "cocoon/hypervisor/qemu.py").write_text("# changed\n")
    (root / "cocoon/guest/notes.txt").write_text("changed\n")
    (root / "cocoon/guest/__pycache__/main.cpython-311.pyc").write_bytes(b"\1" * 16)
    assert inp.agent_digest(root) == first

    (root / "cocoon/guest/main.py").write_text("def main() -> None:\n    return None\n")
    second = inp.agent_digest(root)
    assert second != first

    (root / "cocoon/wire/agent.py").write_text("")  # a new, empty file counts too
    third = inp.agent_digest(root)
    assert third not in (first, second)

    (root / "cocoon/wire/agent.py").rename(root / "cocoon/wire/other.py")  # so does a rename
    assert inp.agent_digest(root) not in (first, second, third)


def test_digest_is_unambiguous() -> None:
    assert inp.digest_files([("a", b"bc")]) != inp.digest_files([("ab", b"c")])


def test_key_changes_when_the_agent_changes_and_not_otherwise() -> None:
    key = inp.compute_key(base_inputs())
    assert inp.compute_key(base_inputs()) == key
    assert len(key) == 64 and inp.KEY_RE.match(key)
    assert inp.compute_key(base_inputs(agent_digest="b" * 64)) != key


@pytest.mark.parametrize(
    "field, value",
    [
        ("builder_version", "2"),
        ("kernel_path", "/boot/vmlinuz-6.1.0-57-amd64"),
        ("kernel_size", 8_000_001),
        ("kernel_mtime_ns", 1),
        ("busybox", "/bin/busybox:1:2"),
        ("packages", ("python3", "crun")),
        ("modules", ("virtio_pci", "erofs", "overlay")),
        ("initrd_compression", "gzip"),
        ("init_script", "#!/bin/sh\necho\n"),
    ],
)
def test_key_covers_every_input(field: str, value: object) -> None:
    assert inp.compute_key(base_inputs(**{field: value})) != inp.compute_key(base_inputs())


def test_key_fields_do_not_run_together() -> None:
    a = base_inputs(packages=("ab", "c"))
    b = base_inputs(packages=("a", "bc"))
    assert inp.compute_key(a) != inp.compute_key(b)


def test_base_key_ignores_agent_and_kernel() -> None:
    assert inp.base_key() == inp.base_key(inp.PACKAGES, inp.SUITE)
    assert inp.base_key(("python3",)) != inp.base_key(("python3", "crun"))
    assert inp.base_key(suite="trixie") != inp.base_key()


def test_find_kernel_picks_the_newest_version_with_modules(tmp_path: Path) -> None:
    boot, mods = tmp_path / "boot", tmp_path / "modules"
    boot.mkdir()
    for version in ("6.1.0-9-amd64", "6.1.0-10-amd64", "6.2.0-1-amd64"):
        (boot / f"vmlinuz-{version}").write_bytes(b"k")
    (boot / "config-6.1.0-10-amd64").write_text("")
    (mods / "6.1.0-9-amd64").mkdir(parents=True)
    (mods / "6.1.0-10-amd64").mkdir()  # 6.2.0-1 has no modules: not usable
    kernel = inp.find_kernel(boot, mods)
    assert kernel.version == "6.1.0-10-amd64"
    assert kernel.image == boot / "vmlinuz-6.1.0-10-amd64"
    assert kernel.modules_dir == mods / "6.1.0-10-amd64"


def test_find_kernel_without_a_kernel(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="linux-image-amd64"):
        inp.find_kernel(tmp_path / "boot", tmp_path / "modules")


def test_current_inputs_uses_kernel_stat_not_contents(tmp_path: Path) -> None:
    image = tmp_path / "vmlinuz-6.1.0-1-amd64"
    image.write_bytes(b"x" * 10)
    kernel = inp.HostKernel(image, "6.1.0-1-amd64", tmp_path)
    agent = make_agent_tree(tmp_path / "src")
    _, first = inp.current_inputs(kernel, agent)
    assert first.kernel_size == 10 and first.kernel_path == str(image)
    assert first.agent_digest == inp.agent_digest(agent)
    assert first.init_script == INIT_SCRIPT
