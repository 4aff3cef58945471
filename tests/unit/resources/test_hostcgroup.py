from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from cocoon.errors import CocoonError, FailedPrecondition, InvalidArgument
from cocoon.resources import hostcgroup as hc
from cocoon.resources.hostcgroup import CgroupPlan, Write

MIB = 1024 * 1024

# Interface files a fake cgroupfs puts in every directory of each hierarchy.
V1_FILES: dict[str, dict[str, str]] = {
    "memory": {"memory.limit_in_bytes": "9223372036854771712", "memory.usage_in_bytes": "0"},
    "cpu,cpuacct": {"cpu.shares": "1024", "cpuacct.usage": "0"},
    "cpuset": {"cpuset.cpus": "0-1", "cpuset.mems": "0"},
    "blkio": {"blkio.throttle.read_bps_device": ""},
    "pids": {},
    "freezer": {},
}
V2_FILES = {"cgroup.subtree_control": "", "memory.max": "max", "cpu.weight": "100"}


def make_v1(root: Path, files: dict[str, dict[str, str]] | None = None) -> Path:
    """A hybrid v1 tree like this host's, plus a joined cpu,cpuacct with alias links."""
    for name, entries in (files or V1_FILES).items():
        d = root / name
        d.mkdir(parents=True)
        for f, v in {"cgroup.procs": "", "tasks": "", **entries}.items():
            (d / f).write_text(v)
    (root / "cpu").symlink_to("cpu,cpuacct")
    (root / "cpuacct").symlink_to("cpu,cpuacct")
    (root / "systemd").mkdir()
    (root / "systemd" / "cgroup.procs").write_text("")
    (root / "unified").mkdir()
    (root / "unified" / "cgroup.controllers").write_text("hugetlb\n")
    (root / "unified" / "cgroup.procs").write_text("")
    (root / "hugetlb").mkdir()  # made by hand, never mounted
    return root


def make_v2(root: Path, controllers: str = "cpuset cpu io memory pids") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cgroup.controllers").write_text(controllers + "\n")
    (root / "cgroup.subtree_control").write_text("")
    (root / "cgroup.procs").write_text("")
    return root


@pytest.fixture
def fake_cgroupfs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """Make mkdir behave like cgroupfs: a new directory gets its hierarchy's files."""
    made: list[str] = []

    def mkdir(path: str, mode: int = 0o777) -> None:
        os.mkdir(path, mode)
        made.append(path)
        rel = Path(path).relative_to(tmp_path)
        top = rel.parts[1]
        if (tmp_path / rel.parts[0] / "cgroup.controllers").exists():
            entries = dict(V2_FILES)
        else:
            entries = {k: ("" if k.startswith("cpuset.") else v) for k, v in V1_FILES[top].items()}
        for f, v in {"cgroup.procs": "", **entries}.items():
            Path(path, f).write_text(v)

    monkeypatch.setattr(hc, "_mkdir", mkdir)
    monkeypatch.setattr(hc, "_rmdir", _rmdir_fake)
    return made


def _rmdir_fake(path: str) -> None:
    p = Path(path)
    if p.exists() and (p / "cgroup.procs").read_text().strip():
        raise OSError(errno.EBUSY, "Device or resource busy", path)
    for f in p.iterdir():
        if f.is_file():
            f.unlink()
    os.rmdir(path)


# ----------------------------------------------------------------------------- pure


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/default/abc", (True, ["default", "abc"])),
        ("abc", (False, ["abc"])),
        ("/a//b/./c/", (True, ["a", "b", "c"])),
        ("rel/x", (False, ["rel", "x"])),
    ],
)
def test_parse_cgroups_path(path: str, expected: tuple[bool, list[str]]) -> None:
    assert hc.parse_cgroups_path(path) == expected


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("system.slice:runc:abc", "systemd form"),
        (":cri-containerd:abc", "systemd form"),
        ("/", "names no cgroup"),
        ("/a/../../etc", "'..'"),
        ("a\nb", "control character"),
    ],
)
def test_parse_cgroups_path_refuses(path: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        hc.parse_cgroups_path(path)


def test_systemd_form_error_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"system\.slice:cocoon:c1"):
        hc.plan_from_spec("system.slice:cocoon:c1", "c1", 256, 64, make_v2(tmp_path / "cg"))


def test_parse_proc_cgroup() -> None:
    text = "9:name=systemd:/\n4:memory:/process_api/h\n2:cpu,cpuacct:/x\n0::/u\n"
    assert hc.parse_proc_cgroup(text) == {
        "name=systemd": "/",
        "memory": "/process_api/h",
        "cpu": "/x",
        "cpuacct": "/x",
        "": "/u",
    }


