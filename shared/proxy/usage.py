"""Token usage as the provider reports it, read from the upstream events themselves.

Whatever the client's format, the tracker reads the provider's own events: OpenAI's and Groq's
usage chunk (``stream_options.include_usage``; Groq also sends ``x_groq.usage``), Anthropic's
``message_start`` and ``message_delta`` usage.  Only the events that can carry usage are decoded;
the others are kept as they came and decoded only if the stream is cut before its usage, to
estimate the tokens from the text received so far.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .providers.base import Wire

_ANTHROPIC_USAGE_EVENTS = frozenset({"message_start", "message_delta"})


@dataclass
class Reported:
    """What the provider said; ``complete`` once its final usage has arrived."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    complete: bool = False
    _raw: list[str] = field(default_factory=list, repr=False)  # undecoded events, for completion_text
    _wire: Wire = field(default="openai", repr=False)

    @property
    def completion_text(self) -> str:
        """The text and tool arguments received so far (decoded on demand: a cut stream is rare)."""
        parts: list[str] = []
        for raw in self._raw:
            try:
                data = json.loads(raw)
            except ValueError:
                continue
            if isinstance(data, dict):
                parts.extend(_openai_text(data) if self._wire == "openai" else _anthropic_text(data))
        return "".join(parts)


class UsageTracker:
    """Feed it every upstream event (name and raw data) of one stream."""

    def __init__(self, wire: Wire) -> None:
        self.wire = wire
        self.reported = Reported()
        self.reported._wire = wire

    def feed(self, event_name: str | None, raw: str) -> None:
        if self.wire == "openai":
            if '"usage":{' in raw or '"usage": {' in raw:
                data = _decode(raw)
                usage = data.get("usage") or (data.get("x_groq") or {}).get("usage")
                if usage:
                    self.set_openai_usage(usage)
            elif raw != "[DONE]":
                self.reported._raw.append(raw)
            return
        if event_name in _ANTHROPIC_USAGE_EVENTS:
            data = _decode(raw)
            if event_name == "message_start":
                self.set_anthropic_usage((data.get("message") or {}).get("usage") or {}, complete=False)
            else:
                usage = data.get("usage") or {}
                if "output_tokens" in usage:
                    self.reported.output_tokens = int(usage["output_tokens"])
                if usage.get("input_tokens"):
                    self.reported.input_tokens = int(usage["input_tokens"])
                self.reported.complete = True
        elif event_name == "content_block_delta":
            self.reported._raw.append(raw)

    def set_openai_usage(self, usage: dict[str, Any]) -> None:
        """OpenAI's prompt_tokens include the cached ones; keep them apart."""
        cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
        self.reported.input_tokens = int(usage.get("prompt_tokens") or 0) - cached
        self.reported.cached_input_tokens = cached
        self.reported.output_tokens = int(usage.get("completion_tokens") or 0)
        self.reported.complete = True

    def set_anthropic_usage(self, usage: dict[str, Any], *, complete: bool = True) -> None:
        """Anthropic's input_tokens exclude cache reads, which are reported on their own."""
        self.reported.input_tokens = int(usage.get("input_tokens") or 0)
        self.reported.cached_input_tokens = int(usage.get("cache_read_input_tokens") or 0)
        self.reported.output_tokens = int(usage.get("output_tokens") or 0)
        self.reported.complete = complete


def _decode(raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _openai_text(chunk: dict[str, Any]) -> list[str]:
    parts: list[str] = []
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta") or {}
        if isinstance(delta.get("content"), str):
            parts.append(delta["content"])
        for call in delta.get("tool_calls") or []:
            arguments = (call.get("function") or {}).get("arguments")
            if isinstance(arguments, str):
                parts.append(arguments)
    return parts


def _anthropic_text(data: dict[str, Any]) -> list[str]:
    delta = data.get("delta") or {}
    text = delta.get("text") if delta.get("type") == "text_delta" else delta.get("partial_json")
    return [text] if isinstance(text, str) else []
