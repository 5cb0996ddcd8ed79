"""A cached answer, returned in the shape the client asked for.

JSON for a plain request; for ``stream: true`` a complete SSE stream with the framing each SDK
expects — OpenAI: a role chunk, content chunks, a finish chunk, the usage chunk when asked
(``stream_options.include_usage``), then ``data: [DONE]``; Anthropic: ``message_start``,
``content_block_start``, ``ping``, ``content_block_delta``..., ``content_block_stop``,
``message_delta``, ``message_stop``.  Every event is one whole SSE event (shared.proxy.sse).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

from shared.proxy.sse import encode_event

from .entry import Completion

_OPENAI_FINISH = {"stop": "stop", "length": "length", "stop_sequence": "stop"}
_ANTHROPIC_STOP = {"stop": "end_turn", "length": "max_tokens", "stop_sequence": "stop_sequence"}
#: Replayed streams send the text in pieces of about this many characters (word boundaries).
_PIECE_CHARS = 64


def json_body(wire: str, completion: Completion, model: str) -> dict[str, Any]:
    """The non-streamed reply in ``wire``'s shape."""
    c = completion
    if wire == "openai":
        return {
            "id": f"chatcmpl-cache{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": c.text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": _OPENAI_FINISH[c.finish],
                }
            ],
            "usage": _openai_usage(c),
        }
    return {
        "id": f"msg_cache{uuid.uuid4().hex}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": c.text}],
        "stop_reason": _ANTHROPIC_STOP[c.finish],
        "stop_sequence": c.stop_sequence,
        "usage": _anthropic_usage(c, c.output_tokens),
    }


def sse_chunks(wire: str, completion: Completion, model: str, *, include_usage: bool) -> Iterator[bytes]:
    """The streamed reply in ``wire``'s SSE format, ready to write event by event."""
    pieces = _pieces(completion.text)
    if wire == "openai":
        return _openai_stream(completion, model, pieces, include_usage)
    return _anthropic_stream(completion, model, pieces)


def _openai_stream(c: Completion, model: str, pieces: list[str], include_usage: bool) -> Iterator[bytes]:
    base = {
        "id": f"chatcmpl-cache{uuid.uuid4().hex}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        data = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if include_usage:
            data["usage"] = None
        return encode_event(data)

    yield chunk({"role": "assistant", "content": "", "refusal": None})
    for piece in pieces:
        yield chunk({"content": piece})
    yield chunk({}, _OPENAI_FINISH[c.finish])
    if include_usage:
        yield encode_event({**base, "choices": [], "usage": _openai_usage(c)})
    yield encode_event("[DONE]")


def _anthropic_stream(c: Completion, model: str, pieces: list[str]) -> Iterator[bytes]:
    message: dict[str, Any] = {
        "id": f"msg_cache{uuid.uuid4().hex}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": _anthropic_usage(c, 1),
    }
    yield encode_event({"type": "message_start", "message": message}, event="message_start")
    start = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    yield encode_event(start, event="content_block_start")
    yield encode_event({"type": "ping"}, event="ping")
    for piece in pieces:
        delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}
        yield encode_event(delta, event="content_block_delta")
    yield encode_event({"type": "content_block_stop", "index": 0}, event="content_block_stop")
    end = {
        "type": "message_delta",
        "delta": {"stop_reason": _ANTHROPIC_STOP[c.finish], "stop_sequence": c.stop_sequence},
        "usage": {"output_tokens": c.output_tokens},
    }
    yield encode_event(end, event="message_delta")
    yield encode_event({"type": "message_stop"}, event="message_stop")


def _pieces(text: str) -> list[str]:
    """The text cut at word boundaries into pieces of about ``_PIECE_CHARS`` (none lost, none empty)."""
    pieces: list[str] = []
    current = ""
    for token in re.findall(r"\s*\S+|\s+", text):
        if current and len(current) + len(token) > _PIECE_CHARS:
            pieces.append(current)
            current = ""
        current += token
    if current:
        pieces.append(current)
    return pieces


def _openai_usage(c: Completion) -> dict[str, Any]:
    prompt = c.input_tokens + c.cached_input_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": c.output_tokens,
        "total_tokens": prompt + c.output_tokens,
        "prompt_tokens_details": {"cached_tokens": c.cached_input_tokens},
    }


def _anthropic_usage(c: Completion, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": c.input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": c.cached_input_tokens,
    }