def test_detect_v1_hybrid(tmp_path: Path) -> None:
    layout = hc.detect_layout(make_v1(tmp_path / "cg"))
    assert layout.mode == "v1"
    names = [h.controllers for h in layout.hierarchies]
    # Joined mount read once (its alias links skipped); systemd, unified, unmounted skipped.
    assert names == [
        ("blkio",),
        ("cpu", "cpuacct"),
        ("cpuset",),
        ("freezer",),
        ("memory",),
        ("pids",),
    ]


def test_detect_v2(tmp_path: Path) -> None:
    layout = hc.detect_layout(make_v2(tmp_path / "cg"))
    assert layout.mode == "v2"
    assert layout.hierarchies[0].controllers == ("cpuset", "cpu", "io", "memory", "pids")


def test_absent_cgroups_path(tmp_path: Path) -> None:
    root = make_v2(tmp_path / "cg")
    assert hc.plan_from_spec(None, "c1", 256, 64, root) is None
    assert hc.plan_from_spec("", "c1", 256, 64, root) is None
    plan = hc.plan_from_spec(None, "c1", 256, 64, root, default_parent=hc.DEFAULT_PARENT)
    assert plan is not None and plan.cgroups_path == "/cocoon/c1"
    assert plan.leaves == [f"{root}/cocoon/c1"]


def test_v2_plan(tmp_path: Path) -> None:
    root = make_v2(tmp_path / "cg")
    plan = hc.plan_from_spec(
        "/default/abc", "abc", 256, 64, root, cpu_shares=1024, blkio_weight=500
    )
    assert plan is not None
    r = str(root)
    assert plan.mode == "v2"
    assert plan.leaves == [f"{r}/default/abc"]
    assert plan.mkdirs == [f"{r}/default", f"{r}/default/abc"]
    assert plan.inherit == []
    assert plan.writes == [
        Write(f"{r}/cgroup.subtree_control", "+memory +cpu +io"),
        Write(f"{r}/default/cgroup.subtree_control", "+memory +cpu +io"),
        Write(f"{r}/default/abc/memory.max", str(320 * MIB)),
        Write(f"{r}/default/abc/cpu.weight", "39"),
        Write(f"{r}/default/abc/io.weight", "4950", optional=True),
    ]
    assert plan.skipped == []


def test_v2_without_optional_controllers(tmp_path: Path) -> None:
    root = make_v2(tmp_path / "cg", "memory pids")
    plan = hc.plan_from_spec("/x", "x", 128, 0, root, cpu_shares=2, blkio_weight=10)
    assert plan is not None
    assert [w.path.rsplit("/", 1)[1] for w in plan.writes] == [
        "cgroup.subtree_control",
        "memory.max",
    ]
    assert plan.writes[0].value == "+memory"
    assert len(plan.skipped) == 2


def test_v2_without_memory_controller(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="memory controller"):
        hc.plan_from_spec("/x", "x", 128, 0, make_v2(tmp_path / "cg", "cpu pids"))


def test_v2_relative_path_is_below_own_cgroup(tmp_path: Path) -> None:
    root = make_v2(tmp_path / "cg")
    proc = tmp_path / "self_cgroup"
    proc.write_text("0::/user/session\n")
    plan = hc.plan_from_spec("cocoon/c1", "c1", 128, 0, root, proc_self_cgroup=proc)
    assert plan is not None and plan.leaves == [f"{root}/user/session/cocoon/c1"]


def test_v1_plan(tmp_path: Path) -> None:
    root = make_v1(tmp_path / "cg")
    plan = hc.plan_from_spec("/default/abc", "abc", 256, 64, root, cpu_shares=512, blkio_weight=300)
    assert plan is not None
    r = str(root)
    assert plan.mode == "v1"
    assert plan.leaves == [
        f"{r}/{h}/default/abc"
        for h in ("blkio", "cpu,cpuacct", "cpuset", "freezer", "memory", "pids")
    ]
    assert plan.mkdirs[:2] == [f"{r}/blkio/default", f"{r}/blkio/default/abc"]
    assert plan.inherit == [
        f"{r}/cpuset/default/cpuset.cpus",
        f"{r}/cpuset/default/cpuset.mems",
        f"{r}/cpuset/default/abc/cpuset.cpus",
        f"{r}/cpuset/default/abc/cpuset.mems",
    ]
    assert plan.writes == [
        Write(f"{r}/memory/default/abc/memory.limit_in_bytes", str(320 * MIB)),
        Write(f"{r}/cpu,cpuacct/default/abc/cpu.shares", "512"),
    ]
    # This host's blkio has neither blkio.weight nor blkio.bfq.weight.
    assert plan.skipped == ["blkio weight: no blkio.weight or blkio.bfq.weight on this host"]


