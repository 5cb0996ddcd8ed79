"""The one bounded JSON reader for every request body the API takes.

``json.loads`` alone trusts its input: 2,000 ``[`` (8 KB) exhaust Python's recursion limit (a
``RecursionError``, which nothing catches, so a 500), a repeated key silently keeps its last value,
and ``NaN``, ``Infinity`` or an unpaired ``\\ud800`` get in and fail later, far from the request.
Here a body is refused with a 400 that says why, before anything recurses:

- the byte size is checked first (413), then UTF-8 (RFC 8259; a leading BOM is tolerated);
- nesting depth is measured *before* parsing, without recursion: a cheap count of brackets, and
  only when that count could exceed the limit, one pass over the brackets outside strings;
- while parsing, each object is checked for duplicate keys, overlong keys and too many keys;
- ``NaN``/``Infinity``, numbers that overflow a float, and unpaired surrogates are refused.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from .errors import ApiError

__all__ = [
    "MAX_DEPTH",
    "MAX_KEY_CHARS",
    "MAX_OBJECT_KEYS",
    "JsonLimitError",
    "loads",
    "read_json",
]

#: Arrays and objects inside each other, the outermost counted (a flat object is depth 1).
MAX_DEPTH = 64
#: Characters in one object key.
MAX_KEY_CHARS = 256
#: Keys in one object.
MAX_OBJECT_KEYS = 1_000

#: A JSON string exactly as the grammar has it (escapes included): brackets inside are not structure.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
#: A ``\u`` escape of a surrogate: only then can the parsed value hold an unpaired one.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class JsonLimitError(ValueError):
    """A text is not JSON this API accepts; the message is safe to show the client."""


def _shown(key: str) -> str:
    """A key as an error message may quote it (bounded: the key came from the client)."""
    return repr(key if len(key) <= 40 else key[:40] + "...")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Each object as it is parsed (C calls this, innermost first): one dict, or the reason it is
    refused. It runs once per object of every body: the cheapest form measured (a plain loop beats
    ``max(map(len, obj))``)."""
    obj = dict(pairs)
    if len(obj) != len(pairs) or len(obj) > MAX_OBJECT_KEYS:
        raise _refusal(pairs)
    for key in obj:
        if len(key) > MAX_KEY_CHARS:
            raise _refusal(pairs)
    return obj


def _refusal(pairs: list[tuple[str, Any]]) -> JsonLimitError:
    """Why an object is refused (the first reason, in the order a client would fix them)."""
    if len(pairs) > MAX_OBJECT_KEYS:
        return JsonLimitError(f"an object has more than {MAX_OBJECT_KEYS} keys")
    if any(len(key) > MAX_KEY_CHARS for key, _ in pairs):
        return JsonLimitError(f"a key is longer than {MAX_KEY_CHARS} characters")
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            return JsonLimitError(f"duplicate key {_shown(key)}")
        seen.add(key)
    raise AssertionError("an object refused for no reason")  # unreachable


def _constant(name: str) -> Any:
    raise JsonLimitError(f"{name} is not a JSON number")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonLimitError("a number is too large")
    return value


_DECODER = json.JSONDecoder(object_pairs_hook=_object, parse_constant=_constant, parse_float=_float)


def _too_deep(text: str, max_depth: int) -> bool:
    """Whether ``text`` nests deeper than ``max_depth``, found without recursion.

    Fewer brackets than the limit cannot nest past it (the common case: two ``str.count`` calls).
    Otherwise strings are cut out (the regex matches a JSON string exactly, so every bracket left is
    structure as far as the text is valid JSON, and the parser stops where it stops being valid) and
    the rest is walked once.
    """
    if text.count("[") + text.count("{") <= max_depth:
        return False
    depth = 0
    for char in _NOT_BRACKET.sub("", _STRING.sub("", text)):
        if char in "[{":
            depth += 1
            if depth > max_depth:
                return True
        elif depth:
            depth -= 1
    return False


def loads(data: str | bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """``data`` parsed as JSON within this module's limits; raises :class:`JsonLimitError` (a
    ValueError) for anything refused, invalid JSON included."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise JsonLimitError("the body is not UTF-8 text") from None
    else:
        text = data
    text = text.removeprefix("\ufeff")
    if _too_deep(text, max_depth):
        raise JsonLimitError(f"the body is nested deeper than {max_depth} levels")
    try:
        value = _DECODER.decode(text)
    except JsonLimitError:
        raise
    except json.JSONDecodeError as e:
        where = f"line {e.lineno} column {e.colno}"
        raise JsonLimitError(f"the body is not valid JSON ({e.msg} at {where})") from None
    except (ValueError, RecursionError):  # e.g. an integer of more than 4,300 digits
        raise JsonLimitError("the body is not valid JSON") from None
    if "\\u" in text and _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise JsonLimitError("the body has an unpaired UTF-16 surrogate escape") from None
    return value


def read_json(raw: bytes | None, content_type: str | None, *, max_bytes: int) -> Any:
    """A request body as JSON, or the ApiError to answer: 413 too large, 415 not JSON by its
    content type (none means JSON), 400 ``invalid_json`` with the reason."""
    body = raw or b""
    if len(body) > max_bytes:
        raise ApiError(413, "payload_too_large", f"the body is larger than {max_bytes} bytes")
    media = (content_type or "application/json").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    try:
        return loads(body)
    except JsonLimitError as e:
        raise ApiError(400, "invalid_json", str(e)) from None
