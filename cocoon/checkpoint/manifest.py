"""What a checkpoint image holds, and the checks a restore makes before it starts anything.

A checkpoint is the whole sandbox VM: RAM and device state (QEMU's migration
stream), each container's disks, and this manifest, which says how to rebuild a
QEMU the stream fits (the boot shape, then every hot-plugged device at its
address) and who the containers are. Everything here is plain data: computed,
compared and tested without a VM.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cocoon.errors import InvalidArgument

FORMAT = 1
MANIFEST = "manifest.json"
STATE = "vm.state.gz"  # QEMU's migration stream, gzip
DISKS = "disks"
HOME, MEMBER = "home", "member"


@dataclass
class NicImage:
    netdev_id: str
    device_id: str
    mac: str
    addr: str  # PCI slot on bus 0


@dataclass
class DiskImage:
    """One virtio-blk disk of a container: its file in the image dir's ``disks/``."""

    node: str
    serial: str
    file: str  # a name in disks/
    readonly: bool
    addr: str


@dataclass
class ContainerImage:
    id: str
    bundle: str
    status: str  # running | paused | created | stopped
    terminal: bool
    annotations: dict[str, str] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)
    workload: dict[str, Any] = field(default_factory=dict)
    image: DiskImage | None = None  # the rootfs image (read-only)
    scratch: DiskImage | None = None  # the guest-written scratch disk
    execs: list[str] = field(default_factory=list)  # exec'd processes still running
    # A CLI sandbox's pod (cocoon.service.membership): the container that booted the
    # VM ("home") or one that joined it ("member"); a member's restore joins the
    # restored VM instead of booting one.
    role: str = HOME
    joins: str = ""  # a member: the container whose IPC/UTS/PID namespaces it joined
    namespaces: list[str] = field(default_factory=list)  # a member: the kinds it shares


@dataclass
class Manifest:
    format: int
    created: str
    cocoon_version: str
    qemu_version: str
    accel: str
    assets_key: str
    cpu: str  # QEMU's -cpu argument
    machine: str
    settings: dict[str, Any]
    boot_vcpus: int  # -smp and -m as QEMU was started (a template clone: the template's)
    boot_memory_mib: int
    memory_object: bool  # guest RAM in a "mem" backend object (a template clone)
    cpus: list[dict[str, Any]] = field(default_factory=list)  # hot-plugged, in order
    dimms: list[tuple[str, int, int]] = field(default_factory=list)  # (id, bytes, addr)
    nics: list[NicImage] = field(default_factory=list)
    guest_network: dict[str, Any] = field(default_factory=dict)  # UpdateNetworkRequest
    containers: list[ContainerImage] = field(default_factory=list)
    disk_index: int = 0
    vcpus: int = 0  # online at checkpoint
    memory_mib: int = 0
    netns: str = ""
    stats: dict[str, Any] = field(default_factory=dict)  # sizes and times, for people

    def files(self) -> list[str]:
        """Every file the image dir must hold, relative to it."""
        out = [MANIFEST, STATE]
        for c in self.containers:
            for d in (c.image, c.scratch):
                if d is not None:
                    out.append(f"{DISKS}/{d.file}")
        return out


def save(directory: Path, manifest: Manifest) -> None:
    tmp = directory / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(asdict(manifest), indent=1))
    os.replace(tmp, directory / MANIFEST)


def load(directory: Path) -> Manifest:
    """Read and check an image dir's manifest; InvalidArgument names what is wrong
    (no manifest, another format, a missing file), before anything starts."""
    path = directory / MANIFEST
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidArgument(f"{directory} is not a Cocoon checkpoint: no {MANIFEST}") from None
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"checkpoint manifest {path} is unreadable", exc) from exc
    manifest = parse(raw, f"checkpoint {directory}")
    for rel in manifest.files():
        if not (directory / rel).is_file():
            raise InvalidArgument(f"checkpoint {directory} is incomplete: {rel} is missing")
    return manifest


