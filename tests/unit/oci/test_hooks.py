from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cocoon.errors import CocoonError, InvalidArgument
from cocoon.oci.hooks import hooks_of, is_fatal, run_hooks, validate_hook, validate_hooks

STATE = {"ociVersion": "1.0.2", "id": "c1", "status": "creating", "pid": 0, "bundle": "/b"}


def script(tmp_path: Path, name: str, body: str, mode: int = 0o755) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(mode)
    return str(path)


def recorder(tmp_path: Path, name: str = "rec") -> str:
    """A hook that records its stdin, argv and environment under tmp_path/<name>.*"""
    out = tmp_path / name
    return script(
        tmp_path,
        name + ".sh",
        f'cat > {out}.stdin\nprintf "%s\\n" "$0" "$@" > {out}.argv\nenv > {out}.env\n'
        f"echo {name} >> {tmp_path}/order\n",
    )


def test_hook_gets_state_argv_and_env(tmp_path: Path) -> None:
    path = recorder(tmp_path)
    hook = {"path": path, "args": ["custom-argv0", "one", "two words"], "env": ["A=1", "B=x=y"]}
    assert run_hooks("createRuntime", [hook], STATE, fatal=True) == []
    assert json.loads((tmp_path / "rec.stdin").read_text()) == STATE
    # A script's $0 is its path (the kernel's #! handling); the rest is args[1:].
    assert (tmp_path / "rec.argv").read_text().splitlines() == [path, "one", "two words"]
    env = dict(line.split("=", 1) for line in (tmp_path / "rec.env").read_text().splitlines())
    assert env.get("A") == "1" and env.get("B") == "x=y"
    assert "HOME" not in env  # a given env replaces the runtime's


def test_args0_is_argv0_and_path_is_the_executable(tmp_path: Path) -> None:
    out = tmp_path / "argv.json"
    code = f"import json, sys; open({str(out)!r}, 'w').write(json.dumps(sys.orig_argv))"
    hook = {"path": sys.executable, "args": ["custom-argv0", "-c", code]}
    run_hooks("createRuntime", [hook], STATE, fatal=True)
    assert json.loads(out.read_text()) == ["custom-argv0", "-c", code]


def test_no_args_means_path_as_argv0_and_no_env_inherits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COCOON_HOOK_TEST", "inherited")
    path = recorder(tmp_path)
    run_hooks("poststop", [{"path": path}], STATE, fatal=False)
    assert (tmp_path / "rec.argv").read_text().splitlines() == [path]
    assert "COCOON_HOOK_TEST=inherited" in (tmp_path / "rec.env").read_text()


def test_hooks_run_in_order(tmp_path: Path) -> None:
    hooks = [{"path": recorder(tmp_path, n)} for n in ("a", "b", "c")]
    run_hooks("poststart", hooks, STATE, fatal=False)
    assert (tmp_path / "order").read_text().split() == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("body", "hook_extra", "why"),
    [
        ("echo oops >&2\nexit 3\n", {}, "exit status 3: oops"),
        ("exit 1\n", {}, "exit status 1$"),
        ("kill -TERM $$\n", {}, "killed by signal 15"),
        ("sleep 30\n", {"timeout": 1}, r"timed out after 1 s \(killed\)"),
    ],
)
def test_failures(tmp_path: Path, body: str, hook_extra: dict[str, Any], why: str) -> None:
    path = script(tmp_path, "h.sh", body)
    hook = {"path": path, **hook_extra}
    with pytest.raises(CocoonError, match=f"^createContainer hook {path} failed: {why}"):
        run_hooks("createContainer", [hook], STATE, fatal=True)
    warnings = run_hooks("poststop", [hook], STATE, fatal=False)
    assert len(warnings) == 1 and warnings[0].startswith(f"poststop hook {path} failed: ")


def test_timeout_kills_the_hooks_children_too(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    path = script(tmp_path, "h.sh", f"sleep 30 &\necho $! > {pidfile}\nwait\n")
    start = time.monotonic()
    warnings = run_hooks("poststop", [{"path": path, "timeout": 1}], STATE, fatal=False)
    assert time.monotonic() - start < 10
    assert "timed out" in warnings[0]
    child = int(pidfile.read_text())
    for _ in range(100):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.02)
    else:
        pytest.fail("the hook's child survived the timeout")


