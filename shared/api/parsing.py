"""Validate request bodies at the edge: size, content type, JSON, schema."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .errors import ApiError

M = TypeVar("M", bound=BaseModel)


def parse_body(raw: bytes | None, content_type: str | None, model: type[M], *, max_bytes: int) -> M:
    """The body as ``model``, or an ApiError that says exactly what is wrong with it."""
    body = raw or b""
    if len(body) > max_bytes:
        raise ApiError(413, "payload_too_large", f"the body is larger than {max_bytes} bytes")
    media = (content_type or "application/json").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    try:
        data: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "invalid_json", "the body is not valid JSON") from None
    try:
        return model.model_validate(data)
    except ValidationError as e:
        details = [
            {"field": ".".join(str(p) for p in err["loc"]) or "(body)", "problem": err["msg"]}
            for err in e.errors(include_url=False, include_input=False)
        ]
        raise ApiError(422, "invalid_body", "the body does not match the schema", details=details) from None
