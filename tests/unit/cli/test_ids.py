"""Every verb ends a long or odd container ID in one line, before touching anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from cocoon.cli.main import main

LONG = "a" * 300

VERBS = [
    ["state", LONG],
    ["kill", LONG, "KILL"],
    ["delete", "--force", LONG],
    ["start", LONG],
    ["pause", LONG],
    ["resume", LONG],
    ["ps", LONG],
    ["exec", LONG, "true"],
    ["events", LONG],
    ["update", "--memory", "1", LONG],
    ["create", "--bundle", "/nonexistent", LONG],
    ["run", "--bundle", "/nonexistent", LONG],
    ["run", "-d", "--bundle", "/nonexistent", LONG],
    ["create", "--bundle", "/nonexistent", "a\tb"],
]


@pytest.mark.parametrize("argv", VERBS, ids=lambda a: " ".join(a)[:40])
def test_long_and_odd_ids_are_one_line(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "root"
    (root / ".locks").mkdir(parents=True)
    assert main(["--root", str(root), *argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "container id" in err[0], err
    assert sorted(p.name for p in root.iterdir()) == [".locks"]
    assert not list((root / ".locks").iterdir())


@pytest.mark.parametrize("verb", [["create"], ["run"], ["run", "-d"]])
def test_a_spec_without_process_is_refused_before_any_vm(
    verb: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    bundle = tmp_path / "b"
    (bundle / "rootfs").mkdir(parents=True)
    netns = {"namespaces": [{"type": "network"}]}
    spec = {"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "linux": netns}
    (bundle / "config.json").write_text(json.dumps(spec))
    root = tmp_path / "root"
    argv = ["--root", str(root), "--assets-dir", str(tmp_path / "none"), *verb]
    assert main([*argv, "--bundle", str(bundle), "c1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "process is required" in err[0], err
    assert not (root / "c1").exists()


@pytest.mark.parametrize("verb", [["create"], ["run"], ["run", "-d"]])
def test_an_unwritable_pid_file_is_refused_before_any_vm(
    verb: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from tests.fixtures.bundle import default_spec

    bundle = tmp_path / "b"
    (bundle / "rootfs").mkdir(parents=True)
    (bundle / "config.json").write_text(json.dumps(default_spec(["true"])))
    root = tmp_path / "root"
    argv = ["--root", str(root), "--assets-dir", str(tmp_path / "none"), *verb]
    pid_file = str(tmp_path / "no" / "such" / "dir" / "pid")
    assert main([*argv, "--pid-file", pid_file, "--bundle", str(bundle), "c1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--pid-file" in err[0] and "not a directory" in err[0], err
    assert not (root / "c1").exists()
