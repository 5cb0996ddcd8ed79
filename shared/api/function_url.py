"""A Lambda function URL's request, as the Chalice app's REST event; its response, as a stream.

A function URL (payload format 2.0) gives no route: API Gateway's REST integration is what tells
Chalice which route matched (``resourcePath``) and the captured path parameters. :class:`Routes`
does that matching against the app's own routes, the way API Gateway and ``chalice local`` do.
With invoke mode ``RESPONSE_STREAM`` the response is an HTTP-integration stream: a JSON prelude
(status, headers, cookies), eight NUL bytes, then the body, which may be written chunk by chunk.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from .errors import error_body

#: Separates the prelude from the body in an HTTP-integration response stream.
PRELUDE_END = b"\x00" * 8
CONTENT_TYPE = "application/vnd.awslambda.http-integration-response"


class NoRoute(Exception):
    """No route of the app matches the path."""


@dataclass(frozen=True)
class Match:
    route: str
    captured: dict[str, str]


class Routes:
    """The app's route templates (``/v1/jobs/{job_id}``), literal ones tried before captures."""

    def __init__(self, templates: Iterable[str]) -> None:
        # A literal segment sorts before "{", so /a/b is tried before /a/{x}.
        self.templates = sorted(templates)

    def match(self, path: str) -> Match:
        if path != "/" and path.endswith("/"):
            path = path[:-1]  # API Gateway drops a trailing slash too
        parts = path.split("/")
        for template in self.templates:
            pattern = template.split("/")
            if len(pattern) != len(parts):
                continue
            captured: dict[str, str] = {}
            for want, got in zip(pattern, parts, strict=True):
                if want.startswith("{") and want.endswith("}"):
                    if not got:
                        break
                    captured[want[1:-1]] = got
                elif want != got:
                    break
            else:
                return Match(template, captured)
        raise NoRoute(path)


def rest_event(url_event: Mapping[str, Any], routes: Routes) -> dict[str, Any]:
    """The REST (payload 1.0) event Chalice expects, for a function URL event (payload 2.0)."""
    http = url_event.get("requestContext", {}).get("http", {})
    path = str(http.get("path") or url_event.get("rawPath") or "/")
    match = routes.match(path)
    query = parse_qs(str(url_event.get("rawQueryString") or ""), keep_blank_values=True)
    body = url_event.get("body")
    return {
        "httpMethod": http.get("method", "GET"),
        "path": path,
        "resource": match.route,
        "headers": {str(k).lower(): str(v) for k, v in (url_event.get("headers") or {}).items()},
        "multiValueQueryStringParameters": query or None,
        "pathParameters": match.captured or None,
        "stageVariables": None,
        "requestContext": {
            "httpMethod": http.get("method", "GET"),
            "resourcePath": match.route,
            "path": path,
            "requestId": url_event.get("requestContext", {}).get("requestId", ""),
            "identity": {"sourceIp": http.get("sourceIp", "")},
        },
        "body": body,
        "isBase64Encoded": bool(url_event.get("isBase64Encoded")),
    }


def response_stream(response: Mapping[str, Any]) -> Generator[bytes, None, None]:
    """The prelude, then the body: each chunk of an iterator body as it is produced."""
    headers: dict[str, str] = {str(k): str(v) for k, v in (response.get("headers") or {}).items()}
    for name, values in (response.get("multiValueHeaders") or {}).items():
        headers[str(name)] = ", ".join(str(v) for v in values)
    prelude = {"statusCode": int(response.get("statusCode", 200)), "headers": headers, "cookies": []}
    yield json.dumps(prelude, separators=(",", ":")).encode() + PRELUDE_END
    body = response.get("body")
    if body is None:
        return
    if isinstance(body, str):
        yield base64.b64decode(body) if response.get("isBase64Encoded") else body.encode()
    elif isinstance(body, bytes):
        yield body
    else:
        try:
            for chunk in body:
                if chunk:
                    yield chunk
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()  # the client went away: the app's body releases its upstream request


def error_response(status: int, code: str, message: str) -> dict[str, Any]:
    """A response in the API's one error shape, for a request that never reached the app."""
    body = json.dumps(error_body(code, message))
    return {"statusCode": status, "headers": {"Content-Type": "application/json"}, "body": body}


def buffered(app: Any, event: Mapping[str, Any], context: Any) -> dict[str, Any]:
    """The whole response to a function URL event (invoke mode ``BUFFERED``, or a platform that
    ignores the streaming runtime): the same routes and events, the body joined at the end."""
    try:
        rest = rest_event(event, Routes(app.routes))
    except NoRoute:
        return error_response(404, "not_found", "there is no such route")
    response = app(rest, context)
    body = response.get("body")
    headers = {str(k): str(v) for k, v in (response.get("headers") or {}).items()}
    for name, values in (response.get("multiValueHeaders") or {}).items():
        headers[str(name)] = ", ".join(str(v) for v in values)
    if body is not None and not isinstance(body, str | bytes):
        body = b"".join(body).decode()
    elif isinstance(body, bytes):
        body = body.decode()
    return {
        "statusCode": int(response.get("statusCode", 200)),
        "headers": headers,
        "body": body or "",
        "isBase64Encoded": bool(response.get("isBase64Encoded")),
    }
