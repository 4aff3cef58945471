"""The service checks the IDs the shim passes straight from containerd."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cocoon.assets import GuestAssets
from cocoon.config.settings import Settings
from cocoon.errors import InvalidArgument
from cocoon.service.persist import SandboxPaths
from cocoon.service.sandbox import ContainerRecord, Sandbox


def _sandbox(tmp_path: Path) -> Sandbox:
    p = tmp_path / "x"
    assets = GuestAssets(kernel=p, initrd=p, image=p, key="k", kernel_version="v")
    return Sandbox(SandboxPaths(tmp_path, "sb"), Settings(), assets, "tcg")


@pytest.mark.parametrize("exec_id", ["", "../../etc/x", "e" * 300, "a b"])
def test_bad_exec_ids_are_refused(tmp_path: Path, exec_id: str) -> None:
    async def go() -> None:
        sb = _sandbox(tmp_path)
        sb.containers["c"] = ContainerRecord("c", tmp_path, status="running")
        with pytest.raises(InvalidArgument, match="exec id"):
            await sb.exec("c", exec_id, {"args": ["true"]}, False)

    asyncio.run(go())


@pytest.mark.parametrize("cid", ["x" * 256, "../up", ""])
def test_bad_container_ids_are_refused(tmp_path: Path, cid: str) -> None:
    async def go() -> None:
        with pytest.raises(InvalidArgument, match="container id"):
            await _sandbox(tmp_path).create_container(cid, str(tmp_path), False)

    asyncio.run(go())
