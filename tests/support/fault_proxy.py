"""A fault-injecting HTTP proxy for integration tests: real sockets, one thread per connection.

Put it in front of a real server (the local WordPress) and script what goes wrong:

* :meth:`FaultProxy.fail` answers ``status`` (503 by default, with ``Retry-After``) instead of
  forwarding, for the next ``count`` matching requests or for ``seconds``;
* :meth:`FaultProxy.delay` forwards a matching request, so its effect happens upstream, then holds
  the answer back for ``seconds``, past the client's timeout.

Every request is recorded (method, path, headers, body, the status it got, the response headers).
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
}


@dataclass
class Rule:
    """One scripted fault. ``count`` and ``until`` bound it; ``method``/``path`` select requests."""

    action: str  # "fail" or "delay"
    method: str | None = None
    path: str | None = None
    count: int | None = None
    until: float | None = None
    status: int = 503
    retry_after: str | None = "1"
    seconds: float = 0.0
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method != method:
            return False
        if self.path is not None and self.path not in path:
            return False
        if self.until is not None and time.monotonic() > self.until:
            return False
        return self.count is None or self.hits < self.count


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    status: int = 0
    response_headers: dict[str, str] = field(default_factory=dict)
    faulted: str | None = None
    body: bytes = b""


class FaultProxy:
    """Forwards ``http://127.0.0.1:<port>`` to ``upstream``, applying the scripted faults.

    Parameters:
      upstream(str): e.g. ``http://127.0.0.1:8088``.
    """

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.rules: list[Rule] = []
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return

            def _handle(self) -> None:
                proxy._serve(self)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="fault-proxy", daemon=True)

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- scripting ------------------------------------------------------------------------------

    def fail(
        self,
        *,
        count: int | None = None,
        seconds: float | None = None,
        status: int = 503,
        retry_after: str | None = "1",
        method: str | None = None,
        path: str | None = None,
    ) -> Rule:
        """Answer ``status`` without forwarding, for ``count`` requests or ``seconds``."""
        until = None if seconds is None else time.monotonic() + seconds
        rule = Rule("fail", method, path, count, until, status=status, retry_after=retry_after)
        with self._lock:
            self.rules.append(rule)
        return rule

    def delay(
        self, seconds: float, *, count: int = 1, method: str | None = None, path: str | None = None
    ) -> Rule:
        """Forward, then hold the answer back ``seconds`` (the upstream effect has happened)."""
        rule = Rule("delay", method, path, count, seconds=seconds)
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    @contextmanager
    def failing(self, **kwargs: object) -> Iterator[Rule]:
        rule = self.fail(**kwargs)  # type: ignore[arg-type]
        try:
            yield rule
        finally:
            with self._lock:
                if rule in self.rules:
                    self.rules.remove(rule)

    def requests(self, method: str | None = None, path: str | None = None) -> list[Seen]:
        with self._lock:
            return [
                s
                for s in self.seen
                if (method is None or s.method == method) and (path is None or path in s.path)
            ]

    # --- serving --------------------------------------------------------------------------------

    def _take(self, method: str, path: str) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, path):
                    rule.hits += 1
                    return rule
        return None

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        method, path = handler.command, handler.path
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        seen = Seen(method, path, {k.lower(): v for k, v in handler.headers.items()}, body=body)
        with self._lock:
            self.seen.append(seen)
        rule = self._take(method, path)
        if rule is not None and rule.action == "fail":
            seen.faulted, seen.status = "fail", rule.status
            payload = b'{"code":"injected_fault","message":"injected by the test proxy"}'
            headers = {"Content-Type": "application/json", "Content-Length": str(len(payload))}
            if rule.retry_after is not None:
                headers["Retry-After"] = rule.retry_after
            self._reply(handler, rule.status, headers, payload)
            return
        upstream = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=60)
        try:
            forward = {k: v for k, v in handler.headers.items() if k.lower() not in _HOP_BY_HOP}
            upstream.request(method, path, body=body or None, headers=forward)
            response = upstream.getresponse()
            payload = response.read()
            status = response.status
            headers = {k: v for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP}
        except OSError:
            self._reply(handler, 502, {"Content-Length": "0"}, b"")
            return
        finally:
            upstream.close()
        headers["Content-Length"] = str(len(payload))
        seen.status, seen.response_headers = status, {k.lower(): v for k, v in headers.items()}
        if rule is not None and rule.action == "delay":
            seen.faulted = "delay"
            time.sleep(rule.seconds)
        self._reply(handler, status, headers, payload)

    @staticmethod
    def _reply(handler: BaseHTTPRequestHandler, status: int, headers: dict[str, str], payload: bytes) -> None:
        try:
            handler.send_response(status)
            for key, value in headers.items():
                handler.send_header(key, value)
            handler.end_headers()
            if handler.command != "HEAD":
                handler.wfile.write(payload)
            handler.wfile.flush()
        except OSError:
            handler.close_connection = True  # the client gave up (a timeout): nothing to tell it
