"""What the proxy needs to know about an upstream API: where and how to send a request."""

from __future__ import annotations

from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import httpx

#: The request/response shape an API speaks.
Wire = Literal["openai", "anthropic"]

#: Statuses worth another try (rate limits, overload, transient server errors).
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})


@dataclass(frozen=True)
class UpstreamRequest:
    url: str
    headers: dict[str, str]
    body: dict[str, Any]


class Provider:
    """An upstream API. Subclasses say where requests go and how they are authenticated."""

    name: str
    wire: Wire

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")

    def request(self, body: dict[str, Any], api_key: str) -> UpstreamRequest:  # pragma: no cover
        raise NotImplementedError


def retry_after_s(response: httpx.Response) -> float | None:
    """The wait a 429/503 asks for: ``retry-after-ms``, or ``Retry-After`` in seconds or as a date."""
    ms = response.headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    from datetime import UTC, datetime

    return max(0.0, (when - datetime.now(UTC)).total_seconds())
