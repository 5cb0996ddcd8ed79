"""When the cache must stay out of a request entirely: neither served from nor stored in.

A cached answer is only right when the request is a plain, repeatable question.  Tool use is
agentic and stateful; structured outputs are validated by the caller against a schema; ``n > 1``
asks for several samples; a high temperature asks for variety; and a client may simply say no.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: ``x-pressline-cache`` values a client may send.
BYPASS_HEADER_VALUES = frozenset({"bypass", "off", "no-store"})


@dataclass(frozen=True)
class Directives:
    """What the client's headers allow: ``lookup`` (serve from the cache) and ``store``."""

    lookup: bool = True
    store: bool = True
    reason: str = ""


def header_directives(cache_control: str | None, pressline_cache: str | None) -> Directives:
    """``Cache-Control: no-store`` or ``x-pressline-cache: bypass``: neither served nor stored.

    ``Cache-Control: no-cache`` asks for a fresh answer: not served from the cache, but stored.
    """
    if pressline_cache is not None and pressline_cache.strip().lower() in BYPASS_HEADER_VALUES:
        return Directives(False, False, "x-pressline-cache")
    directives = {d.strip().split("=", 1)[0].lower() for d in (cache_control or "").split(",")}
    if "no-store" in directives:
        return Directives(False, False, "no-store")
    if "no-cache" in directives:
        return Directives(False, True, "no-cache")
    return Directives()


def bypass_reason(body: dict[str, Any], *, max_temperature: float) -> str | None:
    """Why ``body`` must not be cached at all, or None when it may be."""
    if body.get("tools") or body.get("tool_choice") or body.get("functions") or body.get("function_call"):
        return "tools"
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") in ("json_object", "json_schema"):
        return "structured_output"
    if body.get("output_format") or body.get("output_config"):  # Anthropic structured outputs
        return "structured_output"
    n = body.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n > 1:
        return "n"
    temperature = body.get("temperature")
    if isinstance(temperature, int | float) and not isinstance(temperature, bool):
        if float(temperature) > max_temperature:
            return "temperature"
    elif max_temperature < 1.0:
        return "temperature"  # both APIs default to 1.0
    if _has_tool_messages(body.get("messages") or []):
        return "tools"
    return None


def _has_tool_messages(messages: list[Any]) -> bool:
    """A conversation carrying tool calls or results is agentic: never cached."""
    for message in messages:
        if not isinstance(message, dict):
            continue
        if message.get("role") in ("tool", "function") or message.get("tool_calls"):
            return True
        content = message.get("content")
        if isinstance(content, list) and any(
            isinstance(p, dict) and p.get("type") in ("tool_use", "tool_result") for p in content
        ):
            return True
    return False
