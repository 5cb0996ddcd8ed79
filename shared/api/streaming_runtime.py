"""A Lambda runtime loop for the Chalice app that streams its responses (server-sent events).

AWS's managed Python runtime returns a whole response; Lambda itself can stream one (a function
URL with invoke mode ``RESPONSE_STREAM``) when the runtime posts the response to the Runtime API
in streaming mode. This module is that runtime, on the same ``python3.11`` image: the function's
``AWS_LAMBDA_EXEC_WRAPPER`` (``pressline-streaming-runtime`` at the root of the deployment zip)
starts ``python -m shared.api.streaming_runtime`` instead of the managed loop. Each invocation's
function URL event becomes the REST event Chalice expects (:mod:`shared.api.function_url`), the
app answers it, and the body goes to the Runtime API chunk by chunk as the app yields it.

Runtime API: https://docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html (``next``,
``response`` with ``Lambda-Runtime-Function-Response-Mode: streaming``, ``error``, ``init/error``).
"""

from __future__ import annotations

import contextlib
import http.client
import importlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .function_url import CONTENT_TYPE, NoRoute, Routes, error_response, response_stream, rest_event
from .streaming import enable_incremental

logger = logging.getLogger("pressline.runtime")

API_VERSION = "2018-06-01"
App = Callable[[dict[str, Any], Any], dict[str, Any]]


@dataclass(frozen=True)
class Invocation:
    request_id: str
    event: dict[str, Any]
    deadline_ms: int
    trace_id: str | None
    function_arn: str


class LambdaContext:
    """The context object Chalice hands to views (``app.lambda_context``)."""

    def __init__(self, invocation: Invocation) -> None:
        self.aws_request_id = invocation.request_id
        self.invoked_function_arn = invocation.function_arn
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "")
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.memory_limit_in_mb = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "")
        self.log_group_name = os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME", "")
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME", "")
        self._deadline_ms = invocation.deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self._deadline_ms - int(time.time() * 1000))


class RuntimeApi:
    """Lambda's Runtime API at ``address`` (``AWS_LAMBDA_RUNTIME_API``, host:port)."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.host, self.port = host, int(port)

    def _connection(self, timeout: float | None = None) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)  # sets TCP_NODELAY

    def next(self) -> Invocation:
        """Wait (without a timeout: Lambda freezes the process here) for the next event."""
        conn = self._connection()
        try:
            conn.request("GET", f"/{API_VERSION}/runtime/invocation/next")
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(f"runtime API: next answered {response.status}")
            return Invocation(
                request_id=response.headers["Lambda-Runtime-Aws-Request-Id"],
                event=json.loads(body),
                deadline_ms=int(response.headers.get("Lambda-Runtime-Deadline-Ms") or 0),
                trace_id=response.headers.get("Lambda-Runtime-Trace-Id"),
                function_arn=response.headers.get("Lambda-Runtime-Invoked-Function-Arn", ""),
            )
        finally:
            conn.close()

    def stream(self, request_id: str, chunks: Iterator[bytes]) -> None:
        """Post the response in streaming mode: each chunk is written when it is produced."""
        conn = self._connection()
        try:
            conn.request(
                "POST",
                f"/{API_VERSION}/runtime/invocation/{request_id}/response",
                body=chunks,
                headers={
                    "Lambda-Runtime-Function-Response-Mode": "streaming",
                    "Content-Type": CONTENT_TYPE,
                },
                encode_chunked=True,
            )
            conn.getresponse().read()
        finally:
            conn.close()

    def fail(self, request_id: str | None, error_type: str, message: str) -> None:
        """Report an invocation (or, without ``request_id``, the initialisation) as failed."""
        path = f"invocation/{request_id}/error" if request_id else "init/error"
        conn = self._connection(timeout=10)
        try:
            body = json.dumps({"errorType": error_type, "errorMessage": message})
            conn.request(
                "POST",
                f"/{API_VERSION}/runtime/{path}",
                body=body,
                headers={"Lambda-Runtime-Function-Error-Type": error_type},
            )
            conn.getresponse().read()
        finally:
            conn.close()


def answer(app: App, routes: Routes, invocation: Invocation) -> Iterator[bytes]:
    """The app's response to one invocation, as an HTTP-integration response stream."""
    try:
        event = rest_event(invocation.event, routes)
    except NoRoute:
        yield from response_stream(error_response(404, "not_found", "there is no such route"))
        return
    if invocation.trace_id:
        os.environ["_X_AMZN_TRACE_ID"] = invocation.trace_id  # what the managed runtime sets
        event["headers"].setdefault("x-amzn-trace-id", invocation.trace_id)
    chunks = response_stream(app(event, LambdaContext(invocation)))
    try:
        yield from chunks
    finally:
        chunks.close()  # a client that went away: closing the body cancels its upstream request


def serve(app: App, routes: Routes, api: RuntimeApi, *, invocations: int | None = None) -> None:
    """Answer invocations until the process is frozen for good (or after ``invocations``)."""
    served = 0
    while invocations is None or served < invocations:
        invocation = api.next()
        try:
            api.stream(invocation.request_id, answer(app, routes, invocation))
        except Exception as e:  # the stream broke: the client sees it end; the log says why
            logger.exception("streamed response failed", extra={"request_id": invocation.request_id})
            with contextlib.suppress(Exception):
                api.fail(invocation.request_id, type(e).__name__, "the response stream failed")
        served += 1


def load_app(module_name: str) -> tuple[App, Routes]:
    """Import the Chalice app (``app.app``) and its routes; responses stream from here on."""
    enable_incremental()
    module = importlib.import_module(module_name)
    app = module.app
    return app, Routes(app.routes)


def main(argv: list[str] | None = None) -> int:
    """``python -m shared.api.streaming_runtime [MODULE]`` (default ``app``), inside Lambda."""
    args = sys.argv[1:] if argv is None else argv
    # Lambda's own contract, not Pressline's configuration: where the Runtime API and the code are.
    api = RuntimeApi(os.environ["AWS_LAMBDA_RUNTIME_API"])
    sys.path.insert(0, os.environ.get("LAMBDA_TASK_ROOT", os.getcwd()))
    try:
        app, routes = load_app(args[0] if args else "app")
    except Exception as e:
        api.fail(None, type(e).__name__, "the app failed to load")
        raise
    serve(app, routes, api)
    return 0


if __name__ == "__main__":
    sys.exit(main())
