"""Validate request bodies at the edge: size, content type, JSON, schema."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .errors import ApiError
from .json_reader import read_json

M = TypeVar("M", bound=BaseModel)


def parse_body(raw: bytes | None, content_type: str | None, model: type[M], *, max_bytes: int) -> M:
    """The body as ``model``, or an ApiError that says exactly what is wrong with it."""
    data: Any = read_json(raw, content_type, max_bytes=max_bytes)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        details = [
            {"field": ".".join(_part(p) for p in err["loc"]) or "(body)", "problem": err["msg"]}
            for err in e.errors(include_url=False, include_input=False)
        ]
        raise ApiError(422, "invalid_body", "the body does not match the schema", details=details) from None


def _part(part: str | int) -> str:
    """One step of a field's path; a client's dict key is cut short (it is echoed in the error)."""
    text = str(part)
    return text if len(text) <= 64 else text[:64] + "..."
