"""The spec's OCI hooks, run by the shim where runc would run them for containerd.

containerd's runc shim leaves hooks to ``runc``: prestart, createRuntime and
createContainer at create, startContainer before the start, poststart once the
container's process runs, poststop after the delete. Cocoon's shim runs them at
the same points, on the host (as the CLI does, see cocoon.oci.hooks), with the
VM's PID in the state as every task of the pod reports it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("cocoon.shim.hooks")


def oci_state(cid: str, status: str, pid: int, bundle: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "ociVersion": "1.0.2",
        "id": cid,
        "status": status,
        "pid": pid,
        "bundle": bundle,
        "annotations": dict(spec.get("annotations") or {}),
    }


async def run_stage(kind: str, spec: dict[str, Any], state: dict[str, Any]) -> None:
    """Run the ``kind`` hooks of ``spec``; a failure of a fatal kind raises CocoonError,
    the others are logged."""
    if not spec.get("hooks"):
        return
    from cocoon.oci.hooks import hooks_of, is_fatal, run_hooks

    hooks = hooks_of(spec, kind)
    if not hooks:
        return
    warnings = await asyncio.to_thread(run_hooks, kind, hooks, state, fatal=is_fatal(kind))
    for warning in warnings:
        log.warning("%s: %s", state["id"], warning)
