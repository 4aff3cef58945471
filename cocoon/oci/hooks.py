"""Running OCI hooks (runtime-spec ``config.md`` "POSIX-platform Hooks") on the host.

Every hook runs on the host, in the runtime's namespaces, whatever its kind: the
container's namespaces live inside the VM, where host binaries cannot run. Hooks
that expect to be inside the container's namespaces (``createContainer``,
``startContainer``) therefore see the host instead; for the common hooks (network
setup by path of the netns, device plumbing, logging) this is what they want.

Semantics follow runc: the executable is ``path``; ``args`` is the whole argv
(``args[0]`` may differ from ``path``; no ``args`` means argv = ``[path]``); no ``env``
means the runtime's environment is inherited, an empty ``env`` means an empty one; the
state JSON is on stdin. A hook that exits non-zero or outlives its ``timeout`` (seconds,
default :data:`DEFAULT_TIMEOUT`; its process group is then SIGKILLed) has failed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
from collections.abc import Mapping
from typing import IO, Any

from cocoon.errors import CocoonError, InvalidArgument

DEFAULT_TIMEOUT = 30.0
KINDS = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")
# Spec: a failure of these aborts the operation; poststart/poststop failures only warn.
FATAL_KINDS = frozenset({"prestart", "createRuntime", "createContainer", "startContainer"})
_OUTPUT_TAIL = 400  # characters of a failed hook's output that go into the message


def is_fatal(kind: str) -> bool:
    """Whether the spec makes a failing hook of this kind fail the operation."""
    _check_kind(kind)
    return kind in FATAL_KINDS


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown hook kind {kind!r}")


def hooks_of(spec: Mapping[str, Any], kind: str) -> list[dict[str, Any]]:
    """The hooks of ``kind`` in ``spec``, in the order they must run.

    The deprecated ``prestart`` hooks run at the same point as ``createRuntime``, just
    before them, so ``createRuntime`` returns them first and ``prestart`` returns
    nothing: a caller that asks for both still runs each hook once, in spec order.
    """
    _check_kind(kind)
    if kind == "prestart":
        return []
    hooks = spec.get("hooks") or {}
    if not isinstance(hooks, Mapping):
        raise InvalidArgument("hooks must be an object")
    kinds = ("prestart", "createRuntime") if kind == "createRuntime" else (kind,)
    out: list[dict[str, Any]] = []
    for k in kinds:
        entries = hooks.get(k) or []
        if not isinstance(entries, list):
            raise InvalidArgument(f"hooks.{k} must be an array")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise InvalidArgument(f"hooks.{k}[{i}] must be an object")
            out.append(entry)
    return out


def validate_hook(hook: Mapping[str, Any]) -> None:
    """Check one hook entry's shape (not whether its file exists); InvalidArgument if bad."""
    path = hook.get("path")
    if not isinstance(path, str) or not path:
        raise InvalidArgument("hook path is required")
    if not os.path.isabs(path):
        raise InvalidArgument(f"hook path {path} must be absolute")
    for key in ("args", "env"):
        value = hook.get(key)
        if value is not None and not (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        ):
            raise InvalidArgument(f"hook {path}: {key} must be an array of strings")
    for entry in hook.get("env") or []:
        if "=" not in entry:
            raise InvalidArgument(f"hook {path}: env entry {entry!r} is not KEY=VALUE")
    timeout = hook.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int) or timeout <= 0
    ):
        raise InvalidArgument(f"hook {path}: timeout must be a positive integer")


def validate_hooks(spec: Mapping[str, Any]) -> None:
    """Validate every hook in ``spec`` (call at create, before anything runs)."""
    for kind in KINDS:
        for hook in hooks_of(spec, kind):
            validate_hook(hook)


def _env_of(hook: Mapping[str, Any]) -> dict[str, str] | None:
    env = hook.get("env")
    if env is None:
        return None
    out: dict[str, str] = {}
    for entry in env:
        key, _, value = entry.partition("=")
        out[key] = value
    return out


def _tail(fh: IO[bytes]) -> str:
    fh.seek(0)
    text = fh.read().decode("utf-8", "replace").strip()
    if len(text) > _OUTPUT_TAIL:
        text = "..." + text[-_OUTPUT_TAIL:]
    return " ".join(text.split())


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except PermissionError:
        proc.kill()
    proc.wait()


def run_hook(hook: Mapping[str, Any], state_json: bytes) -> str | None:
    """Run one hook; return None on success or why it failed."""
    try:
        validate_hook(hook)
    except InvalidArgument as exc:
        return exc.message
    path: str = hook["path"]
    if not os.path.isfile(path):
        return "no such file"
    if not os.access(path, os.X_OK):
        return "not executable"
    argv = list(hook.get("args") or [path])
    timeout = float(hook.get("timeout") or DEFAULT_TIMEOUT)
    # Files rather than pipes: a hook that leaves a daemon holding its stdout cannot
    # block us, and a hook that does not read its stdin cannot either.
    with tempfile.TemporaryFile() as stdin, tempfile.TemporaryFile() as output:
        stdin.write(state_json)
        stdin.seek(0)
        try:
            proc = subprocess.Popen(
                argv,
                executable=path,
                stdin=stdin,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=_env_of(hook),
                close_fds=True,
                process_group=0,
            )
        except OSError as exc:
            return f"cannot execute: {exc.strerror or exc}"
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return f"timed out after {timeout:g} s (killed)"
        except BaseException:
            _kill_group(proc)
            raise
        if rc == 0:
            return None
        why = f"killed by signal {-rc}" if rc < 0 else f"exit status {rc}"
        out = _tail(output)
        return f"{why}: {out}" if out else why


def run_hooks(
    kind: str, hooks: list[dict[str, Any]], state: dict[str, Any], *, fatal: bool
) -> list[str]:
    """Run ``hooks`` in order with ``state`` (the OCI state object) on their stdin.

    ``fatal``: the first failure raises CocoonError ``"<kind> hook <path> failed: why"``
    and the rest do not run. Otherwise every hook runs and the failures come back as
    warning lines in that same form.
    """
    _check_kind(kind)
    state_json = json.dumps(state, separators=(",", ":")).encode()
    warnings: list[str] = []
    for hook in hooks:
        why = run_hook(hook, state_json)
        if why is None:
            continue
        message = f"{kind} hook {hook.get('path')} failed: {why}"
        if fatal:
            raise CocoonError(message)
        warnings.append(message)
    return warnings
