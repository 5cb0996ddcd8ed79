"""Lambda's Runtime API, emulated for the streaming runtime's tests (real HTTP, real sockets).

Hands out queued invocations on ``GET .../invocation/next`` and reads each streamed response
(``Transfer-Encoding: chunked``) chunk by chunk, recording when each chunk arrived, so a test can
tell a streamed body from a buffered one.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from shared.api.function_url import PRELUDE_END

PREFIX = "/2018-06-01/runtime/"


@dataclass
class Outcome:
    """What the runtime posted for one invocation."""

    headers: dict[str, str] = field(default_factory=dict)
    chunks: list[tuple[float, bytes]] = field(default_factory=list)  # (arrival, data)
    error: dict[str, Any] | None = None
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def raw(self) -> bytes:
        return b"".join(data for _, data in self.chunks)

    @property
    def prelude(self) -> dict[str, Any]:
        head, _, _ = self.raw.partition(PRELUDE_END)
        return dict(json.loads(head))

    @property
    def body(self) -> bytes:
        return self.raw.partition(PRELUDE_END)[2]


class RuntimeApiEmulator:
    def __init__(self) -> None:
        self.pending: queue.Queue[tuple[str, dict[str, Any], str | None]] = queue.Queue()
        self.outcomes: dict[str, Outcome] = {}
        self.address = ""

    def invoke(self, event: dict[str, Any], trace_id: str | None = None, timeout_s: float = 30) -> Outcome:
        """Queue an invocation and wait until its response has been posted."""
        request_id = str(uuid.uuid4())
        outcome = self.outcomes[request_id] = Outcome()
        self.pending.put((request_id, event, trace_id))
        assert outcome.done.wait(timeout_s), "the runtime did not answer in time"
        return outcome


def _handler(api: RuntimeApiEmulator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            assert self.path == PREFIX + "invocation/next", self.path
            request_id, event, trace_id = api.pending.get()
            headers = {
                "Lambda-Runtime-Aws-Request-Id": request_id,
                "Lambda-Runtime-Deadline-Ms": str(int(time.time() * 1000) + 300_000),
                "Lambda-Runtime-Invoked-Function-Arn": "arn:aws:lambda:us-east-1:000000000000:function:f",
            }
            if trace_id:
                headers["Lambda-Runtime-Trace-Id"] = trace_id
            self._reply(200, json.dumps(event).encode(), headers)

        def do_POST(self) -> None:
            request_id, _, kind = self.path.removeprefix(PREFIX + "invocation/").partition("/")
            outcome = api.outcomes[request_id]
            outcome.headers = {k.lower(): v for k, v in self.headers.items()}
            if kind == "error":
                outcome.error = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            elif self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    if size == 0:
                        self.rfile.readline()  # the empty trailer section
                        break
                    data = self.rfile.read(size)
                    self.rfile.readline()
                    outcome.chunks.append((time.monotonic(), data))
            else:
                data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outcome.chunks.append((time.monotonic(), data))
            self._reply(202, b'{"status":"OK"}')
            outcome.done.set()

    return Handler


@contextmanager
def runtime_api() -> Iterator[RuntimeApiEmulator]:
    api = RuntimeApiEmulator()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(api))
    server.daemon_threads = True
    api.address = f"127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()
