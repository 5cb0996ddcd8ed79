"""Serve the functions locally like ``chalice local``, with true incremental SSE.

``python -m functions.serve --port 8000`` loads the app and its stage config exactly as
``chalice local`` does and runs Chalice's own ``LocalDevServer``; only the handler differs: a body
that is an iterator is written with chunked transfer encoding, one chunk per event, flushed at once.
When the client disconnects, the iterator is closed, which cancels the upstream request.

It serves from one process per CPU (``PRESSLINE_SERVE_WORKERS``; see :mod:`functions.prefork`),
with Prometheus in multiprocess mode so ``/metrics`` sums them all, and from one process when the
response cache keeps its semantic layer in an embedded store, which only one process can open.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from chalice.cli.factory import CLIFactory
from chalice.deploy.validate import validate_routes
from chalice.local import (
    ChaliceRequestHandler,
    CustomLocalChalice,
    LocalChalice,
    LocalDevServer,
    ThreadedHTTPServer,
)

from shared.api.streaming import enable_incremental
from shared.config import Settings

from .prefork import Prefork

PROJECT_DIR = Path(__file__).resolve().parent
logger = logging.getLogger("pressline.functions.serve")


class StreamingRequestHandler(ChaliceRequestHandler):
    """Chalice's local request handler, writing iterator bodies as they are produced.

    Nagle's algorithm is off (TCP_NODELAY): with it, a small event written right after the headers
    waits for the client's delayed ACK, about 40 ms on every keep-alive request.
    """

    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        """The app logs each request as a JSON line with its trace id; not a second plain one."""
        logger.debug(format, *args)

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
