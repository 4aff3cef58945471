"""The host-side cgroup that holds a container's VMM (QEMU and its helpers).

The container's own ``linux.resources`` are applied by crun inside the guest; on the
host the whole VM is one unit, limited by guest memory plus the VMM's overhead (the
TCG translation cache, device buffers). ``linux.cgroupsPath`` says where that unit
goes, in runc's cgroupfs form: an absolute path is below each hierarchy's root, a
relative one below the runtime's own cgroup in that hierarchy (``/proc/self/cgroup``),
as runc does. The systemd form ``slice:prefix:name`` is refused: there is no systemd.

Work is split in two. :func:`plan_from_spec` looks at the host's layout and computes a
:class:`CgroupPlan`: plain data (directories, files, values) that can be tested, logged
and stored in state.json. :func:`apply`, :func:`add_pid` and :func:`remove` carry it
out. The plan records the directories *this* plan created, so a later process (delete)
removes exactly those and never a directory someone else made.

Layouts: unified cgroup2 when ``<root>/cgroup.controllers`` exists; otherwise v1 (or
hybrid) with one mounted directory per hierarchy below ``<root>``, named after its
controllers (``memory``, ``cpu,cpuacct``, ...). In v1 the VMM joins every controller
hierarchy found (named hierarchies such as ``systemd`` and the hybrid ``unified`` mount
are left alone).

Things to know about moving a process in (both checked on a 6.18 v1 host):
``cgroup.procs`` moves every thread of the process (QEMU's vCPU and I/O threads
included), and memory already charged stays with the old cgroup (v1
``memory.move_charge_at_immigrate`` is a no-op on recent kernels; v2 never moves
charges), so add the VMM before it touches guest RAM (e.g. while started with ``-S``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from cocoon.errors import CocoonError, FailedPrecondition, InvalidArgument
from cocoon.resources.hostlimits import HostLimits

CGROUP_ROOT = Path("/sys/fs/cgroup")
HUGEPAGES_DIR = Path("/sys/kernel/mm/hugepages")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
DEFAULT_PARENT = "/cocoon"
MIB = 1024 * 1024

V1_CONTROLLERS = frozenset(
    {
        "blkio",
        "cpu",
        "cpuacct",
        "cpuset",
        "devices",
        "freezer",
        "hugetlb",
        "memory",
        "misc",
        "net_cls",
        "net_prio",
        "perf_event",
        "pids",
        "rdma",
    }
)
CPU_SHARES_RANGE = (2, 262144)
BLKIO_WEIGHT_RANGE = (10, 1000)
REMOVE_RETRY_SECONDS = 2.0


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class Hierarchy:
    """One mounted hierarchy: its directory, controllers and root interface files."""

    mount: str
    controllers: tuple[str, ...]
    files: frozenset[str]


@dataclass(frozen=True)
class Layout:
    """The host's cgroup layout. ``mode`` is ``"v2"`` (one hierarchy) or ``"v1"``.

    ``unified``: in v1 mode, the hybrid cgroup2 mount (``<root>/unified``) when it has
    controllers of its own (hugetlb on these hosts); joined only for limits it alone holds.
    """

    mode: str
    root: str
    hierarchies: tuple[Hierarchy, ...]
    unified: Hierarchy | None = None
    hugepage_sizes: tuple[str, ...] = ()  # as hugetlb files name them: "2MB", "1GB"


def _listdir(path: Path) -> frozenset[str]:
    try:
        return frozenset(os.listdir(path))
    except OSError:
        return frozenset()


def hugepage_sizes(hugepages_dir: Path = HUGEPAGES_DIR) -> tuple[str, ...]:
    """The host's huge page sizes, named as the hugetlb controller's files name them."""
    sizes = []
    for name in sorted(_listdir(hugepages_dir)):
        kb_text = name.removeprefix("hugepages-").removesuffix("kB")
        if not kb_text.isdigit():
            continue
        kb = int(kb_text)
        if kb >= 1 << 20 and kb % (1 << 20) == 0:
            sizes.append(f"{kb >> 20}GB")
        elif kb >= 1 << 10 and kb % (1 << 10) == 0:
            sizes.append(f"{kb >> 10}MB")
        else:
            sizes.append(f"{kb}KB")
    return tuple(sizes)


def detect_layout(root: Path = CGROUP_ROOT, hugepages_dir: Path = HUGEPAGES_DIR) -> Layout:
    """Read the cgroup layout under ``root`` (only reads; no change to the host)."""
    root = Path(root)
    sizes = hugepage_sizes(hugepages_dir)
    controllers_file = root / "cgroup.controllers"
    if controllers_file.exists():
        available = tuple(controllers_file.read_text().split())
        hierarchy = Hierarchy(str(root), available, _listdir(root))
        return Layout("v2", str(root), (hierarchy,), hugepage_sizes=sizes)
    hierarchies: list[Hierarchy] = []
    unified: Hierarchy | None = None
    try:
        entries = sorted(root.iterdir())
    except OSError as exc:
        raise FailedPrecondition(f"cannot read the cgroup layout under {root}", exc) from exc
    for entry in entries:
        if entry.name == "unified" and (entry / "cgroup.controllers").is_file():
            names = tuple((entry / "cgroup.controllers").read_text().split())
            if names:
                unified = Hierarchy(str(entry), names, _listdir(entry))
            continue
        # Symlinks such as cpu -> cpu,cpuacct alias a hierarchy listed under its own name.
        if entry.is_symlink() or not entry.is_dir():
            continue
        names = tuple(entry.name.split(","))
        if not all(n in V1_CONTROLLERS for n in names):
            continue  # name=systemd, the hybrid "unified" cgroup2 mount, stray dirs
        files = _listdir(entry)
        if "cgroup.procs" not in files:
            continue  # an empty directory, not a mounted hierarchy
        hierarchies.append(Hierarchy(str(entry), names, files))
    return Layout("v1", str(root), tuple(hierarchies), unified, sizes)


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """Map each controller (v1) and ``""`` (the v2 line ``0::/path``) to its path."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            out[""] = path
        for name in controllers.split(","):
            if name:
                out[name] = path
    return out


