"""Error types shared by the host-side packages.

Errors read as one line: ``what failed: why``. The cause is kept so the debug
log can show the whole chain while the user sees one clear line.
"""

from __future__ import annotations


class CocoonError(Exception):
    """Base of every error Cocoon reports to a user."""

    exit_code = 1

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.cause = cause

    def __str__(self) -> str:
        if self.cause is None:
            return self.message
        cause = str(self.cause) or type(self.cause).__name__
        return f"{self.message}: {cause}"


class InvalidArgument(CocoonError):
    """Bad input from the caller: an ID, a flag, a bundle, a config.json."""


class NotFound(CocoonError):
    """A container, exec or sandbox that does not exist."""


class AlreadyExists(CocoonError):
    """A container ID that is taken."""


class FailedPrecondition(CocoonError):
    """A verb in a state that does not allow it."""


class Unavailable(CocoonError):
    """The VM, the agent or the sandbox service is gone or not answering."""


class AssetsMissing(CocoonError):
    """Guest assets (kernel, initramfs, root image) are not built."""