def test_v1_blkio_weight_when_present(tmp_path: Path) -> None:
    files = dict(V1_FILES, blkio={"blkio.weight": "500"})
    plan = hc.plan_from_spec("/a", "a", 64, 0, make_v1(tmp_path / "cg", files), blkio_weight=300)
    assert plan is not None and Write(f"{tmp_path}/cg/blkio/a/blkio.weight", "300") in plan.writes


def test_v1_relative_path_follows_each_hierarchys_own_cgroup(tmp_path: Path) -> None:
    root = make_v1(tmp_path / "cg")
    proc = tmp_path / "self_cgroup"
    proc.write_text("4:memory:/process_api/h\n2:cpu,cpuacct:/\n0::/\n")
    plan = hc.plan_from_spec("t1", "t1", 64, 0, root, proc_self_cgroup=proc)
    assert plan is not None
    assert f"{root}/memory/process_api/h/t1" in plan.leaves
    assert f"{root}/cpu,cpuacct/t1" in plan.leaves
    assert f"{root}/pids/t1" in plan.leaves  # a hierarchy absent from the file counts as "/"


def test_relative_path_from_inside_a_cgroup_namespace(tmp_path: Path) -> None:
    proc = tmp_path / "self_cgroup"
    proc.write_text("0::/../../x\n")
    with pytest.raises(FailedPrecondition, match="outside its cgroup namespace"):
        hc.plan_from_spec("t1", "t1", 64, 0, make_v2(tmp_path / "cg"), proc_self_cgroup=proc)


def test_v1_without_memory(tmp_path: Path) -> None:
    files = {k: v for k, v in V1_FILES.items() if k != "memory"}
    with pytest.raises(FailedPrecondition, match="memory"):
        hc.plan_from_spec("/a", "a", 64, 0, make_v1(tmp_path / "cg", files))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"memory_mib": 0}, "must be positive"),
        ({"overhead_mib": -1}, "not negative"),
        ({"cpu_shares": 1}, "cpu shares 1 is outside"),
        ({"cpu_shares": 262145}, "cpu shares"),
        ({"blkio_weight": 9}, "blkio weight 9 is outside"),
    ],
)
def test_plan_argument_checks(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"memory_mib": 64, "overhead_mib": 0} | kwargs
    with pytest.raises(InvalidArgument, match=message):
        hc.plan_from_spec("/a", "a", root=make_v2(tmp_path / "cg"), **args)


@pytest.mark.parametrize(("shares", "weight"), [(2, 1), (1024, 39), (262144, 10000)])
def test_cpu_weight_conversion(shares: int, weight: int) -> None:
    assert hc._v2_cpu_weight(shares) == weight


def test_plan_round_trips_through_json(tmp_path: Path) -> None:
    plan = hc.plan_from_spec("/a/b", "b", 64, 16, make_v1(tmp_path / "cg"), cpu_shares=100)
    assert plan is not None
    plan.created = [plan.mkdirs[0]]
    again = CgroupPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(mode="v3"), "unknown mode"),
        (lambda d: d.pop("root"), "root must be a string"),
        (lambda d: d.update(created="x"), "created must be a list"),
        (lambda d: d.update(writes=[{"path": 1}]), "bad write"),
        (lambda d: d.update(created=["/etc"]), "not below"),
        (lambda d: d.update(created=[d["root"] + "/memory/../../x"]), "not below"),
    ],
)
def test_from_dict_refuses_malformed(tmp_path: Path, mutate: Any, message: str) -> None:
    plan = hc.plan_from_spec("/a", "a", 64, 0, make_v2(tmp_path / "cg"))
    assert plan is not None
    data = plan.to_dict()
    mutate(data)
    with pytest.raises(InvalidArgument, match=message):
        CgroupPlan.from_dict(data)


# ------------------------------------------------------------------- apply (fake fs)


def test_apply_v1_and_remove(tmp_path: Path, fake_cgroupfs: list[str]) -> None:
    root = make_v1(tmp_path / "cg")
    (root / "memory" / "default").mkdir()  # exists already: not ours to remove
    plan = hc.plan_from_spec("/default/abc", "abc", 256, 64, root, cpu_shares=512)
    assert plan is not None
    created = hc.apply(plan, [4242])
    assert f"{root}/memory/default" not in created
    assert f"{root}/memory/default/abc" in created and created == plan.created
    leaf = root / "memory" / "default" / "abc"
    assert (leaf / "memory.limit_in_bytes").read_text() == str(320 * MIB)
    assert (root / "cpu,cpuacct/default/abc/cpu.shares").read_text() == "512"
    # cpuset copied from the parent before the pid went in.
    assert (root / "cpuset/default/abc/cpuset.cpus").read_text() == "0-1"
    assert (root / "cpuset/default/cpuset.mems").read_text() == "0"
    for h in ("blkio", "cpu,cpuacct", "cpuset", "freezer", "memory", "pids"):
        assert (root / h / "default/abc/cgroup.procs").read_text() == "4242"

    # A later process (delete) rebuilds the plan from state and removes what was created.
    stored = CgroupPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    for leaf_dir in stored.leaves:
        Path(leaf_dir, "cgroup.procs").write_text("")  # the VMM exited
    hc.remove(stored)
    assert stored.created == []
    assert (root / "memory" / "default").is_dir()
    assert not (root / "memory" / "default" / "abc").exists()
    assert not (root / "cpuset" / "default").exists()


