"""A minimal CRI RuntimeService client (what the kubelet would send), over gRPC."""

from __future__ import annotations

from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from tests.engines.cri import api_pb2 as cri

M = TypeVar("M", bound=Message)
TIMEOUT = 180.0

__all__ = ["CRI", "cri"]


class CRI:
    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(f"unix://{address}")

    def call(self, method: str, req: Message, resp_type: type[M], timeout: float = TIMEOUT) -> M:
        fn: Any = self.channel.unary_unary(
            f"/runtime.v1.RuntimeService/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=resp_type.FromString,
        )
        result: M = fn(req, timeout=timeout)
        return result

    def close(self) -> None:
        self.channel.close()
