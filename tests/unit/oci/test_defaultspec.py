from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cocoon.errors import InvalidArgument
from cocoon.oci.defaultspec import default_spec, write_spec

RUNC = shutil.which("runc") or "/usr/bin/runc"
COMPARED = ("process", "root", "hostname", "mounts", "linux")


def runc_spec(tmp_path: Path, rootless: bool) -> dict[str, Any]:
    out = tmp_path / ("runc-rootless" if rootless else "runc")
    out.mkdir()
    cmd = [RUNC, "spec", "--bundle", str(out)] + (["--rootless"] if rootless else [])
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)
    data: dict[str, Any] = json.loads((out / "config.json").read_text())
    return data


needs_runc = pytest.mark.skipif(not os.access(RUNC, os.X_OK), reason="runc not installed")


@needs_runc
@pytest.mark.parametrize("rootless", [False, True])
def test_matches_runc_spec(tmp_path: Path, rootless: bool) -> None:
    theirs = runc_spec(tmp_path, rootless)
    ours = default_spec(terminal=True, rootless=rootless)
    # Documented differences: runc writes a pre-release version tag.
    assert theirs["ociVersion"].startswith(ours["ociVersion"])
    assert ours["ociVersion"] == "1.0.2"
    assert set(ours) == set(theirs)
    for key in COMPARED:
        assert ours[key] == theirs[key], key
    for key in ("namespaces", "maskedPaths", "readonlyPaths"):
        assert ours["linux"][key] == theirs["linux"][key], key


@pytest.mark.parametrize(
    ("terminal", "rootless", "check"),
    [
        (True, False, lambda s: s["process"]["terminal"] is True),
        (False, False, lambda s: s["process"]["terminal"] is False),
        (True, False, lambda s: {"type": "network"} in s["linux"]["namespaces"]),
        (True, True, lambda s: {"type": "network"} not in s["linux"]["namespaces"]),
        (True, True, lambda s: s["linux"]["namespaces"][-1] == {"type": "user"}),
        (True, True, lambda s: "resources" not in s["linux"]),
        (True, True, lambda s: s["linux"]["uidMappings"][0]["hostID"] == 1234),
        (True, True, lambda s: s["linux"]["gidMappings"][0]["hostID"] == 99),
        (True, True, lambda s: all("gid=5" not in m.get("options", []) for m in s["mounts"])),
    ],
)
def test_variants(terminal: bool, rootless: bool, check: Any) -> None:
    assert check(default_spec(terminal, rootless, uid=1234, gid=99))


def test_each_call_is_fresh() -> None:
    a = default_spec()
    a["mounts"].clear()
    assert default_spec()["mounts"]


def test_write_spec(tmp_path: Path) -> None:
    path = write_spec(tmp_path, terminal=False)
    assert path == tmp_path / "config.json"
    data = json.loads(path.read_text())
    assert data == default_spec(terminal=False)
    assert path.read_text().startswith('{\n\t"ociVersion"')  # runc's tab indent


def test_write_spec_refuses_existing(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(InvalidArgument, match=r"^File config.json exists. Remove it first.$"):
        write_spec(tmp_path)
    assert (tmp_path / "config.json").read_text() == "{}"


def test_write_spec_refuses_dangling_symlink(tmp_path: Path) -> None:
    (tmp_path / "config.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(InvalidArgument, match="exists"):
        write_spec(tmp_path)
    assert not (tmp_path / "elsewhere.json").exists()


def test_write_spec_missing_bundle(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="does not exist"):
        write_spec(tmp_path / "nope")
