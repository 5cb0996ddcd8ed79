"""One JSON error shape for every error the API returns.

    {"error": {"code": "invalid_request", "message": "...", "details": [...], "trace_id": "..."}}

``code`` is stable and machine-readable; ``message`` is for people and never carries internals
(no tracebacks, no Redis or AWS errors, no secrets).
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error answered to the client as is."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers or {}


def error_body(
    code: str, message: str, *, trace_id: str = "", details: list[Any] | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = details
    if trace_id:
        error["trace_id"] = trace_id
    return {"error": error}


#: Codes for the statuses Chalice (or API Gateway) answers on its own, before a route runs.
STATUS_CODES: dict[int, str] = {
    400: "invalid_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "rate_limited",
    500: "internal_error",
    502: "bad_gateway",
    503: "unavailable",
    504: "timeout",
}