# ----------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Write:
    """Write ``value`` to ``path``; ``optional``: skip it if the file does not exist."""

    path: str
    value: str
    optional: bool = False


@dataclass
class CgroupPlan:
    """Everything needed to set up and tear down the VMM's cgroup, as plain data.

    ``leaves``: the cgroup directory in each hierarchy (its ``cgroup.procs`` gets the
    pids). ``mkdirs``: every directory from below each hierarchy root down to its
    leaf, parents first. ``inherit``: v1 cpuset files to copy from the parent when
    empty. ``writes``: in order. ``skipped``: limits this host cannot apply, for a
    warning. ``created``: filled by :func:`apply`, the directories it made.
    """

    mode: str
    root: str
    cgroups_path: str
    leaves: list[str]
    mkdirs: list[str]
    inherit: list[str] = field(default_factory=list)
    writes: list[Write] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> CgroupPlan:
        """Rebuild a plan stored by :meth:`to_dict`; InvalidArgument if malformed."""

        def bad(why: str) -> InvalidArgument:
            return InvalidArgument(f"malformed cgroup plan: {why}")

        if not isinstance(data, dict):
            raise bad("not an object")

        def strings(key: str) -> list[str]:
            value = data.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise bad(f"{key} must be a list of strings")
            return list(value)

        for key in ("mode", "root", "cgroups_path"):
            if not isinstance(data.get(key), str):
                raise bad(f"{key} must be a string")
        if data["mode"] not in ("v1", "v2"):
            raise bad(f"unknown mode {data['mode']!r}")
        writes: list[Write] = []
        raw_writes = data.get("writes", [])
        if not isinstance(raw_writes, list):
            raise bad("writes must be a list")
        for w in raw_writes:
            if not (
                isinstance(w, dict)
                and isinstance(w.get("path"), str)
                and isinstance(w.get("value"), str)
                and isinstance(w.get("optional", False), bool)
            ):
                raise bad(f"bad write {w!r}")
            writes.append(Write(w["path"], w["value"], w.get("optional", False)))
        plan = cls(
            mode=data["mode"],
            root=data["root"],
            cgroups_path=data["cgroups_path"],
            leaves=strings("leaves"),
            mkdirs=strings("mkdirs"),
            inherit=strings("inherit"),
            writes=writes,
            skipped=strings("skipped"),
            created=strings("created"),
        )
        for path in [*plan.leaves, *plan.mkdirs, *plan.created]:
            if not _strictly_below(path, plan.root):
                raise bad(f"{path} is not below {plan.root}")
        return plan


