"""What the cache stores: one complete text answer, in neither API's shape.

Only a successful, complete text answer is ever stored: a reply that ended on its own
(``stop``/``end_turn``, a stop sequence) or at the request's ``max_tokens`` (which is in the key).
Never an error, never a tool call, never a stream that was cut or ended with an error event:
:func:`from_reply` and :class:`StreamCollector` return None for those.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

Finish = Literal["stop", "length", "stop_sequence"]

_OPENAI_FINISH: dict[str, Finish] = {"stop": "stop", "length": "length"}
_ANTHROPIC_FINISH: dict[str, Finish] = {
    "end_turn": "stop",
    "max_tokens": "length",
    "stop_sequence": "stop_sequence",
}


@dataclass(frozen=True)
class Completion:
    """A stored answer: its text, why it ended, and what it cost to produce (for the saving)."""

    text: str
    finish: Finish
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0
    stop_sequence: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Completion:
        return cls(**json.loads(raw))


def from_reply(wire: str, reply: dict[str, Any]) -> Completion | None:
    """The storable answer in a non-streamed reply (OpenAI or Anthropic shape), or None."""
    if wire == "openai":
        choices = reply.get("choices") or []
        if len(choices) != 1 or not isinstance(choices[0], dict):
            return None
        message = choices[0].get("message") or {}
        finish = _OPENAI_FINISH.get(str(choices[0].get("finish_reason")))
        text = message.get("content")
        if (
            finish is None
            or message.get("tool_calls")
            or message.get("function_call")
            or not isinstance(text, str)
        ):
            return None
        if message.get("refusal"):
            return None
        usage = reply.get("usage") or {}
        cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
        return Completion(
            text=text,
            finish=finish,
            input_tokens=int(usage.get("prompt_tokens") or 0) - cached,
            output_tokens=int(usage.get("completion_tokens") or 0),
            cached_input_tokens=cached,
        )
    blocks = reply.get("content") or []
    finish = _ANTHROPIC_FINISH.get(str(reply.get("stop_reason")))
    if finish is None or reply.get("type") != "message":
        return None
    if any(not isinstance(b, dict) or b.get("type") != "text" for b in blocks):
        return None  # tool_use, thinking, ...: not a plain text answer
    usage = reply.get("usage") or {}
    return Completion(
        text="".join(str(b.get("text", "")) for b in blocks),
        finish=finish,
        input_tokens=int(usage.get("input_tokens") or 0),
        output_tokens=int(usage.get("output_tokens") or 0),
        cached_input_tokens=int(usage.get("cache_read_input_tokens") or 0),
        stop_sequence=reply.get("stop_sequence"),
    )


class StreamCollector:
    """Assembles a streamed answer from the provider's own events, to store it once it completed.

    Feed it every upstream event's name and data; :meth:`result` gives the answer only when the
    stream reached its proper end (OpenAI's ``[DONE]`` after a finish reason, Anthropic's
    ``message_stop``) with text only.  Anything else — a cut, an error event, a tool call — and
    it gives None.
    """

    def __init__(self, wire: str) -> None:
        self.wire = wire
        self.parts: list[str] = []
        self.finish: Finish | None = None
        self.stop_sequence: str | None = None
        self.ended = False
        self.spoiled = False
        self.usage: dict[str, int] = {}

    def feed(self, event: str | None, data: str) -> None:
        if self.spoiled or self.ended:
            if self.ended and data.strip():
                self.spoiled = self.spoiled or (self.wire == "openai")  # nothing may follow [DONE]
            return
        if self.wire == "openai":
            self._openai(data)
        else:
            self._anthropic(event, data)

    def result(self) -> Completion | None:
        if self.spoiled or not self.ended or self.finish is None:
            return None
        return Completion(
            text="".join(self.parts),
            finish=self.finish,
            input_tokens=self.usage.get("input", 0),
            output_tokens=self.usage.get("output", 0),
            cached_input_tokens=self.usage.get("cached", 0),
            stop_sequence=self.stop_sequence,
        )

    def _openai(self, data: str) -> None:
        if data == "[DONE]":
            self.ended = True
            return
        chunk = _decode(data)
        if chunk is None or "error" in chunk:
            self.spoiled = True
            return
        usage = chunk.get("usage") or (chunk.get("x_groq") or {}).get("usage")
        if isinstance(usage, dict):
            cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
            self.usage = {
                "input": int(usage.get("prompt_tokens") or 0) - cached,
                "output": int(usage.get("completion_tokens") or 0),
                "cached": cached,
            }
        choices = chunk.get("choices") or []
        if len(choices) > 1:
            self.spoiled = True
            return
        for choice in choices:
            if choice.get("index", 0) != 0:
                self.spoiled = True
                return
            delta = choice.get("delta") or {}
            if delta.get("tool_calls") or delta.get("function_call") or delta.get("refusal"):
                self.spoiled = True
                return
            if isinstance(delta.get("content"), str):
                self.parts.append(delta["content"])
            reason = choice.get("finish_reason")
            if reason is not None:
                finish = _OPENAI_FINISH.get(str(reason))
                if finish is None:
                    self.spoiled = True
                    return
                self.finish = finish

    def _anthropic(self, event: str | None, data: str) -> None:
        payload = _decode(data)
        if payload is None:
            self.spoiled = True
            return
        kind = event or payload.get("type")
        if kind == "error":
            self.spoiled = True
        elif kind == "message_start":
            usage = (payload.get("message") or {}).get("usage") or {}
            self.usage = {
                "input": int(usage.get("input_tokens") or 0),
                "output": int(usage.get("output_tokens") or 0),
                "cached": int(usage.get("cache_read_input_tokens") or 0),
            }
        elif kind == "content_block_start":
            if (payload.get("content_block") or {}).get("type") != "text":
                self.spoiled = True
        elif kind == "content_block_delta":
            delta = payload.get("delta") or {}
            if delta.get("type") != "text_delta":
                self.spoiled = True
            else:
                self.parts.append(str(delta.get("text", "")))
        elif kind == "message_delta":
            delta = payload.get("delta") or {}
            self.finish = _ANTHROPIC_FINISH.get(str(delta.get("stop_reason")))
            if self.finish is None:
                self.spoiled = True
            self.stop_sequence = delta.get("stop_sequence")
            usage = payload.get("usage") or {}
            if "output_tokens" in usage:
                self.usage["output"] = int(usage["output_tokens"])
            if usage.get("input_tokens"):
                self.usage["input"] = int(usage["input_tokens"])
        elif kind == "message_stop":
            self.ended = True


def _decode(data: str) -> dict[str, Any] | None:
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
