"""A blocking, one-call ttRPC client for short-lived CLI verbs.

``cocoon state`` and friends are on every engine's hot path; importing asyncio
alone costs more than runc's whole run. One call over a plain socket needs
only the framing and the envelope.
"""

from __future__ import annotations

import socket

from cocoon.ttrpc import framing
from cocoon.ttrpc.envelope import DecodeError, Request, Response
from cocoon.ttrpc.status import ConnectionLost, MessageTooLarge, RPCError


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionLost("connection closed by peer")
        buf += chunk
    return bytes(buf)


def call(path: str, service: str, method: str, payload: bytes, timeout: float) -> bytes:
    """Call service/method on the unix socket at ``path``; return the reply payload.

    Raises ConnectionLost if the server is not there or goes away, RPCError for
    an error status, TimeoutError after ``timeout`` seconds.
    """
    req = Request(service, method, payload, int(timeout * 1e9)).encode()
    if len(req) > framing.MAX_PAYLOAD:
        raise MessageTooLarge(f"{method}: the request", len(req), framing.MAX_PAYLOAD)
    frame = framing.encode(framing.Frame(1, framing.FrameType.REQUEST, 0, req))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ConnectionLost(f"cannot connect to {path}: {exc.strerror}") from exc
        try:
            sock.sendall(frame)
            while True:
                length, stream_id, ftype, _ = framing.decode_header(
                    _read_exactly(sock, framing.HEADER_SIZE)
                )
                body = _read_exactly(sock, length)
                if stream_id == 1 and ftype == framing.FrameType.RESPONSE:
                    break
        except TimeoutError:
            raise TimeoutError(f"{method} timed out after {timeout:g}s") from None
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise ConnectionLost(f"connection lost: {exc}") from exc
        except framing.FrameError as exc:
            raise ConnectionLost(f"protocol error: {exc}") from exc
    try:
        resp = Response.decode(body)
    except (DecodeError, UnicodeDecodeError) as exc:
        raise ConnectionLost(f"malformed response: {exc}") from exc
    if resp.status.code:
        raise RPCError(resp.status.code, resp.status.message)
    return resp.payload
