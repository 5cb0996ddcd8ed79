"""Serve the functions locally like ``chalice local``, with true incremental SSE.

``python -m functions.serve --port 8000`` loads the app and its stage config exactly as
``chalice local`` does and runs Chalice's own ``LocalDevServer``; only the handler differs: a body
that is an iterator is written with chunked transfer encoding, one chunk per event, flushed at once.
When the client disconnects, the iterator is closed, which cancels the upstream request.

Whatever reaches the socket is answered in the API's one error shape, with a trace id: an unknown
route is a 404 (Chalice's gateway answers 403 and echoes the Authorization header into a body it
builds by hand), and a malformed request line or header, a bad Content-Length, a repeated
Authorization or a bare CR is refused before the app runs; a failure while answering is logged, never
written to the client or printed as a traceback.

It serves from one process per CPU (``PRESSLINE_SERVE_WORKERS``; see :mod:`functions.prefork`),
with Prometheus in multiprocess mode so ``/metrics`` sums them all, and from one process when the
response cache keeps its semantic layer in an embedded store, which only one process can open.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from chalice.cli.factory import CLIFactory
from chalice.deploy.validate import validate_routes
from chalice.local import (
    ChaliceRequestHandler,
    CustomLocalChalice,
    LocalChalice,
    LocalDevServer,
    LocalGateway,
    LocalGatewayException,
    ThreadedHTTPServer,
)
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from shared.api.errors import STATUS_CODES, error_body
from shared.api.streaming import enable_incremental
from shared.api.trace_context import inbound_context, outbound_headers
from shared.config import Settings

from .prefork import Prefork

PROJECT_DIR = Path(__file__).resolve().parent
logger = logging.getLogger("pressline.functions.serve")


#: API Gateway's own payload limit: a larger Content-Length is refused before a byte of it is read.
MAX_BODY_BYTES = 10 * 1024 * 1024
#: All header lines together (http.server caps each line at 64 KiB and their number at 100).
MAX_HEADER_BYTES = 64 * 1024
#: Headers that count once: with two, which one the app would read is a guess (and a smuggling vector).
SINGLE_HEADERS = frozenset(
    {
        "authorization",
        "x-api-key",
        "content-length",
        "content-type",
        "transfer-encoding",
        "host",
        "idempotency-key",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "x-pressline-job-id",
    }
)
#: A control character other than HTAB inside a header line (after its line end is cut off).
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
#: What the client is told for each status this module answers itself: never the input echoed.
_MESSAGES = {
    400: "the request is malformed",
    404: "there is no such route",
    411: "send the body with a Content-Length (chunked request bodies are not accepted)",
    413: f"the body is larger than {MAX_BODY_BYTES} bytes",
    414: "the request line is too long",
    431: "the request's headers are too large",
    500: "an internal error occurred",
    501: "this method is not supported",
    505: "this HTTP version is not supported",
}


class RouteNotFound(LocalGatewayException):
    CODE = 404


class Gateway(LocalGateway):
    """API Gateway as Chalice fakes it, except that an unknown route is a plain 404: Chalice's 403
    pastes the Authorization header into a JSON body by hand (a crafted token adds keys to it, and
    a non-ASCII one raises before anything is answered)."""

    def _generate_lambda_event(self, method: str, path: str, headers: Any, body: bytes | None) -> Any:
        try:
            return super()._generate_lambda_event(method, path, headers, body)
        except ValueError:  # no route matches (or the path does not even parse as one)
            raise RouteNotFound({}) from None


class _HeaderTap:
    """The handler's input while the request's head is read: keeps each line, so the raw bytes can be
    checked (the email parser behind ``self.headers`` splits a bare CR into a second header)."""

    def __init__(self, rfile: Any) -> None:
        self.rfile = rfile
        self.lines: list[bytes] = []

    def readline(self, size: int = -1) -> bytes:
        line: bytes = self.rfile.readline(size)
        self.lines.append(line)
        return line

    def __getattr__(self, name: str) -> Any:
        return getattr(self.rfile, name)


def error_code(status: int) -> str:
    """The error shape's ``code`` for a status: the API's own where it has one, else HTTP's phrase."""
    if status in STATUS_CODES:
        return STATUS_CODES[status]
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        return "error"
    return re.sub(r"[^a-z0-9]+", "_", phrase.lower()).strip("_")


