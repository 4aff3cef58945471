"""Loading and validating an OCI bundle's config.json.

Only what Cocoon relies on is checked here; the guest's crun validates the
rest. Every error names the bundle and the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cocoon.errors import InvalidArgument

SUPPORTED_MAJOR = "1."


@dataclass(frozen=True)
class Bundle:
    path: Path
    spec: dict[str, Any]

    @property
    def rootfs(self) -> Path:
        root = Path(self.spec["root"]["path"])
        return root if root.is_absolute() else self.path / root

    @property
    def readonly_rootfs(self) -> bool:
        return bool(self.spec.get("root", {}).get("readonly", False))

    @property
    def terminal(self) -> bool:
        return bool(self.spec.get("process", {}).get("terminal", False))

    @property
    def annotations(self) -> dict[str, str]:
        return dict(self.spec.get("annotations") or {})


def _require(cond: bool, config: Path, msg: str) -> None:
    if not cond:
        raise InvalidArgument(f"invalid {config}: {msg}")


def load_bundle(path: str | Path) -> Bundle:
    """Read and validate ``<path>/config.json``; raise InvalidArgument on any problem."""
    bundle = Path(path).absolute()
    config = bundle / "config.json"
    if not bundle.is_dir():
        raise InvalidArgument(f"bundle {bundle} does not exist or is not a directory")
    try:
        raw = config.read_bytes()
    except FileNotFoundError:
        raise InvalidArgument(f"bundle {bundle} has no config.json") from None
    except OSError as exc:
        raise InvalidArgument(f"cannot read {config}", exc) from exc
    try:
        spec = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"malformed {config}", exc) from exc
    validate_spec(spec, config)
    b = Bundle(bundle, spec)
    _require(b.rootfs.is_dir(), config, f"root.path {b.rootfs} is not a directory")
    return b


def validate_spec(spec: Any, config: Path) -> None:
    _require(isinstance(spec, dict), config, "top level must be a JSON object")
    version = spec.get("ociVersion")
    _require(isinstance(version, str), config, "ociVersion must be a string")
    _require(version.startswith(SUPPORTED_MAJOR), config, f"unsupported ociVersion {version!r}")
    root = spec.get("root")
    _require(isinstance(root, dict), config, "root must be an object")
    _require(
        isinstance(root.get("path"), str) and bool(root["path"]), config, "root.path is required"
    )
    proc = spec.get("process")
    if proc is not None:
        _require(isinstance(proc, dict), config, "process must be an object")
        args = proc.get("args")
        _require(
            isinstance(args, list) and bool(args) and all(isinstance(a, str) for a in args),
            config,
            "process.args must be a non-empty list of strings",
        )
        cwd = proc.get("cwd", "/")
        _require(
            isinstance(cwd, str) and cwd.startswith("/"), config, "process.cwd must be absolute"
        )
        env = proc.get("env", [])
        _require(
            isinstance(env, list) and all(isinstance(e, str) for e in env),
            config,
            "process.env must be a list of strings",
        )
    mounts = spec.get("mounts", [])
    _require(isinstance(mounts, list), config, "mounts must be a list")
    for i, m in enumerate(mounts):
        _require(
            isinstance(m, dict) and isinstance(m.get("destination"), str),
            config,
            f"mounts[{i}].destination is required",
        )
        _require(
            m["destination"].startswith("/"), config, f"mounts[{i}].destination must be absolute"
        )
    ann = spec.get("annotations", {})
    _require(
        isinstance(ann, dict) and all(isinstance(v, str) for v in ann.values()),
        config,
        "annotations must map strings to strings",
    )
    linux = spec.get("linux", {})
    _require(isinstance(linux, dict), config, "linux must be an object")


def require_process(bundle: Bundle) -> None:
    """``create`` and ``run`` need a process to run (runc refuses a spec without one).

    Checked on the host, before any VM boots; raises InvalidArgument.
    """
    _require(
        isinstance(bundle.spec.get("process"), dict),
        bundle.path / "config.json",
        "process is required to create or run a container",
    )


def vm_compatibility(spec: dict[str, Any]) -> tuple[list[str], list[str]]:
    """What a VM runtime cannot honour: (errors naming the field, warnings).

    Refused: fields that would need the host inside the guest (``vm`` asks to pick
    host binaries and images; ``linux.intelRdt`` is a host resource; namespace
    paths other than the network's, see cocoon.oci.namespaces). Warned and
    dropped: LSM labels, since the guest kernel runs no AppArmor or SELinux (the VM
    boundary is the isolation); nothing else is changed.
    """
    errors: list[str] = []
    warnings: list[str] = []
    if spec.get("vm"):
        errors.append(
            "vm: choosing the hypervisor, kernel or image per container is not "
            "supported (use Cocoon's configuration)"
        )
    linux = spec.get("linux") or {}
    from cocoon.oci.namespaces import plan_namespaces

    try:  # outside a pod: no namespace path but the network's can be honoured
        plan_namespaces(linux.get("namespaces") or [])
    except InvalidArgument as exc:
        errors.append(str(exc))
    if linux.get("intelRdt"):
        errors.append("linux.intelRdt is not supported: RDT is a host resource")
    proc = spec.get("process") or {}
    if proc.get("apparmorProfile"):
        warnings.append("process.apparmorProfile is ignored: the guest runs no AppArmor")
    if proc.get("selinuxLabel") or linux.get("mountLabel"):
        warnings.append("SELinux labels are ignored: the guest runs no SELinux")
    from cocoon.oci.guestcg import guest_resources

    warnings += guest_resources(linux.get("resources"))[1]
    return errors, warnings
