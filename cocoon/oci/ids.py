"""Container and exec IDs: what runc accepts, and nothing that could escape a state dir.

An ID names a directory (``<root>/<id>``), a lock file and, in the guest, crun's
state and exec files, so besides runc's character set it must fit in one file
name (NAME_MAX, 255 bytes). Every door checks it (the CLI's verbs, the shim's
``-id``, ``-namespace`` and the pod ID, the service's Create and Exec) so a bad
one ends in one line, never a traceback from the file system.
"""

from __future__ import annotations

import re

from cocoon.errors import InvalidArgument

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# One path component (Linux NAME_MAX); the guest's "exec-<id>.json" needs 10 more.
MAX_ID_LEN = 255
MAX_EXEC_ID_LEN = MAX_ID_LEN - len("exec-.json")


def validate_id(cid: str, what: str = "container id", limit: int = MAX_ID_LEN) -> str:
    """Return ``cid`` if valid; raise InvalidArgument naming the problem."""
    if not isinstance(cid, str) or not cid:
        raise InvalidArgument(f"{what} must not be empty")
    if len(cid) > limit:
        raise InvalidArgument(f"{what} is {len(cid)} characters long, more than {limit}")
    if not _ID.fullmatch(cid) or cid in (".", ".."):
        shown = cid if len(cid) <= 80 else cid[:77] + "..."
        raise InvalidArgument(f"invalid {what} {shown!r}: must match [A-Za-z0-9][A-Za-z0-9_.-]*")
    return cid


def validate_exec_id(exec_id: str) -> str:
    """An exec ID (containerd's or the CLI's): the same rules, a little shorter."""
    return validate_id(exec_id, "exec id", MAX_EXEC_ID_LEN)