def test_daemon_holding_stdout_does_not_block(tmp_path: Path) -> None:
    pidfile = tmp_path / "d.pid"
    path = script(tmp_path, "h.sh", f"(sleep 30 >&1 2>&1 &\necho $! > {pidfile})\nexit 0\n")
    start = time.monotonic()
    try:
        assert run_hooks("createRuntime", [{"path": path}], STATE, fatal=True) == []
        assert time.monotonic() - start < 5
    finally:
        os.kill(int(pidfile.read_text()), 9)


def test_fatal_stops_at_first_failure_nonfatal_runs_all(tmp_path: Path) -> None:
    bad = script(tmp_path, "bad.sh", "exit 2\n")
    good = recorder(tmp_path, "good")
    with pytest.raises(CocoonError):
        run_hooks("startContainer", [{"path": bad}, {"path": good}], STATE, fatal=True)
    assert not (tmp_path / "order").exists()
    warnings = run_hooks(
        "poststop", [{"path": bad}, {"path": good}, {"path": bad}], STATE, fatal=False
    )
    assert len(warnings) == 2
    assert (tmp_path / "order").read_text().split() == ["good"]


@pytest.mark.parametrize(
    ("hook", "why"),
    [
        ({"path": "relative/hook"}, "must be absolute"),
        ({"path": "/nonexistent/cocoon-hook"}, "no such file"),
        ({"path": "NOT_EXEC"}, "not executable"),
        ({"path": "/bin/true", "timeout": 0}, "timeout must be a positive integer"),
        ({"path": "/bin/true", "args": "sh"}, "args must be an array of strings"),
        ({"path": "/bin/true", "env": ["NOEQUALS"]}, "not KEY=VALUE"),
    ],
)
def test_invalid_hooks(tmp_path: Path, hook: dict[str, Any], why: str) -> None:
    if hook["path"] == "NOT_EXEC":
        hook = {"path": script(tmp_path, "x.sh", "exit 0\n", mode=0o644)}
    with pytest.raises(CocoonError, match=why):
        run_hooks("createRuntime", [hook], STATE, fatal=True)
    assert why.split()[0] in run_hooks("poststop", [hook], STATE, fatal=False)[0]


@pytest.mark.parametrize(
    ("hook", "ok"),
    [
        ({"path": "/x"}, True),
        ({"path": "/x", "args": ["a"], "env": ["K=V"], "timeout": 5}, True),
        ({}, False),
        ({"path": ""}, False),
        ({"path": "x"}, False),
        ({"path": "/x", "timeout": True}, False),
        ({"path": "/x", "timeout": 1.5}, False),
        ({"path": "/x", "env": [1]}, False),
    ],
)
def test_validate_hook(hook: dict[str, Any], ok: bool) -> None:
    if ok:
        validate_hook(hook)
    else:
        with pytest.raises(InvalidArgument):
            validate_hook(hook)


SPEC = {
    "hooks": {
        "prestart": [{"path": "/p1"}, {"path": "/p2"}],
        "createRuntime": [{"path": "/cr"}],
        "poststop": [{"path": "/ps"}],
    }
}


@pytest.mark.parametrize(
    ("kind", "paths"),
    [
        ("prestart", []),  # returned as part of createRuntime
        ("createRuntime", ["/p1", "/p2", "/cr"]),
        ("createContainer", []),
        ("poststop", ["/ps"]),
    ],
)
def test_hooks_of(kind: str, paths: list[str]) -> None:
    assert [h["path"] for h in hooks_of(SPEC, kind)] == paths


def test_hooks_of_edge_cases() -> None:
    assert hooks_of({}, "createRuntime") == []
    assert hooks_of({"hooks": None}, "poststart") == []
    with pytest.raises(ValueError, match="unknown hook kind"):
        hooks_of(SPEC, "preStart")
    with pytest.raises(InvalidArgument, match=r"hooks\.poststop must be an array"):
        hooks_of({"hooks": {"poststop": {"path": "/x"}}}, "poststop")
    with pytest.raises(InvalidArgument, match=r"hooks\.prestart\[0\]"):
        hooks_of({"hooks": {"prestart": ["/x"]}}, "createRuntime")
    with pytest.raises(InvalidArgument, match="must be absolute"):
        validate_hooks({"hooks": {"prestart": [{"path": "rel"}]}})


@pytest.mark.parametrize(
    ("kind", "fatal"),
    [
        ("prestart", True),
        ("createRuntime", True),
        ("createContainer", True),
        ("startContainer", True),
        ("poststart", False),
        ("poststop", False),
    ],
)
def test_is_fatal(kind: str, fatal: bool) -> None:
    assert is_fatal(kind) is fatal