def test_apply_v2(tmp_path: Path, fake_cgroupfs: list[str]) -> None:
    root = make_v2(tmp_path / "cg")
    plan = hc.plan_from_spec("/k/c1", "c1", 100, 28, root, cpu_shares=1024, blkio_weight=100)
    assert plan is not None
    hc.apply(plan, [])
    assert (root / "cgroup.subtree_control").read_text() == "+memory +cpu +io"
    assert (root / "k" / "cgroup.subtree_control").read_text() == "+memory +cpu +io"
    assert (root / "k/c1/memory.max").read_text() == str(128 * MIB)
    assert (root / "k/c1/cpu.weight").read_text() == "39"
    assert not (root / "k/c1/io.weight").exists()  # optional, absent on this "host"
    hc.add_pid(plan, 77)
    assert (root / "k/c1/cgroup.procs").read_text() == "77"


def test_apply_failure_removes_what_it_created(
    tmp_path: Path, fake_cgroupfs: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_v1(tmp_path / "cg")
    plan = hc.plan_from_spec("/a/b", "b", 64, 0, root)
    assert plan is not None
    plan.writes.append(Write(f"{root}/memory/a/b/memory.nope", "1"))
    with pytest.raises(CocoonError, match=r"cannot write 1 to .*memory\.nope"):
        hc.apply(plan, [1])
    assert plan.created == []
    assert not (root / "memory" / "a").exists()


def test_remove_retries_busy_then_reports(
    tmp_path: Path, fake_cgroupfs: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_v2(tmp_path / "cg")
    plan = hc.plan_from_spec("/p/q", "q", 64, 0, root)
    assert plan is not None
    hc.apply(plan, [99])
    with pytest.raises(CocoonError, match=r"cannot remove cgroup .*/p/q: Device or resource busy"):
        hc.remove(plan, retry_seconds=0.05)
    # The parent was not tried (its child is still there) and both stay recorded.
    assert plan.created == [f"{root}/p", f"{root}/p/q"]

    calls = {"n": 0}

    def busy_twice(path: str) -> None:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise OSError(errno.EBUSY, "Device or resource busy", path)
        Path(path, "cgroup.procs").write_text("")
        _rmdir_fake(path)

    monkeypatch.setattr(hc, "_rmdir", busy_twice)
    hc.remove(plan)
    assert plan.created == [] and not (root / "p").exists()


def test_remove_tolerates_dirs_already_gone(tmp_path: Path) -> None:
    plan = CgroupPlan(
        "v2",
        str(tmp_path),
        "/gone",
        [f"{tmp_path}/gone"],
        [f"{tmp_path}/gone"],
        created=[f"{tmp_path}/gone"],
    )
    hc.remove(plan)
    assert plan.created == []


# -------------------------------------------------------------------- real, as root


def _real_layout_has_memory() -> bool:
    try:
        layout = hc.detect_layout()
    except CocoonError:
        return False
    return any("memory" in h.controllers for h in layout.hierarchies)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create cgroups")
@pytest.mark.skipif(not _real_layout_has_memory(), reason="no memory cgroup controller")
def test_real_cgroup_on_this_host() -> None:
    # Relative, so that it lands below this process's own cgroup in every hierarchy.
    name = f"cocoon-test-{uuid.uuid4().hex[:12]}"
    plan = hc.plan_from_spec(name, name, 64, 16)
    assert plan is not None
    child: subprocess.Popen[bytes] | None = None
    try:
        hc.apply(plan, [])
        assert plan.created  # at least the leaves
        child = subprocess.Popen(["sleep", "60"])
        hc.add_pid(plan, child.pid)
        lines = Path(f"/proc/{child.pid}/cgroup").read_text().splitlines()
        for line in lines:
            _, controllers, path = line.split(":", 2)
            if "memory" in controllers.split(",") or (plan.mode == "v2" and controllers == ""):
                assert path.endswith("/" + name)
        mem = next(w for w in plan.writes if w.path.endswith(("memory.max", "limit_in_bytes")))
        assert Path(mem.path).read_text().strip() == str(80 * MIB)
    finally:
        if child is not None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
        hc.remove(plan)
    assert plan.created == []
    assert not any(Path(leaf).exists() for leaf in plan.leaves)
