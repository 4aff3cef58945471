"""Container IDs: what runc accepts, and nothing that could escape a state dir."""

from __future__ import annotations

import re

from cocoon.errors import InvalidArgument

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
MAX_ID_LEN = 1024


def validate_id(cid: str) -> str:
    """Return ``cid`` if valid; raise InvalidArgument naming the problem."""
    if not cid:
        raise InvalidArgument("container id must not be empty")
    if len(cid) > MAX_ID_LEN:
        raise InvalidArgument(f"container id is longer than {MAX_ID_LEN} characters")
    if not _ID.fullmatch(cid) or cid in (".", ".."):
        raise InvalidArgument(
            f"invalid container id {cid!r}: must match [A-Za-z0-9][A-Za-z0-9_.-]*"
        )
    return cid