def _strictly_below(path: str, root: str) -> bool:
    norm = posixpath.normpath(path)
    return norm == path and norm.startswith(root.rstrip("/") + "/")


def parse_cgroups_path(cgroups_path: str) -> tuple[bool, list[str]]:
    """Split a cgroupfs ``cgroupsPath`` into (absolute, components); InvalidArgument if bad."""
    if ":" in cgroups_path:
        raise InvalidArgument(
            f"cgroupsPath {cgroups_path!r} is in systemd form (slice:prefix:name), which is "
            "not supported: this host has no systemd; use a cgroupfs path such as /cocoon/<id>"
        )
    if "\0" in cgroups_path or "\n" in cgroups_path:
        raise InvalidArgument(f"cgroupsPath {cgroups_path!r} has a control character")
    parts = [p for p in cgroups_path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidArgument(f"cgroupsPath {cgroups_path!r} must not contain '..'")
    if not parts:
        raise InvalidArgument(f"cgroupsPath {cgroups_path!r} names no cgroup below the root")
    return cgroups_path.startswith("/"), parts


def _v2_cpu_weight(shares: int) -> int:
    # runc ConvertCPUSharesToCgroupV2Value: [2, 262144] -> [1, 10000].
    return 1 + ((shares - 2) * 9999) // 262142


def _v2_io_weight(weight: int) -> int:
    # runc ConvertBlkIOToIOWeightValue: [10, 1000] -> [1, 10000].
    return 1 + (weight - 10) * 9999 // 990


def _check_range(name: str, value: int | None, bounds: tuple[int, int]) -> None:
    if value is not None and not bounds[0] <= value <= bounds[1]:
        raise InvalidArgument(f"{name} {value} is outside [{bounds[0]}, {bounds[1]}]")


def build_plan(
    layout: Layout,
    cgroups_path: str,
    memory_bytes: int,
    *,
    own: dict[str, str] | None = None,
    cpu_shares: int | None = None,
    blkio_weight: int | None = None,
    limits: HostLimits | None = None,
) -> CgroupPlan:
    """Compute the plan (pure). ``own``: :func:`parse_proc_cgroup` of the runtime, needed
    for a relative ``cgroups_path`` only. ``limits``: everything but memory
    (``cpu_shares``/``blkio_weight``, when given, override its fields).
    """
    absolute, parts = parse_cgroups_path(cgroups_path)
    if memory_bytes <= 0:
        raise InvalidArgument(f"memory limit {memory_bytes} must be positive")
    limits = limits or HostLimits()
    if cpu_shares is not None:
        limits = replace(limits, cpu_shares=cpu_shares)
    if blkio_weight is not None:
        limits = replace(limits, blkio_weight=blkio_weight)
    _check_range("cpu shares", limits.cpu_shares, CPU_SHARES_RANGE)
    _check_range("blkio weight", limits.blkio_weight, BLKIO_WEIGHT_RANGE)
    if not absolute and own is None:
        raise ValueError("a relative cgroupsPath needs the runtime's own cgroup")
    if not layout.hierarchies:
        raise FailedPrecondition(f"no cgroup hierarchy is mounted under {layout.root}")

    def base_parts(key: str) -> list[str]:
        if absolute:
            return []
        assert own is not None
        base = [p for p in own.get(key, "/").split("/") if p not in ("", ".")]
        if ".." in base:
            # Seen from inside a cgroup namespace: the real path is unknown.
            raise FailedPrecondition(
                f"the runtime's own cgroup {own.get(key)!r} lies outside its cgroup namespace; "
                "use an absolute cgroupsPath"
            )
        return base

    plan = CgroupPlan(
        mode=layout.mode, root=layout.root, cgroups_path=cgroups_path, leaves=[], mkdirs=[]
    )
    if layout.mode == "v2":
        h = layout.hierarchies[0]
        _plan_v2(plan, h, layout.hugepage_sizes, base_parts(""), parts, memory_bytes, limits)
    else:
        _plan_v1(plan, layout, base_parts, parts, memory_bytes, limits)
        if limits.hugetlb and not any("hugetlb" in h.controllers for h in layout.hierarchies):
            _plan_hybrid_hugetlb(plan, layout, base_parts(""), parts, limits)
    plan.skipped.extend(limits.notes)
    return plan


def _dirs(mount: str, components: list[str]) -> list[str]:
    return [posixpath.join(mount, *components[: i + 1]) for i in range(len(components))]


def _plan_v2(
    plan: CgroupPlan,
    h: Hierarchy,
    sizes: tuple[str, ...],
    base: list[str],
    parts: list[str],
    memory_bytes: int,
    limits: HostLimits,
) -> None:
    if "memory" not in h.controllers:
        raise FailedPrecondition(f"the memory controller is not available in {h.mount}")
    chain = _dirs(h.mount, base + parts)
    leaf = chain[-1]
    plan.leaves.append(leaf)
    plan.mkdirs.extend(chain)
    enable = ["memory"]

    def want(controller: str, what: str) -> bool:
        if controller in h.controllers:
            if controller not in enable:
                enable.append(controller)
            return True
        plan.skipped.append(f"{what}: no {controller} controller")
        return False

    cpu = limits.cpu_shares is not None and want("cpu", "cpu weight")
    quota = limits.cpu_quota is not None and want("cpu", "cpu quota")
    io = limits.blkio_weight is not None and want("io", "io weight")
    cpuset = (limits.cpuset_cpus or limits.cpuset_mems) is not None and want("cpuset", "cpuset")
    hugetlb = bool(limits.hugetlb) and want("hugetlb", "hugetlb limits")
    if limits.devices is not None:
        plan.skipped.append("device rules: cgroup v2 needs an eBPF program, not applied")
    value = " ".join(f"+{c}" for c in enable)
    for parent in [h.mount, *chain[:-1]]:
        plan.writes.append(Write(posixpath.join(parent, "cgroup.subtree_control"), value))
    plan.writes.append(Write(posixpath.join(leaf, "memory.max"), str(memory_bytes)))
    if cpu:
        assert limits.cpu_shares is not None
        weight = str(_v2_cpu_weight(limits.cpu_shares))
        plan.writes.append(Write(posixpath.join(leaf, "cpu.weight"), weight))
    if quota:
        assert limits.cpu_quota is not None
        max_ = "max" if limits.cpu_quota < 0 else str(limits.cpu_quota)
        plan.writes.append(Write(posixpath.join(leaf, "cpu.max"), f"{max_} {limits.cpu_period}"))
    if io:
        assert limits.blkio_weight is not None
        # io.weight needs the iocost or BFQ controller; skipped at apply time when absent.
        weight = str(_v2_io_weight(limits.blkio_weight))
        plan.writes.append(Write(posixpath.join(leaf, "io.weight"), weight, True))
    if cpuset:
        _cpuset_writes(plan, leaf, limits)
    if hugetlb:
        _hugetlb_writes(plan, sizes, leaf, limits, "max")


def _cpuset_writes(plan: CgroupPlan, leaf: str, limits: HostLimits) -> None:
    if limits.cpuset_cpus:
        plan.writes.append(Write(posixpath.join(leaf, "cpuset.cpus"), limits.cpuset_cpus))
    if limits.cpuset_mems:
        plan.writes.append(Write(posixpath.join(leaf, "cpuset.mems"), limits.cpuset_mems))


def _hugetlb_writes(
    plan: CgroupPlan, sizes: tuple[str, ...], leaf: str, limits: HostLimits, suffix: str
) -> None:
    for size, limit in limits.hugetlb:
        if size in sizes:
            plan.writes.append(Write(posixpath.join(leaf, f"hugetlb.{size}.{suffix}"), str(limit)))
        else:
            plan.skipped.append(f"hugetlb {size}: the host has no {size} pages")


def _plan_hybrid_hugetlb(
    plan: CgroupPlan,
    layout: Layout,
    base: list[str],
    parts: list[str],
    limits: HostLimits,
) -> None:
    """hugetlb lives in the hybrid cgroup2 mount here (no v1 hierarchy has it): join it."""
    unified, sizes = layout.unified, layout.hugepage_sizes
    if unified is None or "hugetlb" not in unified.controllers:
        plan.skipped.append("hugetlb limits: no hugetlb controller on this host")
        return
    chain = _dirs(unified.mount, base + parts)
    plan.leaves.append(chain[-1])
    plan.mkdirs.extend(chain)
    for parent in [unified.mount, *chain[:-1]]:
        plan.writes.append(Write(posixpath.join(parent, "cgroup.subtree_control"), "+hugetlb"))
    _hugetlb_writes(plan, sizes, chain[-1], limits, "max")


def _plan_v1(
    plan: CgroupPlan,
    layout: Layout,
    base_parts: Callable[[str], list[str]],
    parts: list[str],
    memory_bytes: int,
    limits: HostLimits,
) -> None:
    by_controller = {c: h for h in layout.hierarchies for c in h.controllers}
    memory = by_controller.get("memory")
    if memory is None or "memory.limit_in_bytes" not in memory.files:
        raise FailedPrecondition(f"no v1 memory hierarchy under {layout.root}")
    leaf_of: dict[str, str] = {}
    for h in layout.hierarchies:
        chain = _dirs(h.mount, base_parts(h.controllers[0]) + parts)
        leaf_of[h.mount] = chain[-1]
        plan.leaves.append(chain[-1])
        plan.mkdirs.extend(chain)
        if "cpuset" in h.controllers and "cpuset.cpus" in h.files:
            for cg in chain:
                plan.inherit.append(posixpath.join(cg, "cpuset.cpus"))
                plan.inherit.append(posixpath.join(cg, "cpuset.mems"))

    def leaf(controller: str, needs: str, what: str) -> str | None:
        h = by_controller.get(controller)
        if h is not None and needs in h.files:
            return leaf_of[h.mount]
        plan.skipped.append(f"{what}: no {needs} on this host")
        return None

    plan.writes.append(
        Write(posixpath.join(leaf_of[memory.mount], "memory.limit_in_bytes"), str(memory_bytes))
    )
    if limits.cpu_shares is not None:
        d = leaf("cpu", "cpu.shares", "cpu shares")
        if d is not None:
            plan.writes.append(Write(posixpath.join(d, "cpu.shares"), str(limits.cpu_shares)))
    if limits.cpu_quota is not None:
        d = leaf("cpu", "cpu.cfs_quota_us", "cpu quota")
        if d is not None:
            # The period first: a fresh cgroup's quota is -1, so any order is accepted.
            period, quota = str(limits.cpu_period), str(limits.cpu_quota)
            plan.writes.append(Write(posixpath.join(d, "cpu.cfs_period_us"), period))
            plan.writes.append(Write(posixpath.join(d, "cpu.cfs_quota_us"), quota))
    if limits.blkio_weight is not None:
        blkio = by_controller.get("blkio")
        name = next(
            (f for f in ("blkio.weight", "blkio.bfq.weight") if blkio and f in blkio.files), None
        )
        if blkio is not None and name is not None:
            weight = str(limits.blkio_weight)
            plan.writes.append(Write(posixpath.join(leaf_of[blkio.mount], name), weight))
        else:
            plan.skipped.append("blkio weight: no blkio.weight or blkio.bfq.weight on this host")
    if limits.cpuset_cpus or limits.cpuset_mems:
        d = leaf("cpuset", "cpuset.cpus", "cpuset")
        if d is not None:
            _cpuset_writes(plan, d, limits)
    hugetlb = by_controller.get("hugetlb")
    if limits.hugetlb and hugetlb is not None:
        leaf_dir = leaf_of[hugetlb.mount]
        _hugetlb_writes(plan, layout.hugepage_sizes, leaf_dir, limits, "limit_in_bytes")
    if limits.devices is not None:
        d = leaf("devices", "devices.allow", "device rules")
        if d is not None:
            for rule in limits.devices:
                name = "devices.allow" if rule.allow else "devices.deny"
                plan.writes.append(Write(posixpath.join(d, name), rule.v1_line()))


def default_cgroups_path(container_id: str, parent: str = DEFAULT_PARENT) -> str:
    return posixpath.join(parent, container_id)


def plan_from_spec(
    cgroups_path: str | None,
    container_id: str,
    memory_mib: int,
    overhead_mib: int,
    root: Path = CGROUP_ROOT,
    *,
    cpu_shares: int | None = None,
    blkio_weight: int | None = None,
    limits: HostLimits | None = None,
    default_parent: str | None = None,
    proc_self_cgroup: Path = PROC_SELF_CGROUP,
    hugepages_dir: Path = HUGEPAGES_DIR,
) -> CgroupPlan | None:
    """The plan for a container's VMM: memory limit = (guest + overhead) MiB.

    ``cgroups_path`` is ``linux.cgroupsPath``. When it is absent (None or empty) the
    result is None, unless ``default_parent`` is given (e.g. :data:`DEFAULT_PARENT`):
    then the plan is for ``<default_parent>/<container_id>``. ``cpu_shares`` and
    ``blkio_weight`` take OCI (v1) units and are converted for v2.
    """
    if not cgroups_path:
        if default_parent is None:
            return None
        cgroups_path = default_cgroups_path(container_id, default_parent)
    if memory_mib <= 0 or overhead_mib < 0:
        raise InvalidArgument(
            f"guest memory {memory_mib} MiB must be positive and overhead {overhead_mib} MiB "
            "not negative"
        )
    absolute, _ = parse_cgroups_path(cgroups_path)
    own = None if absolute else parse_proc_cgroup(Path(proc_self_cgroup).read_text())
    return build_plan(
        detect_layout(root, hugepages_dir),
        cgroups_path,
        (memory_mib + overhead_mib) * MIB,
        own=own,
        cpu_shares=cpu_shares,
        blkio_weight=blkio_weight,
        limits=limits,
    )


# ---------------------------------------------------------------------------- apply


# Indirections so that unit tests can stand in for cgroupfs (whose mkdir makes files).
_mkdir = os.mkdir
_rmdir = os.rmdir


def _write(path: str, value: str) -> None:
    # One unbuffered write: a buffered file would lose the kernel's error at close.
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read(path: str) -> str:
    with open(path, encoding="ascii") as fh:
        return fh.read().strip()


def apply(plan: CgroupPlan, pids: list[int]) -> list[str]:
    """Create the directories, write the limits, then move ``pids`` in.

    Returns the directories created (also recorded in ``plan.created``; store the plan
    afterwards). If setting up fails before any pid moved, what was created is
    removed again; if moving a pid fails, the directories stay recorded for
    :func:`remove`.
    """
    try:
        for d in plan.mkdirs:
            try:
                _mkdir(d, 0o755)
            except FileExistsError:
                continue
            except OSError as exc:
                raise CocoonError(f"cannot create cgroup {d}", exc) from exc
            plan.created.append(d)
        for f in plan.inherit:
            try:
                if _read(f) == "":
                    parent = posixpath.join(
                        posixpath.dirname(posixpath.dirname(f)), posixpath.basename(f)
                    )
                    _write(f, _read(parent))
            except OSError as exc:
                raise CocoonError(f"cannot initialise {f} from its parent", exc) from exc
        write_all(plan.writes)
    except CocoonError:
        with contextlib.suppress(CocoonError):
            remove(plan, retry_seconds=0)
        raise
    for pid in pids:
        add_pid(plan, pid)
    return list(plan.created)


# Files an update leaves alone: memory is guest + overhead (it follows the VM's
# growth, not a container limit); device rules are append-only lists fixed at create.
_NOT_UPDATED = ("memory.", "devices.")


def update_writes(old: CgroupPlan, new: CgroupPlan) -> tuple[list[Write], list[str]]:
    """The writes that turn ``old``'s limits into ``new``'s, and what cannot change.

    Only files in ``old``'s cgroups can be written: a controller the container had
    no limit for at create has no cgroup of this VM to write (noted, not fatal).
    """
    before = {w.path: w.value for w in old.writes}
    leaves = set(old.leaves)
    writes: list[Write] = []
    notes: list[str] = []
    for w in new.writes:
        name = posixpath.basename(w.path)
        if before.get(w.path) == w.value or name.startswith(_NOT_UPDATED):
            continue
        if posixpath.dirname(w.path) not in leaves:
            notes.append(f"{name}: no host cgroup of this controller was made at create")
            continue
        writes.append(w)
    return writes, notes


def write_all(writes: list[Write]) -> None:
    """Apply ``writes`` in order; CocoonError naming the first that fails."""
    for w in writes:
        if w.optional and not os.path.exists(w.path):
            continue
        try:
            _write(w.path, w.value)
        except OSError as exc:
            raise CocoonError(f"cannot write {w.value} to {w.path}", exc) from exc


def add_pid(plan: CgroupPlan, pid: int) -> None:
    """Move process ``pid`` (all its threads) into the plan's cgroup in every hierarchy."""
    for leaf in plan.leaves:
        procs = posixpath.join(leaf, "cgroup.procs")
        try:
            _write(procs, str(pid))
        except OSError as exc:
            raise CocoonError(f"cannot move pid {pid} into cgroup {leaf}", exc) from exc


def remove(plan: CgroupPlan, retry_seconds: float = REMOVE_RETRY_SECONDS) -> None:
    """Remove the directories ``apply`` created, deepest first; move nothing.

    A directory that still has tasks (EBUSY; e.g. a VMM that was just killed) is retried
    for up to ``retry_seconds``. Directories that are gone already count as removed.
    ``plan.created`` keeps what could not be removed; CocoonError names it.
    """
    deadline = time.monotonic() + retry_seconds
    left: list[str] = []
    errors: list[str] = []
    for d in sorted(plan.created, key=lambda p: p.count("/"), reverse=True):
        if any(x.startswith(d + "/") for x in left):
            left.append(d)  # a child is still there, so this one cannot go either
            continue
        while True:
            try:
                _rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno == errno.EBUSY and time.monotonic() < deadline:
                    time.sleep(0.02)
                    continue
                left.append(d)
                errors.append(f"{d}: {exc.strerror or exc}")
                break
    plan.created = [d for d in plan.created if d in left]
    if errors:
        raise CocoonError("cannot remove cgroup " + "; ".join(errors))
