"""Token usage as the provider reports it, read from the upstream events themselves.

Whatever the client's format, the tracker reads the provider's own events: OpenAI's and Groq's
usage chunk (``stream_options.include_usage``; Groq also sends ``x_groq.usage``), Anthropic's
``message_start`` and ``message_delta`` usage.  It also keeps the text so far, so a stream cut
before its usage can still be counted (estimated).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .providers.base import Wire


@dataclass
class Reported:
    """What the provider said; ``complete`` once its final usage has arrived."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    complete: bool = False
    text: list[str] = field(default_factory=list)

    @property
    def completion_text(self) -> str:
        return "".join(self.text)


class UsageTracker:
    """Feed it every upstream event (as parsed JSON) of one stream."""

    def __init__(self, wire: Wire) -> None:
        self.wire = wire
        self.reported = Reported()

    def feed(self, event_name: str | None, data: dict[str, Any] | None) -> None:
        if data is None:
            return
        if self.wire == "openai":
            self._openai(data)
        else:
            self._anthropic(event_name or data.get("type"), data)

    def _openai(self, chunk: dict[str, Any]) -> None:
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str):
                self.reported.text.append(delta["content"])
            for call in delta.get("tool_calls") or []:
                arguments = (call.get("function") or {}).get("arguments")
                if isinstance(arguments, str):
                    self.reported.text.append(arguments)
        usage = chunk.get("usage") or (chunk.get("x_groq") or {}).get("usage")
        if usage:
            self.set_openai_usage(usage)

    def set_openai_usage(self, usage: dict[str, Any]) -> None:
        """OpenAI's prompt_tokens include the cached ones; keep them apart."""
        cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
        self.reported.input_tokens = int(usage.get("prompt_tokens") or 0) - cached
        self.reported.cached_input_tokens = cached
        self.reported.output_tokens = int(usage.get("completion_tokens") or 0)
        self.reported.complete = True

    def _anthropic(self, event: str | None, data: dict[str, Any]) -> None:
        if event == "message_start":
            usage = (data.get("message") or {}).get("usage") or {}
            self.set_anthropic_usage(usage, complete=False)
        elif event == "content_block_delta":
            delta = data.get("delta") or {}
            text = delta.get("text") if delta.get("type") == "text_delta" else delta.get("partial_json")
            if isinstance(text, str):
                self.reported.text.append(text)
        elif event == "message_delta":
            usage = data.get("usage") or {}
            if "output_tokens" in usage:
                self.reported.output_tokens = int(usage["output_tokens"])
            if usage.get("input_tokens"):
                self.reported.input_tokens = int(usage["input_tokens"])
            self.reported.complete = True

    def set_anthropic_usage(self, usage: dict[str, Any], *, complete: bool = True) -> None:
        """Anthropic's input_tokens exclude cache reads, which are reported on their own."""
        self.reported.input_tokens = int(usage.get("input_tokens") or 0)
        self.reported.cached_input_tokens = int(usage.get("cache_read_input_tokens") or 0)
        self.reported.output_tokens = int(usage.get("output_tokens") or 0)
        self.reported.complete = complete
