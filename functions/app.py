"""Pressline's API Gateway functions (AWS Chalice).

Routes are thin: they take the request apart, call one service function in ``shared.api`` and
shape its answer.  One HTTP middleware continues the caller's trace, turns every error into the
one JSON error shape and stamps the trace id on every response.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import uuid
from collections.abc import Callable
from functools import cache
from typing import Any, cast

import redis
from chalice import Chalice, Response
from chalice.app import Request
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY

from shared.api.errors import STATUS_CODES, ApiError, error_body
from shared.api.function_url import buffered
from shared.api.responses import ApiResponse
from shared.api.services import Services
from shared.api.streaming import StreamingResponse
from shared.api.trace_context import inbound_context, outbound_headers
from shared.config import Settings
from shared.proxy.service import StreamingResult
from shared.telemetry.exposition import exposition
from shared.telemetry.logging import configure_logging
from shared.telemetry.tracing import configure_tracing

app = Chalice(app_name="pressline", configure_logs=False)  # logging is ours (JSON, redacted)
log = logging.getLogger("pressline.functions")
JSON = "application/json"


_services: Services | None = None
_services_lock = threading.Lock()


def services() -> Services:
    """Built once, on the first request, then reused for the life of the process (Lambda container).

    The middleware calls it before it opens the request's span, so even the first request of a
    process is traced by the configured provider.
    """
    global _services
    if _services is None:
        with _services_lock:
            if _services is None:
                settings = Settings.from_env()
                configure_logging(settings)
                provider = configure_tracing(settings)
                trace.set_tracer_provider(provider)
                _services = Services.from_settings(settings, provider)
    return _services


def reset_services() -> None:
    """Forget the built services (tests that change the environment between apps)."""
    global _services
    with _services_lock:
        _services = None


# -- routes -------------------------------------------------------------------------------------


def answers_errors(view: Callable[..., Response]) -> Callable[..., Response]:
    """Answer ApiError, and an unreachable broker, in the one error shape (Chalice would say 500)."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Response:
        try:
            return view(*args, **kwargs)
        except ApiError as e:
            return _error_response(e.status, e.code, e.message, _trace_id(), e.details, e.headers)
        except redis.RedisError:
            log.exception("the broker is unreachable")
            return _error_response(503, "unavailable", "the service is unavailable; retry later", _trace_id())

    return wrapper


@app.route("/v1/jobs", methods=["POST"], content_types=[JSON])
@answers_errors
def create_job() -> Response:
    request = _request()
    return _respond(
        services().jobs.create(
            authorization=request.headers.get("authorization"),
            content_type=request.headers.get("content-type"),
            idempotency_key=request.headers.get("idempotency-key"),
            body=_raw(request),
        )
    )


@app.route("/v1/jobs/{job_id}", methods=["GET"])
@answers_errors
def get_job(job_id: str) -> Response:
    return _respond(services().jobs.get(authorization=_request().headers.get("authorization"), job_id=job_id))


@app.route("/v1/webhooks/wordpress/{site}", methods=["POST"], content_types=[JSON])
@answers_errors
def wordpress_webhook(site: str) -> Response:
    request = _request()
    return _respond(services().webhooks.receive(site, dict(request.headers), _raw(request)))


@app.route("/v1/chat/completions", methods=["POST"], content_types=[JSON])
@answers_errors
def chat_completions() -> Response:
    """OpenAI-compatible; streams when the body says ``"stream": true``."""
    request = _request()
    return _respond(services().proxy.chat_completions(**_proxy_args(request)))


@app.route("/v1/messages", methods=["POST"], content_types=[JSON])
@answers_errors
def messages() -> Response:
    """Anthropic-compatible; streams when the body says ``"stream": true``."""
    request = _request()
    return _respond(services().proxy.messages(**_proxy_args(request)))


@app.route("/v1/models", methods=["GET"])
@answers_errors
def models() -> Response:
    return _respond(services().proxy.models(authorization=_bearer(_request())))


@app.route("/v1/costs", methods=["GET"])
@answers_errors
def costs() -> Response:
    """The tenant's spend today and this month, its budgets, and its latest ledger entries."""
    request = _request()
    # (no annotated locals here: Chalice's IAM policy analyzer cannot read them)
    count = cast("dict[str, str]", request.query_params or {}).get("count")
    return _respond(services().costs.summary(authorization=_bearer(request), count=count))


@app.route("/v1/costs/requests/{request_id}", methods=["GET"])
@answers_errors
def request_cost(request_id: str) -> Response:
    """What one proxied request cost (``x-pressline-request-id`` of its response), over all attempts."""
    return _respond(services().costs.request(authorization=_bearer(_request()), request_id=request_id))


@app.route("/v1/prompts", methods=["GET"])
@answers_errors
def list_prompts() -> Response:
    return _respond(services().prompts.list(authorization=_bearer(_request())))


@app.route("/v1/prompts", methods=["POST"], content_types=[JSON])
@answers_errors
def create_prompt() -> Response:
    request = _request()
    return _respond(
        services().prompts.create(
            authorization=_bearer(request),
            content_type=request.headers.get("content-type"),
            body=_raw(request),
        )
    )


@app.route("/v1/prompts/{name}", methods=["GET"])
@answers_errors
def get_prompt(name: str) -> Response:
    return _respond(services().prompts.get(authorization=_bearer(_request()), name=name))


@app.route("/v1/prompts/{name}/versions", methods=["POST"], content_types=[JSON])
@answers_errors
def publish_prompt(name: str) -> Response:
    """A new version, made current; the prompt's cached answers are purged."""
    request = _request()
    return _respond(
        services().prompts.publish(
            authorization=_bearer(request),
            name=name,
            content_type=request.headers.get("content-type"),
            body=_raw(request),
        )
    )


