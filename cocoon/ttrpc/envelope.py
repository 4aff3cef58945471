"""The ttRPC Request/Response envelopes, encoded as protobuf.

Field numbers follow containerd/ttrpc ``request.proto``::

    Request  { 1: service string, 2: method string, 3: payload bytes,
               4: timeout_nano int64, 5: metadata repeated KeyValue{1: key, 2: value} }
    Response { 1: status google.rpc.Status{1: code int32, 2: message string}, 2: payload bytes }

The guest has no protobuf runtime (its image carries only Debian's python3),
so these three tiny messages are coded by hand here; everything bigger (the
containerd Task API in the shim) uses the ``protobuf`` package.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class DecodeError(Exception):
    """A malformed protobuf envelope."""


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise DecodeError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise DecodeError("varint too long")


def _field_bytes(num: int, value: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(value)) + value


def _field_varint(num: int, value: int) -> bytes:
    return _varint(num << 3) + _varint(value)


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
            out.append((num, value))
        elif wire == 2:
            size, pos = _read_varint(data, pos)
            if pos + size > len(data):
                raise DecodeError("truncated length-delimited field")
            out.append((num, data[pos : pos + size]))
            pos += size
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise DecodeError(f"unsupported wire type {wire}")
        if pos > len(data):
            raise DecodeError("truncated fixed-size field")
    return out


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


@dataclass
class Request:
    service: str
    method: str
    payload: bytes = b""
    timeout_nano: int = 0
    metadata: list[tuple[str, str]] = field(default_factory=list)

    def encode(self) -> bytes:
        out = _field_bytes(1, self.service.encode()) + _field_bytes(2, self.method.encode())
        if self.payload:
            out += _field_bytes(3, self.payload)
        if self.timeout_nano:
            out += _field_varint(4, self.timeout_nano)
        for key, value in self.metadata:
            out += _field_bytes(5, _field_bytes(1, key.encode()) + _field_bytes(2, value.encode()))
        return out

    @classmethod
    def decode(cls, data: bytes) -> Request:
        req = cls("", "")
        try:
            for num, value in _fields(data):
                if num == 1 and isinstance(value, bytes):
                    req.service = value.decode()
                elif num == 2 and isinstance(value, bytes):
                    req.method = value.decode()
                elif num == 3 and isinstance(value, bytes):
                    req.payload = value
                elif num == 4 and isinstance(value, int):
                    req.timeout_nano = _signed64(value)
                elif num == 5 and isinstance(value, bytes):
                    kv = dict(_fields(value))
                    k, v = kv.get(1, b""), kv.get(2, b"")
                    if isinstance(k, bytes) and isinstance(v, bytes):
                        req.metadata.append((k.decode(), v.decode()))
        except UnicodeDecodeError as exc:
            raise DecodeError(f"invalid UTF-8 in request: {exc}") from exc
        return req


@dataclass
class Status:
    code: int = 0
    message: str = ""


@dataclass
class Response:
    status: Status = field(default_factory=Status)
    payload: bytes = b""

    def encode(self) -> bytes:
        status = b""
        if self.status.code:
            status += _field_varint(1, self.status.code)
        if self.status.message:
            status += _field_bytes(2, self.status.message.encode())
        out = _field_bytes(1, status) if status else b""
        if self.payload:
            out += _field_bytes(2, self.payload)
        return out

    @classmethod
    def decode(cls, data: bytes) -> Response:
        resp = cls()
        for num, value in _fields(data):
            if num == 1 and isinstance(value, bytes):
                for snum, svalue in _fields(value):
                    if snum == 1 and isinstance(svalue, int):
                        resp.status.code = _signed64(svalue)
                    elif snum == 2 and isinstance(svalue, bytes):
                        resp.status.message = svalue.decode(errors="replace")
            elif num == 2 and isinstance(value, bytes):
                resp.payload = value
        return resp
