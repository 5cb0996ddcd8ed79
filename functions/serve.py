"""Serve the functions locally like ``chalice local``, with true incremental SSE.

``python -m functions.serve --port 8000`` loads the app and its stage config exactly as
``chalice local`` does and runs Chalice's own ``LocalDevServer``; only the handler differs: a body
that is an iterator is written with chunked transfer encoding, one chunk per event, flushed at once.
When the client disconnects, the iterator is closed, which cancels the upstream request.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import socket
import sys
from collections.abc import Iterator
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
    drops a burst of new connections)."""

    request_queue_size = socket.SOMAXCONN


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--stage", default="dev")
    args = parser.parse_args(argv)
    server = make_server(args.host, args.port, args.stage)
    warm_up()
    print(f"Serving on http://{args.host}:{args.port}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
