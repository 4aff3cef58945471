"""gRPC status codes (ttRPC reuses google.rpc.Status) and the error that carries one."""

from __future__ import annotations

from enum import IntEnum


class Code(IntEnum):
    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14


class RPCError(Exception):
    """An error status from the peer (or one a handler raises to send one)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        try:
            name = Code(self.code).name
        except ValueError:
            name = str(self.code)
        return f"{self.message} ({name})"


class ConnectionLost(Exception):
    """The transport closed; every pending call fails with this."""


class MessageTooLarge(RPCError):
    """A request or reply over ttRPC's message limit (4 MiB, as containerd's ttrpc)."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(
            Code.RESOURCE_EXHAUSTED,
            f"{what} is {size} bytes, more than ttRPC's {limit >> 20} MiB message limit",
        )
