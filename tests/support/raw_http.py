"""HTTP/1.1 by hand: hostile requests (any bytes in the request line and headers) that HTTP clients
refuse to send, the answer read with the standard library's response parser."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

#: What no answer may contain, whatever was sent.
LEAKS = (b"Traceback", b'File "', b"whsec_")


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    will_close: bool

    def json(self) -> Any:
        return json.loads(self.body)


def request_bytes(
    method: bytes, path: bytes, headers: Iterable[tuple[bytes, bytes]] = (), body: bytes = b""
) -> bytes:
    """One request as sent: the headers exactly as given, then Content-Length for ``body``."""
    head = b"%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n" % (method, path)
    head += b"".join(b"%s: %s\r\n" % (name, value) for name, value in headers)
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


class RawConnection:
    """One keep-alive connection: send a request's bytes, read its answer."""

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout_s)

    def exchange(self, request: bytes, method: str = "GET") -> RawResponse:
        self.sock.sendall(request)
        response = http.client.HTTPResponse(self.sock, method=method)
        response.begin()  # raises when the server closed the connection without an answer
        body = response.read()
        return RawResponse(response.status, response.headers, body, bool(response.will_close))

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def raw_connection(url: str, timeout_s: float = 10.0) -> Iterator[RawConnection]:
    connection = RawConnection(url, timeout_s)
    try:
        yield connection
    finally:
        connection.close()


def exchange(url: str, request: bytes, method: str = "GET") -> RawResponse:
    """One request on a new connection."""
    with raw_connection(url) as connection:
        return connection.exchange(request, method)


def check_error(response: RawResponse, secrets: Iterable[bytes] = ()) -> dict[str, Any]:
    """The answer is the API's one error shape, with its trace id also in X-Trace-Id, and holds
    none of ``secrets`` nor a traceback; returns ``error``."""
    check_no_leak(response, secrets)
    assert response.headers.get("Content-Type", "").startswith("application/json"), response
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert {"code", "message", "trace_id"} <= set(error) <= {"code", "message", "details", "trace_id"}, body
    assert all(isinstance(error[k], str) and error[k] for k in ("code", "message", "trace_id")), body
    assert response.headers.get("X-Trace-Id") == error["trace_id"], (response.headers, body)
    return error


def check_no_leak(response: RawResponse, secrets: Iterable[bytes] = ()) -> None:
    whole = bytes(response.headers) + response.body
    for leak in (*LEAKS, *secrets):
        assert leak not in whole, (leak, response.status, whole[:500])
