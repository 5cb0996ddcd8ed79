"""The types of the request fields the proxy itself reads, checked before anything reads them.

The proxy forwards a body mostly as it came (the provider validates the rest), but it computes with a
few fields first: the budget hold with ``max_tokens``, the stream with ``stream`` and
``stream_options``, the prompt text and translation with each message. A wrong type there would
raise deep inside (a 500); here it is a 422 that names the field.
"""

from __future__ import annotations

from typing import Any

from shared.api.errors import ApiError

__all__ = ["check_fields"]


def _refuse(field: str, problem: str) -> ApiError:
    return ApiError(422, "invalid_body", f"{field} {problem}", details=[{"field": field, "problem": problem}])


def check_fields(body: dict[str, Any]) -> None:
    """Raise a 422 ApiError naming the first field the proxy reads whose type is wrong."""
    for name in ("max_tokens", "max_completion_tokens"):
        limit = body.get(name)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise _refuse(name, "must be a positive integer")
    if not isinstance(body.get("stream", False), bool):
        raise _refuse("stream", "must be true or false")
    if not isinstance(body.get("stream_options") or {}, dict):
        raise _refuse("stream_options", "must be an object")
    for index, message in enumerate(body.get("messages") or ()):
        if not isinstance(message, dict):
            raise _refuse(f"messages.{index}", "must be an object")
