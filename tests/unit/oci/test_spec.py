from __future__ import annotations

import json
from pathlib import Path

import pytest

from cocoon.errors import InvalidArgument
from cocoon.oci.spec import load_bundle
from tests.fixtures.bundle import default_spec


def write(tmp_path: Path, spec: object, rootfs: bool = True) -> Path:
    if rootfs:
        (tmp_path / "rootfs").mkdir(exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(spec) if not isinstance(spec, str) else spec)
    return tmp_path


def test_valid_bundle(tmp_path: Path) -> None:
    b = load_bundle(write(tmp_path, default_spec(["/bin/true"])))
    assert b.rootfs == tmp_path / "rootfs" and b.readonly_rootfs and not b.terminal


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s.pop("ociVersion"), "ociVersion must be a string"),
        (lambda s: s.update(ociVersion="2.0.0"), "unsupported ociVersion"),
        (lambda s: s.pop("root"), "root must be an object"),
        (lambda s: s["process"].update(args=[]), "process.args"),
        (lambda s: s["process"].update(args="sh"), "process.args"),
        (lambda s: s["process"].update(cwd="rel"), "process.cwd"),
        (lambda s: s.update(mounts=[{"destination": "rel"}]), "destination must be absolute"),
        (lambda s: s.update(annotations={"a": 1}), "annotations"),
    ],
)
def test_invalid_specs_name_the_field(tmp_path: Path, mutate: object, message: str) -> None:
    spec = default_spec(["/bin/true"])
    mutate(spec)  # type: ignore[operator]
    with pytest.raises(InvalidArgument, match=message):
        load_bundle(write(tmp_path, spec))


def test_missing_and_malformed(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="does not exist"):
        load_bundle(tmp_path / "nope")
    with pytest.raises(InvalidArgument, match="no config.json"):
        load_bundle(tmp_path)
    with pytest.raises(InvalidArgument, match="malformed"):
        load_bundle(write(tmp_path, "{not json"))
    with pytest.raises(InvalidArgument, match="root.path"):
        load_bundle(write(tmp_path, default_spec(["x"]) | {"root": {"path": "missing"}}, False))


def test_vm_compatibility() -> None:
    from cocoon.oci.spec import vm_compatibility

    spec = default_spec(["x"])
    assert vm_compatibility(spec) == ([], [])
    spec["vm"] = {"kernel": {"path": "/boot/x"}}
    spec["process"]["apparmorProfile"] = "docker-default"
    errors, warnings = vm_compatibility(spec)
    assert errors[0].startswith("vm:") and "AppArmor" in warnings[0]
