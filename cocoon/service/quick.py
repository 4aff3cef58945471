"""Synchronous calls to a sandbox service, with plain JSON: the light path for CLI verbs.

No asyncio and no schema classes are imported here (the service checks every
request against its schema); ``state``, ``kill``, ``ps``... stay cheap.
"""

from __future__ import annotations

import json
from typing import Any

from cocoon.errors import (
    AlreadyExists,
    CocoonError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from cocoon.service.persist import SandboxPaths

SERVICE = "cocoon.service.v1.Sandbox"  # = cocoon.wire.service.SERVICE (a test checks)
_CODES: dict[int, type[CocoonError]] = {
    5: NotFound,
    6: AlreadyExists,
    3: InvalidArgument,
    9: FailedPrecondition,
    14: Unavailable,
}


class ServiceDown(Unavailable):
    """The sandbox service is not there."""


def call(paths: SandboxPaths, method: str, timeout: float = 60.0, **req: Any) -> dict[str, Any]:
    """Call ``method`` with ``req`` as its JSON request; return the JSON reply.

    Raises the CocoonError matching the service's status, or ServiceDown.
    """
    from cocoon.ttrpc import sync
    from cocoon.ttrpc.status import ConnectionLost, RPCError

    try:
        raw = sync.call(str(paths.service_sock), SERVICE, method, json.dumps(req).encode(), timeout)
    except RPCError as exc:
        raise _CODES.get(exc.code, CocoonError)(exc.message) from exc
    except ConnectionLost as exc:
        raise ServiceDown(f"the sandbox service of {paths.id!r} is not running", exc) from exc
    except TimeoutError as exc:
        raise Unavailable(f"the sandbox service of {paths.id!r} did not answer", exc) from exc
    reply: dict[str, Any] = json.loads(raw) if raw else {}
    return reply
