"""locate(), list_built(), build() as a cache hit, and pruning (no real build)."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import pytest

import cocoon.assets as assets
from cocoon.assets import builder
from cocoon.assets import inputs as inp
from cocoon.assets.errors import BuildError
from cocoon.cli import assets as cli
from cocoon.cli.output import Reporter
from cocoon.errors import AssetsMissing, InvalidArgument


@pytest.fixture
def fake_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> inp.HostKernel:
    """A fake /boot and /lib/modules, so keys do not depend on this machine."""
    boot, mods = tmp_path / "boot", tmp_path / "modules"
    boot.mkdir()
    (mods / "6.1.0-56-amd64").mkdir(parents=True)
    (boot / "vmlinuz-6.1.0-56-amd64").write_bytes(b"kernel")
    monkeypatch.setattr(inp, "BOOT_DIR", boot)
    monkeypatch.setattr(inp, "MODULES_ROOT", mods)
    return inp.find_kernel()


def make_set(assets_dir: Path, key: str, built_at: float, version: str = "6.1.0-56-amd64") -> Path:
    d = assets_dir / key
    d.mkdir(parents=True)
    for name in (inp.KERNEL_NAME, inp.INITRD_NAME, inp.IMAGE_NAME):
        (d / name).write_bytes(b"z" * 10)
    manifest = {"key": key, "built_at": built_at, "kernel": {"version": version}}
    (d / inp.MANIFEST_NAME).write_text(json.dumps(manifest))
    os.utime(d / inp.MANIFEST_NAME, (built_at, built_at))
    return d


def test_locate_raises_assets_missing_on_an_empty_dir(tmp_path: Path, fake_host: object) -> None:
    with pytest.raises(AssetsMissing) as err:
        assets.locate(tmp_path / "assets")
    msg = str(err.value)
    assert "guest assets are not built for this version of Cocoon" in msg
    assert str(tmp_path / "assets") in msg and "cocoon assets build" in msg


def test_locate_without_a_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inp, "BOOT_DIR", tmp_path / "b")
    monkeypatch.setattr(inp, "MODULES_ROOT", tmp_path / "m")
    with pytest.raises(AssetsMissing, match="linux-image-amd64"):
        assets.locate(tmp_path)


def test_locate_finds_a_complete_set_and_ignores_partial_ones(
    tmp_path: Path, fake_host: inp.HostKernel
) -> None:
    key, version = assets.current_key()
    d = make_set(tmp_path, key, time.time())
    (d / inp.MANIFEST_NAME).unlink()  # a set without its manifest is not complete
    with pytest.raises(AssetsMissing):
        assets.locate(tmp_path)
    make_set(tmp_path / "other", key, time.time())
    (d / inp.MANIFEST_NAME).write_text("{}")
    found = assets.locate(tmp_path)
    assert found.key == key and found.kernel_version == version == "6.1.0-56-amd64"
    assert found.kernel == d / "vmlinux" and found.initrd == d / "initrd.img"
    assert found.image == d / "root.erofs" and found.directory == d


def test_locate_is_cheap(tmp_path: Path, fake_host: object) -> None:
    started = time.perf_counter()
    for _ in range(10):
        with pytest.raises(AssetsMissing):
            assets.locate(tmp_path)
    assert (time.perf_counter() - started) / 10 < 0.02


def test_list_built_newest_first_with_current(tmp_path: Path, fake_host: object) -> None:
    key, _ = assets.current_key()
    make_set(tmp_path, "a" * 64, 100.0)
    make_set(tmp_path, key, 300.0)
    make_set(tmp_path, "b" * 64, 200.0)
    (tmp_path / "base").mkdir()
    (tmp_path / ("c" * 64)).mkdir()  # incomplete: not listed
    got = assets.list_built(tmp_path)
    assert [b.assets.key for b in got] == [key, "b" * 64, "a" * 64]
    assert [b.current for b in got] == [True, False, False]
    assert got[0].kernel_size == 10 and got[0].assets.kernel_version == "6.1.0-56-amd64"
    assert assets.list_built(tmp_path / "missing") == []


def test_build_is_a_no_op_when_the_set_is_complete(
    tmp_path: Path, fake_host: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, _ = assets.current_key()
    make_set(tmp_path, key, time.time())

    def boom(*_args: object, **_kw: object) -> None:
        raise AssertionError("nothing must be built")

    monkeypatch.setattr(builder, "_build_into", boom)
    steps: list[str] = []
    built = assets.build(tmp_path, progress=steps.append)
    assert built.key == key and steps == []


def test_prune_keeps_the_newest_and_the_current(tmp_path: Path) -> None:
    for i, name in enumerate("abcde"):
        make_set(tmp_path, name * 64, 1000.0 + i)
    (tmp_path / "base").mkdir()
    removed = builder.prune(tmp_path, current="a" * 64)
    assert sorted(removed) == ["b" * 64, "c" * 64]
    left = sorted(p.name[0] for p in tmp_path.iterdir() if p.name != "base")
    assert left == ["a", "d", "e"]


def test_prune_bases(tmp_path: Path) -> None:
    for i, name in enumerate(["old", "mid", "cur"]):
        tar = tmp_path / f"{name}.tar"
        tar.write_bytes(b"t")
        (tmp_path / name).mkdir()
        os.utime(tar, (1000 + i, 1000 + i))
    (tmp_path / "orphan").mkdir()
    builder.prune_bases(tmp_path, "cur")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cur", "cur.tar", "mid", "mid.tar"]


def cli_args(tmp_path: Path, verb: str | None) -> argparse.Namespace:
    return argparse.Namespace(assets_dir=str(tmp_path), assets_verb=verb, force=False)


def test_cli_list_empty(
    tmp_path: Path, fake_host: object, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.run(cli_args(tmp_path, "list"), Reporter(None, "text", False)) == 0
    assert "no guest assets built" in capsys.readouterr().out


def test_cli_list_table(
    tmp_path: Path, fake_host: object, capsys: pytest.CaptureFixture[str]
) -> None:
    key, _ = assets.current_key()
    make_set(tmp_path, key, time.time())
    assert cli.run(cli_args(tmp_path, "list"), Reporter(None, "text", False)) == 0
    out = capsys.readouterr().out
    assert key[:12] in out and "6.1.0-56-amd64" in out and str(tmp_path / key) in out


def test_cli_needs_an_action(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="build or list"):
        cli.run(cli_args(tmp_path, None), Reporter(None, "text", False))


def test_build_needs_root(
    tmp_path: Path, fake_host: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(BuildError, match="needs root"):
        assets.build(tmp_path / "assets")
    assert not (tmp_path / "assets").exists()


def test_a_failed_build_leaves_nothing_behind(
    tmp_path: Path, fake_host: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(tmp: Path, *_args: object) -> dict[str, object]:
        (tmp / "rootfs").mkdir()
        (tmp / inp.KERNEL_NAME).write_bytes(b"partial")
        raise BuildError("mkfs.erofs failed: boom")

    monkeypatch.setattr("os.geteuid", lambda: 0)
    monkeypatch.setattr(builder, "_build_into", fail)
    with pytest.raises(BuildError, match="boom"):
        assets.build(tmp_path / "assets")
    left = sorted(p.name for p in (tmp_path / "assets").iterdir())
    assert left == [".lock", "build.log"]


def test_a_build_lands_atomically(
    tmp_path: Path, fake_host: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake(tmp: Path, *_args: object) -> dict[str, object]:
        for name in (inp.KERNEL_NAME, inp.INITRD_NAME, inp.IMAGE_NAME):
            (tmp / name).write_bytes(b"x")
        return {"built_at": 5.0, "kernel": {"version": "6.1.0-56-amd64"}}

    monkeypatch.setattr("os.geteuid", lambda: 0)
    monkeypatch.setattr(builder, "_build_into", fake)
    steps: list[str] = []
    built = assets.build(tmp_path, progress=steps.append)
    assert assets.locate(tmp_path) == built
    assert json.loads((built.directory / "manifest.json").read_text())["built_at"] == 5.0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    rebuilt = assets.build(tmp_path, force=True)
    assert rebuilt == built and assets.list_built(tmp_path)[0].current
