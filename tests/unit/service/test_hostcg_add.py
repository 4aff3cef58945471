"""A host PID that exits before it joins the VM's cgroup is not an error."""

from __future__ import annotations

import errno
from typing import Any

import pytest

from cocoon.errors import CocoonError
from cocoon.service import hostcg


def test_a_pid_gone_before_it_joins_is_skipped_other_errors_are_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cg = hostcg.HostCgroup(plan=object())  # type: ignore[arg-type]

    def gone(_plan: Any, pid: int) -> None:
        raise CocoonError(f"cannot move pid {pid}", ProcessLookupError(errno.ESRCH, "gone"))

    monkeypatch.setattr(hostcg.hc, "add_pid", gone)
    cg.add(12345)

    def denied(_plan: Any, pid: int) -> None:
        raise CocoonError(f"cannot move pid {pid}", PermissionError(errno.EACCES, "no"))

    monkeypatch.setattr(hostcg.hc, "add_pid", denied)
    with pytest.raises(CocoonError):
        cg.add(12345)
