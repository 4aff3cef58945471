"""JSON encoding of the dataclass schemas, with type checks on decode.

The guest image carries only Debian's python3 (no protobuf, no msgspec), so the
agent messages are dataclasses encoded as JSON; ``bytes`` fields travel as
base64. Decoding checks every field's type, so a malformed message from an
untrusted guest is an error naming the field, never a crash deeper in.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


INT64 = 1 << 63  # integers are 64-bit, as in the protobuf schemas these mirror


class SchemaError(ValueError):
    """A message that does not match its schema."""


def _to_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode()
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    return value


def encode(obj: Any) -> bytes:
    """Serialise a schema dataclass to JSON bytes."""
    return json.dumps(_to_json(obj), separators=(",", ":")).encode()


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = typing.get_type_hints(cls)
        _HINTS[cls] = hints
    return hints


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except SchemaError as exc:
                errors.append(str(exc))
        raise SchemaError(errors[0] if errors else f"{where}: unexpected null")
    if origin is list:
        if not isinstance(value, list):
            raise SchemaError(f"{where}: expected a list, got {type(value).__name__}")
        (item,) = typing.get_args(tp) or (Any,)
        return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise SchemaError(f"{where}: expected an object, got {type(value).__name__}")
        _, vt = typing.get_args(tp) or (str, Any)
        return {str(k): _convert(vt, v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _from_json(tp, value, where)
    if tp is bytes:
        if not isinstance(value, str):
            raise SchemaError(f"{where}: expected base64 text")
        try:
            return base64.b64decode(value, validate=True)
        except ValueError as exc:
            raise SchemaError(f"{where}: invalid base64") from exc
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise SchemaError(f"{where}: expected a number, got {type(value).__name__}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if -INT64 <= value < INT64:
                return value
            raise SchemaError(f"{where}: integer out of the 64-bit range")
        raise SchemaError(f"{where}: expected an integer, got {type(value).__name__}")
    if tp in (str, bool):
        if type(value) is tp:
            return value
        raise SchemaError(f"{where}: expected {tp.__name__}, got {type(value).__name__}")
    raise SchemaError(f"{where}: unsupported schema type {tp!r}")


def _from_json(cls: type[T], data: Any, where: str) -> T:
    if not isinstance(data, dict):
        raise SchemaError(f"{where}: expected an object, got {type(data).__name__}")
    hints = _hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in data:
            kwargs[f.name] = _convert(hints[f.name], data[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SchemaError(f"{where}: missing field {f.name!r}")
    return cls(**kwargs)


def decode(cls: type[T], data: bytes) -> T:
    """Parse JSON bytes into ``cls``; raises SchemaError naming the bad field."""
    try:
        raw = json.loads(data) if data else {}
    except (ValueError, UnicodeDecodeError) as exc:
        raise SchemaError(f"{cls.__name__}: invalid JSON: {exc}") from exc
    except RecursionError:
        # A peer can nest arrays deeper than Python's stack within one message
        # (found by fuzzing): a bad message, not a crash of the reader.
        raise SchemaError(f"{cls.__name__}: JSON nested too deeply") from None
    try:
        return _from_json(cls, raw, cls.__name__)
    except RecursionError:
        raise SchemaError(f"{cls.__name__}: JSON nested too deeply") from None
