"""Receivers of the telemetry the processes export, for end-to-end tests: an OTLP/HTTP trace
receiver decoding ``ExportTraceServiceRequest`` protobufs, and a receiver of Loki's push API that
answers a small subset of LogQL (``{label="value", ...} |= "text"``) on ``query_range``.

No real Loki runs on this machine (Debian's ``loki`` package is an unrelated genetics program and
Grafana Loki is neither packaged nor on PyPI), so the log side speaks Loki's wire protocol only.
"""

from __future__ import annotations

import json
import re
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

__all__ = ["LokiReceiver", "OtlpReceiver", "Span", "loki_receiver", "otlp_receiver"]


@dataclass
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass
class OtlpReceiver:
    """Spans received over OTLP/HTTP, decoded from protobuf."""

    url: str = ""
    spans: list[Span] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def trace(self, trace_id: str) -> list[Span]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]


def _any_value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return (
        getattr(value, kind) if kind in ("string_value", "int_value", "bool_value", "double_value") else None
    )


@contextmanager
def _serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """``handler`` on a free loopback port for the block; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """An OTLP/HTTP (protobuf) trace receiver on a free port for the block."""
    receiver = OtlpReceiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            ok = self.path == "/v1/traces" and self.headers["content-type"] == "application/x-protobuf"
            if ok:
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                decoded = []
                for resource_spans in request.resource_spans:
                    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                    for scope_spans in resource_spans.scope_spans:
                        for s in scope_spans.spans:
                            decoded.append(
                                Span(
                                    resource.get("service.name", ""),
                                    s.name,
                                    s.trace_id.hex(),
                                    s.span_id.hex(),
                                    s.parent_span_id.hex(),
                                    s.kind,
                                    {a.key: _any_value(a.value) for a in s.attributes},
                                )
                            )
                with receiver.lock:
                    receiver.spans.extend(decoded)
            self.send_response(200 if ok else 400)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    with _serving(Handler) as url:
        receiver.url = url
        yield receiver


_SELECTOR = re.compile(r'^\{(?P<matchers>[^}]*)\}\s*(?:\|=\s*"(?P<needle>[^"]*)")?\s*$')
_MATCHER = re.compile(r'\s*(\w+)\s*=\s*"([^"]*)"\s*')


@dataclass
class LokiReceiver:
    """Streams pushed to ``/loki/api/v1/push`` (JSON), kept as Loki would keep them.

    ``refuse`` makes pushes answer 400 (lines Loki will not take), to exercise the handler's
    drop accounting.
    """

    url: str = ""
    entries: list[tuple[dict[str, str], int, str]] = field(default_factory=list)
    pushes: int = 0
    refused: int = 0
    refuse: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, body: dict[str, Any]) -> None:
        with self.lock:
            self.pushes += 1
            for stream in body["streams"]:
                labels = {str(k): str(v) for k, v in stream["stream"].items()}
                for ts, line in stream["values"]:
                    self.entries.append((labels, int(ts), str(line)))

    def query(self, logql: str) -> list[dict[str, Any]]:
        """``{k="v",...} |= "text"``: matching streams in Loki's ``query_range`` result shape."""
        match = _SELECTOR.match(logql.strip())
        if match is None:
            raise ValueError(f"unsupported LogQL: {logql}")
        wanted = dict(_MATCHER.findall(match["matchers"]))
        needle = match["needle"]
        streams: dict[tuple[tuple[str, str], ...], list[list[str]]] = {}
        with self.lock:
            for labels, ts, line in self.entries:
                if all(labels.get(k) == v for k, v in wanted.items()) and (not needle or needle in line):
                    streams.setdefault(tuple(sorted(labels.items())), []).append([str(ts), line])
        return [{"stream": dict(key), "values": values} for key, values in streams.items()]


@contextmanager
def loki_receiver() -> Iterator[LokiReceiver]:
    """A Loki push receiver with ``GET /loki/api/v1/query_range`` on a free port for the block."""
    receiver = LokiReceiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            ok = self.path == "/loki/api/v1/push" and self.headers["content-type"] == "application/json"
            if ok and receiver.refuse:
                with receiver.lock:
                    receiver.refused += 1
                self._answer(400, {"message": "refused by the test"})
                return
            if ok:
                receiver.add(json.loads(body))
            self._answer(204 if ok else 400, None)

        def do_GET(self) -> None:
            parts = urllib.parse.urlsplit(self.path)
            if parts.path != "/loki/api/v1/query_range":
                self._answer(404, {"message": "not found"})
                return
            query = urllib.parse.parse_qs(parts.query).get("query", [""])[0]
            try:
                result = receiver.query(query)
            except ValueError as error:
                self._answer(400, {"message": str(error)})
                return
            self._answer(200, {"status": "success", "data": {"resultType": "streams", "result": result}})

        def _answer(self, status: int, payload: dict[str, Any] | None) -> None:
            data = json.dumps(payload).encode() if payload is not None else b""
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    with _serving(Handler) as url:
        receiver.url = url
        yield receiver