class StreamingRequestHandler(ChaliceRequestHandler):
    """Chalice's local request handler, writing iterator bodies as they are produced, and answering
    everything it refuses itself in the API's one error shape.

    Nagle's algorithm is off (TCP_NODELAY): with it, a small event written right after the headers
    waits for the client's delayed ACK, about 40 ms on every keep-alive request.
    """

    disable_nagle_algorithm = True
    _header_lines: list[bytes]
    _responded = False

    def __init__(self, request: Any, client_address: Any, server: Any, app_object: Any, config: Any) -> None:
        # Chalice's __init__ with our gateway: the request is served inside BaseHTTPRequestHandler's.
        self.local_gateway = Gateway(app_object, config)
        BaseHTTPRequestHandler.__init__(self, request, client_address, server)

    def log_message(self, format: str, *args: Any) -> None:
        """The app logs each request as a JSON line with its trace id; not a second plain one."""
        logger.debug(format, *args)

    def handle_one_request(self) -> None:
        self.__dict__.pop("headers", None)  # a refused request line must not reuse the last request's
        super().handle_one_request()

    def parse_request(self) -> bool:
        handler: Any = self  # (typeshed's attribute types are not inferred through Chalice's class)
        tap = _HeaderTap(handler.rfile)
        handler.rfile = tap
        self._header_lines = tap.lines
        self._responded = False
        try:
            return super().parse_request()
        finally:
            handler.rfile = tap.rfile

    def send_response(self, code: int, message: str | None = None) -> None:
        self._responded = True
        super().send_response(code, message)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (request line, header lines, method), as JSON; its message
        quotes the request line, so it is not used."""
        self.close_connection = True
        self._send_error(code)

    def _generic_handle(self) -> None:
        refusal = self._refusal()
        if refusal is not None:
            self.close_connection = True  # any body was not read: the connection cannot be reused
            self._send_error(*refusal)
            return
        try:
            super()._generic_handle()
        except OSError as e:  # the client went away while being answered
            logger.debug("the client went away: %s", type(e).__name__)
            self.close_connection = True
        except Exception:
            logger.exception("the local server failed to answer a request")
            self.close_connection = True
            if not self._responded:
                self._send_error(500)

    # Chalice binds these to its own _generic_handle: bound again here, to this class's.
    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = do_PATCH = do_OPTIONS = _generic_handle

    def _refusal(self) -> tuple[int, str] | None:
        """Why the request's head is refused (status and message), or None."""
        lines = self._header_lines  # the request line was read before: these are the header lines
        if sum(map(len, lines)) > MAX_HEADER_BYTES:
            return 431, _MESSAGES[431]
        for line in lines:
            content = line.rstrip(b"\r\n") if line.endswith(b"\r\n") else line.rstrip(b"\n")
            if _CONTROL.search(content):
                return 400, "a header has a control character (a bare CR, LF or NUL)"
            if content[:1] in (b" ", b"\t"):
                return 400, "a header is folded over two lines"
        if self.headers.defects:
            return 400, "a header line is malformed"
        names = [name.lower() for name in self.headers]
        for name in SINGLE_HEADERS.intersection(names):
            if names.count(name) > 1:
                return 400, f"the {name} header is sent more than once"
        if "transfer-encoding" in names:
            return 411, _MESSAGES[411]
        length = self.headers.get("content-length")
        if length is not None:
            if not (length.isascii() and length.isdigit()):
                return 400, "Content-Length is not a number"
            if int(length) > MAX_BODY_BYTES:
                return 413, _MESSAGES[413]
        return None

    def _send_error_response(self, error: LocalGatewayException) -> None:
        """The gateway's refusals (an unknown route) in the one shape; its own body is dropped."""
        self._send_error(error.CODE)

    def _send_error(self, status: int, message: str | None = None) -> None:
        """The one error shape with a trace id (continuing the caller's trace when it sent one),
        logged under it like the app's own answers."""
        handler: Any = self
        if handler.request_version == "HTTP/0.9":
            handler.request_version = "HTTP/1.0"  # so the status line and headers are written
        headers = getattr(self, "headers", None)
        context = inbound_context(dict(headers.items())) if headers is not None else None
        tracer = trace.get_tracer("pressline.functions.serve")
        method = (self.command or "-")[:16]
        with tracer.start_as_current_span(
            f"{method} (gateway)", context=context, kind=SpanKind.SERVER
        ) as span:
            trace_id = format(span.get_span_context().trace_id, "032x")
            if not span.get_span_context().is_valid:
                trace_id = uuid.uuid4().hex  # no tracer provider configured
            span.set_attribute("http.response.status_code", status)
            logger.info(
                "%s %s %d",
                method,
                "(gateway)",
                status,
                extra={"http_method": method, "route": "(gateway)", "status": status},
            )
            body = error_body(
                error_code(status),
                message or _MESSAGES.get(status, "the request was refused"),
                trace_id=trace_id,
            )
            payload = json.dumps(body, separators=(",", ":")).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("X-Trace-Id", trace_id)
            for name, value in outbound_headers(span).items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

    def _send_http_response_with_body(self, code: int, headers: dict[str, Any], body: Any) -> None:
        if isinstance(body, str | bytes):
            super()._send_http_response_with_body(code, headers, body)
            return
        self.send_response(code)
        self.send_header("Content-Type", headers.pop("Content-Type", "text/event-stream"))
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache")
        self._send_headers(headers)
        self.wfile.flush()
        chunks: Iterator[bytes] = body
        send = self.connection.sendall  # the socket itself: wfile is unbuffered here, one write per chunk
        try:
            for chunk in chunks:
                if chunk:
                    send(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            send(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away; closing the iterator cancels upstream
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()


class StreamingServer(ThreadedHTTPServer):
    """Chalice's threaded local server with a real listen backlog (Python's default is 5, which
    drops a burst of new connections), whose accepted sockets block even when the listening one
    does not (a pre-forked server's is non-blocking)."""

    request_queue_size = socket.SOMAXCONN

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = self.socket.accept()
        connection.setblocking(True)
        return connection, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that failed outside any answer (the client reset it mid-request): logged as
        one line, not a traceback on stderr per connection."""
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            logger.debug("a connection failed: %s", type(error).__name__)
        else:
            logger.exception("a connection failed")


def make_server(host: str, port: int, stage: str = "dev") -> LocalDevServer:
    factory = CLIFactory(project_dir=str(PROJECT_DIR))
    config = factory.create_config_obj(chalice_stage_name=stage)
    app = config.chalice_app  # loaded with the stage's environment variables, as `chalice local` does
    validate_routes(app.routes)
    CustomLocalChalice.__bases__ = (LocalChalice, app.__class__)
    app.__class__ = CustomLocalChalice
    enable_incremental()
    return LocalDevServer(
        app, config, host, port, handler_cls=StreamingRequestHandler, server_cls=StreamingServer
    )


def warm_up() -> None:
    """Build the app's services now, then move everything alive into the collector's permanent
    generation: a full collection then walks only what requests allocate, so it no longer pauses
    the server for the whole heap (tens of ms) in the middle of a burst of requests."""
    build = getattr(sys.modules.get("app"), "services", None)  # chalice loads functions/app.py as "app"
    if callable(build):
        build()
    gc.collect()
    gc.freeze()


def serving_processes(settings: Settings, requested: int | None = None) -> int:
    """How many processes serve: as requested, else one per CPU; one when the semantic cache's
    store is embedded (only one process can open it; QDRANT_URL lifts that)."""
    workers = settings.serve_workers if requested is None else requested
    workers = workers or os.cpu_count() or 1
    if workers > 1 and settings.cache_enabled and settings.cache_semantic and not settings.qdrant_url:
        logger.warning("serving from one process: the semantic cache's embedded store is single-process")
        return 1
    return workers


def multiprocess_metrics() -> str:
    """A fresh directory for prometheus_client's multiprocess files, in the environment the
    children inherit; set before any metric exists."""
    path = tempfile.mkdtemp(prefix="pressline-serve-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    values = sys.modules.get("prometheus_client.values")
    if values is not None:  # imported before the variable was set: choose multiprocess mode now
        values.ValueClass = values.get_value_class()  # type: ignore[attr-defined]
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--stage", default="dev")
    parser.add_argument(
        "--workers", type=int, default=None, help="processes (default: PRESSLINE_SERVE_WORKERS; 0: per CPU)"
    )
    args = parser.parse_args(argv)
    workers = serving_processes(Settings.from_env(), args.workers)
    if workers == 1:
        server = make_server(args.host, args.port, args.stage)
        warm_up()
        print(f"Serving on http://{args.host}:{args.port}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()
        return 0
    metrics_dir = multiprocess_metrics()
    try:
        server = make_server(args.host, args.port, args.stage)  # the app is imported after the above
        prefork = Prefork(server.server, workers, boot=warm_up, on_exit=_metrics_cleanup(metrics_dir))
        print(f"Serving on http://{args.host}:{args.port} ({workers} processes)", flush=True)
        return prefork.run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _metrics_cleanup(path: str) -> Callable[[int], None]:
    from prometheus_client import multiprocess

    return lambda pid: multiprocess.mark_process_dead(pid, path)


if __name__ == "__main__":
    sys.exit(main())