# What the fields that reach QMP, the guest and the file system may look like: the
# image dir is the user's input, so a manifest must not name a file outside it or
# inject QMP arguments.
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
_FILE = re.compile(r"^[0-9]{1,6}\.(erofs|scratch)\.gz$")
_ADDR = re.compile(r"^(0x[0-9a-f]{1,2}(\.[0-7])?)?$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_CPU_DRIVER = re.compile(r"^[a-z0-9-]{1,40}-x86_64-cpu$")
_CPU_ID = re.compile(r"^cpu(-[0-9]{1,4}){3}$")
_DIMM = re.compile(r"^dimm[0-9]{1,3}$")


def invalid(m: Manifest) -> str:
    """What in ``m`` is not what Cocoon writes ("" if all of it is)."""
    from cocoon.oci.ids import validate_id

    for n in m.nics:
        if not (_NAME.match(n.netdev_id) and _NAME.match(n.device_id)):
            return f"NIC ids {n.netdev_id!r}/{n.device_id!r} are malformed"
        if not _MAC.match(n.mac) or not _ADDR.match(n.addr):
            return f"NIC {n.device_id}: MAC {n.mac!r} or address {n.addr!r} is malformed"
    for props in m.cpus:
        if not (
            _CPU_DRIVER.match(str(props.get("driver"))) and _CPU_ID.match(str(props.get("id")))
        ):
            return f"vCPU {props.get('id')!r} is malformed"
        extra = {k: v for k, v in props.items() if k not in ("driver", "id")}
        if not all(k.endswith("-id") and isinstance(v, int) for k, v in extra.items()):
            return f"vCPU {props.get('id')!r} has unexpected properties"
    for dimm_id, size, addr in m.dimms:
        if not _DIMM.match(str(dimm_id)) or not (isinstance(size, int) and isinstance(addr, int)):
            return f"DIMM {dimm_id!r} is malformed"
    if m.containers and (
        [c.role for c in m.containers].count(HOME) != 1
        or any(c.role not in (HOME, MEMBER) for c in m.containers)
    ):
        return "the containers are not one home and the members that joined its VM"
    for c in m.containers:
        try:
            validate_id(c.id)
        except InvalidArgument as exc:
            return str(exc)
        for d in (c.image, c.scratch):
            if d is None:
                continue
            if not (_NAME.match(d.node) and _NAME.match(d.serial) and _FILE.match(d.file)):
                return f"disk {d.node!r} ({d.file!r}) is malformed"
            if not _ADDR.match(d.addr):
                return f"disk {d.node}: address {d.addr!r} is malformed"
    if not (0 < m.boot_vcpus <= 1024 and 0 < m.boot_memory_mib <= 1 << 22):
        return "the VM's size is malformed"
    return ""


# Settings a checkpoint may not carry to another host: binaries and dirs are the
# restoring host's own (a manifest must never name a host binary), as are the
# service's own limits.
LOCAL_SETTINGS = (
    "qemu",
    "virtiofsd",
    "template",
    "template_dir",
    "max_templates",
    "max_template_mib",
    "agent_timeout",
    "host_overhead_mib",
    "clock_sync_interval",
)


def restored_settings(saved: dict[str, Any], local: dict[str, Any]) -> dict[str, Any]:
    """The VM's settings as checkpointed, with this host's binaries, dirs and limits."""
    return {**saved, **{k: local[k] for k in LOCAL_SETTINGS if k in local}}


def parse(raw: object, where: str) -> Manifest:
    """A manifest from its JSON form (a live migration's header); InvalidArgument
    names what is wrong."""
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        got = raw.get("format") if isinstance(raw, dict) else None
        raise InvalidArgument(f"{where}: format {got!r}, this Cocoon reads {FORMAT}")
    try:
        manifest = _from_dict(raw)
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidArgument(f"{where}: the manifest is malformed: {exc}") from exc
    why = invalid(manifest)  # a file or a peer's header: input, checked field by field
    if why:
        raise InvalidArgument(f"{where}: {why}")
    return manifest


def _disk(raw: dict[str, Any] | None) -> DiskImage | None:
    return DiskImage(**raw) if raw else None


def _from_dict(raw: dict[str, Any]) -> Manifest:
    data = dict(raw)
    data["nics"] = [NicImage(**n) for n in raw.get("nics", [])]
    data["dimms"] = [tuple(d) for d in raw.get("dimms", [])]
    containers = []
    for c in raw.get("containers", []):
        c = dict(c)
        c["image"], c["scratch"] = _disk(c.get("image")), _disk(c.get("scratch"))
        containers.append(ContainerImage(**c))
    data["containers"] = containers
    known = set(Manifest.__dataclass_fields__)
    return Manifest(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Host:
    """What the restoring host offers, compared with what the checkpoint needs."""

    qemu_version: str
    accel: str
    assets_key: str
    cpu: str
    machine: str


def mismatch(manifest: Manifest, host: Host) -> str:
    """Why ``manifest`` cannot be restored on ``host`` ("" if it can): the VM's
    device state only fits the same QEMU, guest kernel and CPU model."""
    checks = [
        ("QEMU", manifest.qemu_version, host.qemu_version),
        ("accelerator", manifest.accel, host.accel),
        ("guest assets", manifest.assets_key[:16], host.assets_key[:16]),
        ("CPU model", manifest.cpu, host.cpu),
        ("machine type", manifest.machine, host.machine),
    ]
    for what, saved, here in checks:
        if saved != here:
            return (
                f"the checkpoint was made with {what} {saved or '?'}, this host has {here or '?'}"
            )
    return ""


def refusal(
    settings: dict[str, Any],
    containers: list[dict[str, Any]],
    asked: str = "",
    pods: bool = True,
) -> str:
    """Why a sandbox cannot be checkpointed as it is ("" if it can), naming the first
    obstacle. ``containers``: id, role (``home``, ``member``: a CLI pod, see
    cocoon.service.membership; "" otherwise), rootfs_block, host_binds, host_devices,
    status. ``asked``: the container the request named (a pod is saved through its
    home, never by member); ``pods``: whether a pod can be taken whole (a live
    migration cannot yet)."""
    if settings.get("shared_fs") == "virtiofs":
        return "virtio-fs cannot be migrated by QEMU 7.2: use shared_fs = virtio-9p"
    if settings.get("machine") != "pc":
        return f"machine type {settings.get('machine')} cannot be checkpointed: use pc"
    home = next((c["id"] for c in containers if c.get("role") == HOME), "")
    members = [c for c in containers if c.get("role") == MEMBER]
    if any(c["id"] == asked for c in members):
        if not home:
            return (
                f"container {asked!r} shares a VM whose own container was deleted: a pod is"
                " checkpointed whole through its home container, and it has none"
            )
        return (
            f"container {asked!r} shares the VM of {home!r}: a pod is checkpointed whole,"
            f" not by member (checkpoint {home!r})"
        )
    if members and not home:
        return "the VM's own container was deleted: a pod is checkpointed whole through it"
    if members and not pods:
        return (
            f"its VM is shared with {', '.join(repr(c['id']) for c in members)}: a pod cannot"
            " be migrated live (checkpoint and restore it instead)"
        )
    live = [c for c in containers if c.get("status", "running") != "stopped"]
    if not members and len(live) > 1:
        return "its VM is shared with other containers: a pod is checkpointed whole, not by member"
    for c in containers:
        if c.get("status", "running") not in ("running", "paused"):
            return f"container {c['id']!r} is {c['status']}: only a running one can be saved"
        if c.get("host_binds"):
            return (
                f"container {c['id']!r} mounts host directory {c['host_binds'][0]}: a live host"
                " share cannot be checkpointed (files are copied, directories are not)"
            )
        if not c.get("rootfs_block"):
            return (
                f"container {c['id']!r} has its rootfs shared from the host: checkpoint needs"
                " rootfs_mode = block (annotation io.cocoon.config.runtime.rootfs_mode=block)"
            )
        if c.get("host_devices"):
            return f"container {c['id']!r} uses host block devices: they cannot be checkpointed"
    return ""


def pick_member(awaiting: list[dict[str, str]], cid: str, bundle: str, joins: bool) -> str:
    """Which member awaiting its restore (``awaiting``: id and bundle at checkpoint, as
    the restored home records them) a ``restore`` of ``cid`` from ``bundle`` is ("" if
    none: it is a sandbox of its own). By ID; else by its bundle; else the only one
    left when the bundle's spec joins another container's namespaces (a rename)."""
    for key, want in (("id", cid), ("bundle", bundle)):
        hits = [a for a in awaiting if a.get(key) == want]
        if len(hits) == 1:
            return str(hits[0]["id"])
    if joins and len(awaiting) == 1:
        return str(awaiting[0]["id"])
    return ""