@app.route("/v1/prompts/{name}/rollback", methods=["POST"], content_types=[JSON])
@answers_errors
def rollback_prompt(name: str) -> Response:
    """Make an earlier version current again; the prompt's cached answers are purged."""
    request = _request()
    return _respond(
        services().prompts.rollback(
            authorization=_bearer(request),
            name=name,
            content_type=request.headers.get("content-type"),
            body=_raw(request),
        )
    )


@app.route("/metrics", methods=["GET"])
def metrics() -> Response:
    """Prometheus exposition: the proxy's and cache's metrics (the services' registry) and the
    process-wide ones (webhook intake, log shipping, process) — of every process when the server is
    pre-forked; scraped on the private network."""
    built = services()
    return Response(
        body=exposition(built.registry, REGISTRY, multiprocess_dir=built.metrics_dir).decode(),
        status_code=200,
        headers={"Content-Type": CONTENT_TYPE_LATEST},
    )


@app.route("/v1/openapi.json", methods=["GET"])
def openapi() -> Response:
    return Response(body=_openapi_document(), status_code=200, headers={"Content-Type": JSON})


@app.lambda_function(name="stream")
def stream(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The same routes behind a Lambda function URL (invoke mode RESPONSE_STREAM).

    Deployed with ``pressline-streaming-runtime`` as its exec wrapper, whose runtime loop answers
    each event and streams the body (shared/api/streaming_runtime.py); this handler is the buffered
    fallback where that wrapper does not run.
    """
    return buffered(app, event, context)


# -- plumbing -----------------------------------------------------------------------------------


def _request() -> Request:
    request = app.current_request
    assert request is not None
    return request


def _raw(request: Request) -> bytes:
    """The body exactly as sent (signatures are computed over these bytes)."""
    body = request.raw_body
    return body.encode() if isinstance(body, str) else body


def _bearer(request: Request) -> str | None:
    """The API token: ``Authorization: Bearer``, or ``x-api-key`` as Anthropic's SDK sends it."""
    authorization = request.headers.get("authorization")
    if authorization:
        return authorization
    api_key = request.headers.get("x-api-key")
    return f"Bearer {api_key}" if api_key else None


def _proxy_args(request: Request) -> dict[str, Any]:
    return {
        "authorization": _bearer(request),
        "content_type": request.headers.get("content-type"),
        "body": _raw(request),
        "route_key": request.headers.get("x-pressline-route-key"),
        "job_id": request.headers.get("x-pressline-job-id"),
        "cache_control": request.headers.get("cache-control"),
        "cache_mode": request.headers.get("x-pressline-cache"),
    }


def _respond(result: ApiResponse | StreamingResult) -> Response:
    if isinstance(result, StreamingResult):
        return StreamingResponse(result.chunks, 200, result.headers)
    return _respond_json(result)


def _respond_json(result: ApiResponse) -> Response:
    return Response(
        body=result.body, status_code=result.status, headers={"Content-Type": JSON, **result.headers}
    )


@cache
def _openapi_document() -> str:
    from shared.api.openapi import document

    return json.dumps(document())


@app.middleware("http")
def envelope(event: Request, get_response: Callable[[Request], Response]) -> Response:
    """Trace, error shape and trace id for every request."""
    try:
        return _enveloped(event, get_response)
    except Exception:  # outside the route (building the services, tracing): still the one shape
        log.exception("a request failed outside its route")
        trace_id = uuid.uuid4().hex
        response = _error_response(500, "internal_error", "an internal error occurred", trace_id)
        response.headers["X-Trace-Id"] = trace_id
        return response


def _enveloped(event: Request, get_response: Callable[[Request], Response]) -> Response:
    services()
    tracer = trace.get_tracer("pressline.functions")
    route = event.context.get("resourcePath", event.path)
    with tracer.start_as_current_span(
        f"{event.method} {route}",
        context=inbound_context(event.headers),
        kind=SpanKind.SERVER,
        attributes={"http.request.method": event.method, "http.route": route},
    ) as span:
        trace_id = format(span.get_span_context().trace_id, "032x")
        response = _uniform(get_response(event), trace_id)
        span.set_attribute("http.response.status_code", response.status_code)
        if response.status_code >= 500:
            span.set_status(Status(StatusCode.ERROR))
        # One access line per request, under its span (so it carries the trace id); scrapes at debug.
        log.log(
            logging.DEBUG if route == "/metrics" else logging.INFO,
            "%s %s %d",
            event.method,
            route,
            response.status_code,
            extra={"http_method": event.method, "route": route, "status": response.status_code},
        )
        response.headers["X-Trace-Id"] = trace_id
        response.headers.update(outbound_headers(span))  # traceparent and X-Amzn-Trace-Id
        return response


def _trace_id() -> str:
    return format(trace.get_current_span().get_span_context().trace_id, "032x")


def _error_response(
    status: int,
    code: str,
    message: str,
    trace_id: str,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body = error_body(code, message, trace_id=trace_id, details=details)
    return Response(body=body, status_code=status, headers={"Content-Type": JSON, **(headers or {})})


def _uniform(response: Response, trace_id: str) -> Response:
    """Rewrite Chalice's own error bodies ({"Code", "Message"}) into the API's one error shape."""
    if response.status_code < 400:
        return response
    body = response.body
    if isinstance(body, dict) and "error" in body:
        return response
    code = STATUS_CODES.get(response.status_code, "error")
    message = {
        405: "this method is not allowed here",
        415: "send the body as application/json",
        500: "an internal error occurred",
    }.get(response.status_code, code.replace("_", " "))
    headers = {k: str(v) for k, v in response.headers.items() if k.lower() in ("allow", "retry-after")}
    return _error_response(response.status_code, code, message, trace_id, headers=headers)
