"""A fake OpenAI / Anthropic / Groq server that speaks their real wire formats, for offline work.

The proxy's tests, its benchmark and ``make run``'s offline default need an upstream that streams
exactly like the real providers (and fails like them) without the internet, deterministically, and
cheaply enough that 50+ concurrent streams measure the proxy, not the fake. So: one asyncio
process, stdlib streams and a minimal HTTP/1.1 (keep-alive, chunked SSE), every SSE event written
with its own ``write`` + ``drain`` so chunks really leave separately.

Routes (one port)::

    POST /openai/v1/chat/completions        GET /openai/v1/models          (Authorization: Bearer)
    POST /groq/openai/v1/chat/completions   GET /groq/openai/v1/models     (Authorization: Bearer)
    POST /anthropic/v1/messages             GET /anthropic/v1/models       (x-api-key or Bearer,
                                                                            anthropic-version)
    POST /openai/v1/embeddings              (Bearer; deterministic: a normalised hashed bag of
                                            words, so texts sharing their words are close)
    GET  /_fake/stats    GET|POST /_fake/state                             (control; no auth)

Behaviour per request comes from "knobs": ``;``- (or ``,``-) separated ``key=value`` or flags, read
from (lowest to highest precedence) the server-wide default for the provider (``/_fake/state``), a
model-name suffix after ``::`` (``gpt-4o-mini::chunks=5;error=429`` — for callers such as the proxy
that do not forward headers; the reply's ``model`` is the part before ``::``) and the
``x-fake-scenario`` header. Unknown knobs give a 400 in the provider's error shape.

    chunks=N          content chunks (= words) of a lorem reply; default 10
    reply=echo        reply with the words of the last user message instead of lorem
    interval_ms=F     gap between content chunks; default 0
    first_token_ms=F  delay from the response headers to the first event; default 0
    headers_ms=F      delay before the status line and headers; default 0
    tool_call[=N]     reply with N tool calls (default 1) instead of text; also implied by a forcing
                      tool_choice ("required" / {"type":"function"} / {"type":"any"|"tool"})
    cached=N          N prompt tokens reported as cached (OpenAI cached_tokens, Anthropic
                      cache_read_input_tokens)
    error=S           answer with status S (400, 401, 429, 500, 503, 529, ...) in the provider's error
                      shape, or ``disconnect``: close the connection without any response
    retry_after=S     Retry-After header value on an error (default 1 for a 429)
    fail_first=N      the first N attempts of a request fail (``error``, default 503; 529 for Anthropic),
                      then it succeeds; a request is identified by ``x-fake-request-key``, else by a hash
                      of provider + body
    stall_after=N     after N content chunks pause for stall_ms (default 10000), then go on
    disconnect_after=N  after N content chunks close the TCP connection: no finish chunk, no usage,
                      no [DONE] / message_stop, no terminating zero-length chunk
    error_after=N     after N content chunks send the provider's in-band error event, end the body
    no_usage          no usage chunk (OpenAI/Groq) even with stream_options.include_usage

Token counts (deterministic, so tests can compute cost exactly):
    prompt_tokens = 3 + the number of whitespace-separated words in all text: ``system`` (string or
    text blocks), every message's string content, text parts/blocks, and tool results' text. Tool
    definitions, tool-call arguments and tool_use inputs are not counted. The count is the same for
    a conversation in either API's shape, so it survives the proxy's translation.
    completion_tokens = the number of content chunks: one per word of text, or per tool call one
    for its name/start chunk plus one per 8-character fragment of its JSON arguments. A non-stream
    reply counts the chunks a stream would have had. ``max_tokens`` / ``max_completion_tokens``
    below the word count truncates the text (finish_reason "length", stop_reason "max_tokens").
    Anthropic's input_tokens excludes cached tokens (prompt - cached), as the real API does; OpenAI's
    prompt_tokens includes them.

Timing of a stream: status and headers at once (after headers_ms); the opening events (OpenAI's role
chunk; Anthropic's message_start, content_block_start, ping) at first_token_ms; content chunk i at
first_token_ms + i * interval_ms (+ stall_ms once i >= stall_after), on an absolute schedule so a late
wake-up does not push back the rest; the closing events right after the last content chunk. A
non-stream reply is sent when the stream's last chunk would have been.

Control: ``POST /_fake/state`` takes ``{"reset": true, "down": {"openai": 503 | "disconnect" | null},
"scenario": {"groq": "chunks=3" | null}, "require_key": {"anthropic": "sk-..." | null}}`` (maps merge,
null removes; ``reset`` first clears state, counters and fail_first attempts). ``GET /_fake/stats``
gives counters (requests per provider, responses by status, connections, open/max-open streams,
streams started / completed / closed by the client / cut by the server / ended with an error event)
and ``recent``: the last 500 generation requests with their provider, model, knobs, attempt,
status, outcome (completed, error, dropped, client_closed, server_disconnect, error_event), tokens
and chunks sent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import http
import json
import math
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import httpx

PROMPT_OVERHEAD_TOKENS = 3
ARG_FRAGMENT_CHARS = 8
PROVIDERS = ("openai", "groq", "anthropic")
_LOREM_TEXT = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et "
    "dolore magna aliqua ut enim ad minim veniam quis nostrud exercitation ullamco laboris nisi ut aliquip "
    "ex ea commodo consequat"
)
LOREM = tuple(_LOREM_TEXT.split())
MODELS = {
    "openai": ["gpt-4o-mini", "gpt-4o", "gpt-4.1-mini"],
    "groq": ["llama-3.1-8b-instant", "llama-3.3-70b-versatile"],
    "anthropic": ["claude-haiku-4-5", "claude-sonnet-4-5"],
}
SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"
ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------------- knobs


#: A routing policy (shared/proxy/routing.py) whose targets this fake serves, with short timeouts
#: so tests and benchmarks see stalls quickly.
ROUTING_POLICY = {
    "routes": {
        "gpt-4o-mini": {
            "targets": [
                {"provider": "openai", "model": "gpt-4o-mini", "weight": 100},
                {"provider": "groq", "model": "llama-3.1-8b-instant", "weight": 0},
            ]
        },
        "claude-3-5-haiku": {
            "targets": [{"provider": "anthropic", "model": "claude-3-5-haiku", "weight": 1}]
        },
        "llama": {"targets": [{"provider": "groq", "model": "llama-3.1-8b-instant", "weight": 1}]},
    },
    "timeouts": {"default": {"connect_s": 2, "first_token_s": 3, "idle_s": 1.0, "total_s": 30}},
}


def provider_env(base_url: str) -> dict[str, str]:
    """The settings that point Pressline's three providers at this fake (served at ``base_url``)."""
    return {
        "PRESSLINE_OPENAI_BASE_URL": f"{base_url}/openai/v1",
        "PRESSLINE_ANTHROPIC_BASE_URL": f"{base_url}/anthropic",
        "PRESSLINE_GROQ_BASE_URL": f"{base_url}/groq/openai/v1",
    }


@dataclass
class Knobs:
    """One request's scenario; see the module docstring for each knob."""

    chunks: int = 10
    reply: str = "lorem"
    interval_ms: float = 0.0
    first_token_ms: float = 0.0
    headers_ms: float = 0.0
    tool_call: int = 0
    cached: int = 0
    error: str | None = None
    retry_after: str | None = None
    fail_first: int = 0
    stall_after: int | None = None
    stall_ms: float = 10000.0
    disconnect_after: int | None = None
    error_after: int | None = None
    no_usage: bool = False


_KNOB_TYPES = {f.name: f.type for f in fields(Knobs)}
_DEFAULT_KNOBS = Knobs()
_FLAG_DEFAULTS = {"tool_call": "1", "no_usage": "1"}


class KnobError(ValueError):
    """A scenario string named an unknown knob or a bad value."""


def apply_scenario(knobs: Knobs, text: str) -> Knobs:
    """Overlay ``key=value;flag`` items onto ``knobs`` (in place) and return it."""
    for item in re.split(r"[;,]", text):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if key not in _KNOB_TYPES:
            raise KnobError(f"unknown fake scenario knob {key!r}")
        if not sep:
            if key not in _FLAG_DEFAULTS:
                raise KnobError(f"fake scenario knob {key!r} needs a value")
            value = _FLAG_DEFAULTS[key]
        kind = str(_KNOB_TYPES[key])
        try:
            parsed: Any
            if kind.startswith("int"):
                parsed = int(value)
            elif kind.startswith("float"):
                parsed = float(value)
            elif kind == "bool":
                parsed = value.strip().lower() not in ("0", "false", "no")
            else:
                parsed = value.strip()
        except ValueError as exc:
            raise KnobError(f"bad value for fake scenario knob {key!r}: {value!r}") from exc
        setattr(knobs, key, parsed)
    return knobs


# ------------------------------------------------------------------------------------- token rules


def _text_of(content: Any) -> str:
    """The countable text in a message content (string, or a list of parts/blocks)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts: list[str] = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict):
            if part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif part.get("type") == "tool_result":
                texts.append(_text_of(part.get("content")))
    return " ".join(texts)


def count_prompt_tokens(body: dict[str, Any]) -> int:
    """prompt_tokens for a request body of either API (the rule in the module docstring)."""
    words = len(_text_of(body.get("system")).split())
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            words += len(_text_of(message.get("content")).split())
    return PROMPT_OVERHEAD_TOKENS + words


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


# ------------------------------------------------------------------------------------------ replies


@dataclass
class ToolCall:
    """One tool call of a reply; ``fragments`` are the argument pieces a stream sends."""

    id: str
    name: str
    arguments: str

    @property
    def fragments(self) -> list[str]:
        a = self.arguments
        return [a[i : i + ARG_FRAGMENT_CHARS] for i in range(0, len(a), ARG_FRAGMENT_CHARS)]


@dataclass
class Plan:
    """A provider-neutral reply: what to say and the usage to report."""

    id: str
    model: str
    created: int
    words: list[str]
    tools: list[ToolCall]
    finish: str  # "stop" | "length" | "tool"
    prompt_tokens: int
    cached_tokens: int

    @property
    def completion_tokens(self) -> int:
        return len(self.words) + sum(1 + len(t.fragments) for t in self.tools)

    @property
    def text(self) -> str:
        return "".join(self.words)


def _tool_specs(body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(name, JSON schema) of the request's tools, in either API's shape."""
    specs: list[tuple[str, dict[str, Any]]] = []
    for tool in body.get("tools") or []:
        if not isinstance(tool, dict):
            continue
        fn: dict[str, Any] = tool["function"] if isinstance(tool.get("function"), dict) else tool
        name = fn.get("name")
        if isinstance(name, str):
            schema = fn.get("parameters", fn.get("input_schema")) or {}
            specs.append((name, schema if isinstance(schema, dict) else {}))
    return specs


def _forced_tool(body: dict[str, Any]) -> tuple[bool, str | None]:
    """Whether tool_choice forces a tool call, and which tool if it names one."""
    choice = body.get("tool_choice")
    if choice == "required":
        return True, None
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind == "function":
            return True, (choice.get("function") or {}).get("name")
        if kind == "tool":
            return True, choice.get("name")
        if kind == "any":
            return True, None
    return False, None


def _fake_arguments(schema: dict[str, Any]) -> dict[str, Any]:
    """Deterministic arguments that fit the schema's top-level properties."""
    by_type: dict[str, Any] = {"integer": 1, "number": 1.5, "boolean": True, "array": [], "object": {}}
    args: dict[str, Any] = {}
    for name, prop in (schema.get("properties") or {}).items():
        prop = prop if isinstance(prop, dict) else {}
        if prop.get("enum"):
            args[name] = prop["enum"][0]
        elif prop.get("type", "string") == "string":
            args[name] = "test"
        else:
            args[name] = by_type.get(str(prop.get("type")))
    return args


def make_plan(provider: str, body: dict[str, Any], knobs: Knobs, model: str, seq: int) -> Plan:
    """The reply to ``body`` under ``knobs``: deterministic given the request and the knobs."""
    prompt = count_prompt_tokens(body)
    forced, forced_name = _forced_tool(body)
    prefix = {"anthropic": "msg_fake", "groq": "chatcmpl-fakegroq"}.get(provider, "chatcmpl-fake")
    plan = Plan(
        id=f"{prefix}{seq:010d}",
        model=model,
        created=int(time.time()),
        words=[],
        tools=[],
        finish="stop",
        prompt_tokens=prompt,
        cached_tokens=min(max(knobs.cached, 0), prompt),
    )
    n_tools = knobs.tool_call or (1 if forced else 0)
    if n_tools:
        specs = _tool_specs(body) or [("get_weather", {"properties": {"location": {"type": "string"}}})]
        if forced_name:
            specs = [s for s in specs if s[0] == forced_name] or [(forced_name, {})]
        id_prefix = "toolu_fake" if provider == "anthropic" else "call_fake"
        for k in range(n_tools):
            name, schema = specs[k % len(specs)]
            arguments = json.dumps(_fake_arguments(schema), separators=(",", ":"))
            plan.tools.append(ToolCall(f"{id_prefix}{seq:08d}{k:02d}", name, arguments))
        plan.finish = "tool"
        return plan
    words = _last_user_text(body).split() if knobs.reply == "echo" else []
    if not words:
        words = [LOREM[i % len(LOREM)] for i in range(max(knobs.chunks, 0))]
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if isinstance(limit, int) and 0 <= limit < len(words):
        words, plan.finish = words[:limit], "length"
    plan.words = [w if i == 0 else f" {w}" for i, w in enumerate(words)]
    return plan


# ------------------------------------------------------------------------------ OpenAI / Groq shapes


def _openai_usage(provider: str, plan: Plan) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": plan.prompt_tokens,
        "completion_tokens": plan.completion_tokens,
        "total_tokens": plan.prompt_tokens + plan.completion_tokens,
    }
    if provider == "groq":
        usage.update(queue_time=0.01, prompt_time=0.001, completion_time=0.01, total_time=0.011)
        if plan.cached_tokens:
            usage["prompt_tokens_details"] = {"cached_tokens": plan.cached_tokens}
        return usage
    usage["prompt_tokens_details"] = {"cached_tokens": plan.cached_tokens, "audio_tokens": 0}
    usage["completion_tokens_details"] = {
        "reasoning_tokens": 0,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    }
    return usage


def _openai_finish(plan: Plan) -> str:
    return {"tool": "tool_calls", "length": "length"}.get(plan.finish, "stop")


def openai_json(provider: str, plan: Plan) -> dict[str, Any]:
    """A non-stream ``chat.completion``."""
    message: dict[str, Any] = {"role": "assistant", "content": plan.text or None, "refusal": None}
    if plan.tools:
        message["tool_calls"] = [
            {"id": t.id, "type": "function", "function": {"name": t.name, "arguments": t.arguments}}
            for t in plan.tools
        ]
    else:
        message["content"] = plan.text
    message["annotations"] = []
    out: dict[str, Any] = {
        "id": plan.id,
        "object": "chat.completion",
        "created": plan.created,
        "model": plan.model,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": _openai_finish(plan)}
        ],
        "usage": _openai_usage(provider, plan),
        "system_fingerprint": "fp_fake",
    }
    if provider == "groq":
        out["x_groq"] = {"id": f"req_fake{plan.id[-10:]}"}
    else:
        out["service_tier"] = "default"
    return out


Event = tuple[str, bytes]  # (tag, wire bytes); tag is "pre", "content" or "post"


def _data(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def openai_events(provider: str, plan: Plan, include_usage: bool) -> list[Event]:
    """The ``chat.completion.chunk`` SSE stream, tagged for the streaming loop."""

    def chunk(
        delta: dict[str, Any], finish: str | None = None, extra: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": plan.id,
            "object": "chat.completion.chunk",
            "created": plan.created,
            "model": plan.model,
            "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if provider == "openai":
            out["service_tier"] = "default"
        if include_usage:
            out["usage"] = None
        out.update(extra or {})
        return out

    groq_id = {"id": f"req_fake{plan.id[-10:]}"}
    first_extra = {"x_groq": groq_id} if provider == "groq" else {}
    events: list[Event] = []
    if plan.tools:
        for k, tool in enumerate(plan.tools):
            start: dict[str, Any] = {
                "index": k,
                "id": tool.id,
                "type": "function",
                "function": {"name": tool.name, "arguments": ""},
            }
            delta: dict[str, Any] = {"tool_calls": [start]}
            if k == 0:
                delta = {"role": "assistant", "content": None, "tool_calls": [start], "refusal": None}
            events.append(("content", _data(chunk(delta, extra=first_extra if k == 0 else None))))
            for piece in tool.fragments:
                frag = {"tool_calls": [{"index": k, "function": {"arguments": piece}}]}
                events.append(("content", _data(chunk(frag))))
    else:
        role = {"role": "assistant", "content": "", "refusal": None}
        events.append(("pre", _data(chunk(role, extra=first_extra))))
        events.extend(("content", _data(chunk({"content": w}))) for w in plan.words)
    usage = _openai_usage(provider, plan)
    last_extra = {"x_groq": {**groq_id, "usage": usage}} if provider == "groq" else {}
    events.append(("post", _data(chunk({}, _openai_finish(plan), last_extra))))
    if include_usage:
        final: dict[str, Any] = {
            "id": plan.id,
            "object": "chat.completion.chunk",
            "created": plan.created,
            "model": plan.model,
            "system_fingerprint": "fp_fake",
            "choices": [],
            "usage": usage,
        }
        if provider == "openai":
            final["service_tier"] = "default"
        events.append(("post", _data(final)))
    events.append(("post", b"data: [DONE]\n\n"))
    return events


_OPENAI_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Forbidden."),
    404: (
        "invalid_request_error",
        "model_not_found",
        "The model does not exist or you do not have access to it.",
    ),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests. Please try again in 1s."),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}


def fake_embedding(text: str, dimensions: int) -> list[float]:
    """A hashed bag of lower-cased words, L2-normalised: deterministic, and paraphrases that share
    their words score close (what a cache test needs from an embeddings API)."""
    vector = [0.0] * dimensions
    for word in re.findall(r"\w+", text.lower()):
        digest = hashlib.sha256(word.encode()).digest()
        vector[int.from_bytes(digest[:4], "big") % dimensions] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


def embeddings_reply(raw: bytes | None) -> tuple[int, dict[str, Any]]:
    """OpenAI's ``POST /v1/embeddings``: ``input`` a string or a list of strings, ``dimensions``."""
    try:
        body = json.loads(raw or b"{}")
        inputs = body["input"]
        model = str(body["model"])
    except (ValueError, KeyError, TypeError):
        return 400, openai_error(400, "'model' and 'input' are required")
    inputs = [inputs] if isinstance(inputs, str) else inputs
    dimensions = body.get("dimensions", 1536)
    if (
        not isinstance(inputs, list)
        or not inputs
        or not all(isinstance(t, str) and t for t in inputs)
        or not isinstance(dimensions, int)
        or not 1 <= dimensions <= 3072
    ):
        return 400, openai_error(400, "input must be a non-empty string or list of strings", "input")
    data = [
        {"object": "embedding", "index": i, "embedding": fake_embedding(t, dimensions)}
        for i, t in enumerate(inputs)
    ]
    tokens = sum(len(t.split()) for t in inputs)
    return 200, {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def openai_error(status: int, message: str | None = None, param: str | None = None) -> dict[str, Any]:
    """OpenAI's (and Groq's) error body."""
    kind, code, default = _OPENAI_ERRORS.get(status, ("server_error", None, f"Fake error {status}."))
    return {"error": {"message": message or default, "type": kind, "param": param, "code": code}}


# ------------------------------------------------------------------------------------ Anthropic shapes


def _anthropic_stop(plan: Plan) -> str:
    return {"tool": "tool_use", "length": "max_tokens"}.get(plan.finish, "end_turn")


def _anthropic_usage(plan: Plan, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": plan.prompt_tokens - plan.cached_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": plan.cached_tokens,
        "output_tokens": output_tokens,
    }


def anthropic_json(plan: Plan) -> dict[str, Any]:
    """A non-stream Messages response."""
    content: list[dict[str, Any]] = [
        {"type": "tool_use", "id": t.id, "name": t.name, "input": json.loads(t.arguments)} for t in plan.tools
    ] or [{"type": "text", "text": plan.text}]
    return {
        "id": plan.id,
        "type": "message",
        "role": "assistant",
        "model": plan.model,
        "content": content,
        "stop_reason": _anthropic_stop(plan),
        "stop_sequence": None,
        "usage": _anthropic_usage(plan, plan.completion_tokens),
    }


def _event(name: str, obj: dict[str, Any]) -> bytes:
    return f"event: {name}\n".encode() + _data(obj)


def _tagged(tag: str, name: str, **payload: Any) -> Event:
    """An Anthropic SSE event whose ``type`` repeats its event name, as the API sends it."""
    return tag, _event(name, {"type": name, **payload})


def anthropic_events(plan: Plan) -> list[Event]:
    """The Messages SSE stream, tagged for the streaming loop."""
    start = {k: v for k, v in anthropic_json(plan).items() if k != "usage"}
    start.update(content=[], stop_reason=None, usage=_anthropic_usage(plan, 1))
    events = [_tagged("pre", "message_start", message=start)]
    ping = _tagged("pre", "ping")
    if plan.tools:
        events.append(ping)
        for k, tool in enumerate(plan.tools):
            block = {"type": "tool_use", "id": tool.id, "name": tool.name, "input": {}}
            events.append(_tagged("content", "content_block_start", index=k, content_block=block))
            for piece in tool.fragments:
                delta = {"type": "input_json_delta", "partial_json": piece}
                events.append(_tagged("content", "content_block_delta", index=k, delta=delta))
            events.append(_tagged("post", "content_block_stop", index=k))
    else:
        events.append(
            _tagged("pre", "content_block_start", index=0, content_block={"type": "text", "text": ""})
        )
        events.append(ping)
        for word in plan.words:
            delta = {"type": "text_delta", "text": word}
            events.append(_tagged("content", "content_block_delta", index=0, delta=delta))
        events.append(_tagged("post", "content_block_stop", index=0))
    stop = {"stop_reason": _anthropic_stop(plan), "stop_sequence": None}
    events.append(
        _tagged("post", "message_delta", delta=stop, usage={"output_tokens": plan.completion_tokens})
    )
    events.append(_tagged("post", "message_stop"))
    return events


_ANTHROPIC_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "Not found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit."),
    500: ("api_error", "Internal server error"),
    503: ("api_error", "Service unavailable"),
    529: ("overloaded_error", "Overloaded"),
}


def anthropic_error(status: int, message: str | None = None, request_id: str = "req_fake") -> dict[str, Any]:
    """Anthropic's error body."""
    kind, default = _ANTHROPIC_ERRORS.get(status, ("api_error", f"Fake error {status}."))
    return {"type": "error", "error": {"type": kind, "message": message or default}, "request_id": request_id}


def error_body(provider: str, status: int, message: str | None = None) -> dict[str, Any]:
    return anthropic_error(status, message) if provider == "anthropic" else openai_error(status, message)


def inband_error(provider: str) -> bytes:
    """The error event a provider sends when it fails after the stream has started."""
    if provider == "anthropic":
        return _event("error", anthropic_error(529, "Overloaded"))
    return _data(openai_error(500))


# ------------------------------------------------------------------------------------------ server


class ClientGone(Exception):
    """The client closed (or reset) the connection before the response ended."""


@dataclass
class _Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


@dataclass
class _State:
    """Server-wide knobs set through ``POST /_fake/state``."""

    down: dict[str, int | str] = field(default_factory=dict)  # provider -> status or "disconnect"
    scenario: dict[str, str] = field(default_factory=dict)  # provider -> default knobs
    require_key: dict[str, str] = field(default_factory=dict)  # provider -> the only accepted key


def _new_stats() -> dict[str, Any]:
    return {
        "requests": dict.fromkeys(PROVIDERS, 0),
        "responses_by_status": {},
        "connections_accepted": 0,
        "open_connections": 0,
        "open_streams": 0,
        "max_open_streams": 0,
        "streams_started": 0,
        "streams_completed": 0,
        "streams_client_closed": 0,
        "streams_server_disconnected": 0,
        "streams_error_event": 0,
        "client_disconnects": 0,
        "embeddings": 0,
        "recent": deque(maxlen=500),
    }


class _Exchange:
    """One request/response on a connection: paced writes that notice a client going away."""

    POLL_S = 0.05  # how soon a client's close is noticed while nothing is being written

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def client_gone(self) -> bool:
        # The protocol feeds EOF (FIN) or the reset into the reader even while nobody reads, so no
        # pending read (which would race the next keep-alive request) is needed to see it.
        return self.reader.at_eof() or self.reader.exception() is not None or self.writer.is_closing()

    async def pause_until(self, deadline: float) -> None:
        """Sleep until ``deadline`` (loop time), checking every POLL_S that the client is still there."""
        loop = asyncio.get_running_loop()
        while (delay := deadline - loop.time()) > 0:
            await asyncio.sleep(min(delay, self.POLL_S))
            if self.client_gone():
                raise ClientGone
        if self.client_gone():
            raise ClientGone

    async def send(self, data: bytes) -> None:
        if self.client_gone():
            raise ClientGone
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, OSError) as exc:
            raise ClientGone from exc


def _head(status: int, headers: list[tuple[str, str]]) -> bytes:
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = "Overloaded" if status == 529 else "Error"
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def _read_request(reader: asyncio.StreamReader) -> _Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            parts.append(await reader.readexactly(size + 2))
            if size == 0:
                break
        body = b"".join(p[:-2] for p in parts)
    else:
        length = int(headers.get("content-length") or 0)
        body = await reader.readexactly(length) if length else b""
    keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
    return _Request(method, target.split("?", 1)[0], headers, body, keep_alive)


class FakeProvider:
    """The server: routes, per-request scenarios, server-wide state and counters."""

    def __init__(self) -> None:
        self.state = _State()
        self.stats = _new_stats()
        self.attempts: dict[str, int] = {}
        self.seq = 0
        self._connections: set[asyncio.Task[Any]] = set()

    async def serve(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(self._connection, host, port, backlog=1024, limit=1 << 20)

    async def shutdown(self, server: asyncio.Server) -> None:
        """Stop listening and end every open connection (for a server on a loop that lives on)."""
        server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)
        self.stats["connections_accepted"] += 1
        self.stats["open_connections"] += 1
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    break
                keep = await self._dispatch(request, _Exchange(reader, writer))
                if not keep or not request.keep_alive:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ValueError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            pass  # shutdown: end quietly (asyncio's stream callback logs a cancelled connection task)
        finally:
            self.stats["open_connections"] -= 1
            with contextlib.suppress(Exception):
                writer.close()

    # ---- plain responses

    async def _send_json(
        self,
        ex: _Exchange,
        status: int,
        obj: Any,
        headers: list[tuple[str, str]] | None = None,
    ) -> bool:
        body = json.dumps(obj, separators=(",", ":")).encode()
        all_headers = [
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
            *(headers or []),
        ]
        key = str(status)
        self.stats["responses_by_status"][key] = self.stats["responses_by_status"].get(key, 0) + 1
        try:
            await ex.send(_head(status, all_headers) + body)
        except ClientGone:
            self.stats["client_disconnects"] += 1
            return False
        return True

    # ---- routing

    async def _dispatch(self, req: _Request, ex: _Exchange) -> bool:
        path, method = req.path.rstrip("/"), req.method
        if path == "/_fake/stats" and method == "GET":
            stats = dict(self.stats, recent=list(self.stats["recent"]))
            return await self._send_json(ex, 200, stats)
        if path == "/_fake/state":
            if method == "POST":
                try:
                    self._set_state(json.loads(req.body or b"{}"))
                except (ValueError, TypeError, AttributeError) as exc:
                    return await self._send_json(ex, 400, {"error": str(exc)})
            return await self._send_json(ex, 200, self._state_json())
        routes = {
            "/openai/v1/chat/completions": "openai",
            "/groq/openai/v1/chat/completions": "groq",
            "/anthropic/v1/messages": "anthropic",
        }
        if path in routes and method == "POST":
            return await self._generate(routes[path], req, ex)
        if path == "/openai/v1/embeddings" and method == "POST":
            if (denied := self._auth_error("openai", req)) is not None:
                return await self._send_json(ex, denied[0], error_body("openai", *denied))
            if isinstance(down := self.state.down.get("openai"), int):
                return await self._send_json(ex, down, error_body("openai", down))
            status, reply = embeddings_reply(req.body)
            self.stats["embeddings"] += status == 200
            return await self._send_json(ex, status, reply)
        for provider in PROVIDERS:
            base = "/groq/openai/v1" if provider == "groq" else f"/{provider}/v1"
            if path == f"{base}/models" and method == "GET":
                if (denied := self._auth_error(provider, req)) is not None:
                    return await self._send_json(ex, denied[0], error_body(provider, *denied))
                return await self._send_json(ex, 200, self._models(provider))
            if path.startswith(f"/{provider}/"):
                return await self._send_json(ex, 404, error_body(provider, 404, f"Unknown path {path}"))
        return await self._send_json(ex, 404, {"error": f"unknown path {path}"})

    def _set_state(self, update: dict[str, Any]) -> None:
        if update.get("reset"):
            self.state, self.stats, self.attempts = _State(), _new_stats(), {}
        for name in ("down", "scenario", "require_key"):
            current: dict[str, Any] = getattr(self.state, name)
            for provider, value in (update.get(name) or {}).items():
                if provider not in PROVIDERS:
                    raise ValueError(f"unknown provider {provider!r}")
                if value is None:
                    current.pop(provider, None)
                else:
                    current[provider] = value
            if name == "scenario":
                for text in current.values():
                    apply_scenario(Knobs(), text)  # reject typos now, not on every request

    def _state_json(self) -> dict[str, Any]:
        s = self.state
        return {"down": s.down, "scenario": s.scenario, "require_key": sorted(s.require_key)}

    def _models(self, provider: str) -> dict[str, Any]:
        if provider == "anthropic":
            data = [
                {"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
                for m in MODELS[provider]
            ]
            return {"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]}
        owner = "groq" if provider == "groq" else "system"
        return {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": 1700000000, "owned_by": owner}
                for m in MODELS[provider]
            ],
        }

    def _auth_error(self, provider: str, req: _Request) -> tuple[int, str] | None:
        """(status, message) when the request's credentials would be refused, else None."""
        auth = req.headers.get("authorization", "")
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        if provider == "anthropic":
            # x-api-key is the documented header; the anthropic SDK 2.x sends its api_key as a Bearer.
            key = req.headers.get("x-api-key", "") or key
            if not req.headers.get("anthropic-version"):
                return 400, "anthropic-version: header is required"
        required = self.state.require_key.get(provider)
        if not key or key.startswith("bad") or (required is not None and key != required):
            return 401, "invalid x-api-key" if provider == "anthropic" else "Incorrect API key provided."
        return None

    # ---- generation

    async def _generate(self, provider: str, req: _Request, ex: _Exchange) -> bool:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        self.seq += 1
        self.stats["requests"][provider] += 1
        record: dict[str, Any] = {
            "seq": self.seq,
            "t": time.time(),
            "provider": provider,
            "request_key": req.headers.get("x-fake-request-key"),
            "status": None,
            "outcome": "in_progress",
        }
        self.stats["recent"].append(record)
        rid = f"req_fake{self.seq:010d}"
        response_headers = [("request-id" if provider == "anthropic" else "x-request-id", rid)]

        async def fail(status: int, message: str | None = None, retry_after: str | None = None) -> bool:
            record.update(status=status, outcome="error")
            headers = response_headers + ([("retry-after", retry_after)] if retry_after is not None else [])
            return await self._send_json(ex, status, error_body(provider, status, message), headers)

        down = self.state.down.get(provider)
        if down == "disconnect":
            record.update(outcome="dropped")
            return False
        if down is not None:
            return await fail(int(down), retry_after="1" if int(down) == 429 else None)
        if (denied := self._auth_error(provider, req)) is not None:
            return await fail(*denied)
        try:
            body = json.loads(req.body)
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
        except ValueError as exc:
            return await fail(400, f"We could not parse the JSON body of your request: {exc}")
        raw_model = body.get("model")
        messages = body.get("messages")
        if not isinstance(raw_model, str) or not raw_model:
            return await fail(400, "model: field required")
        if not isinstance(messages, list) or not messages:
            return await fail(400, "messages: at least one message is required")
        if provider == "anthropic" and not isinstance(body.get("max_tokens"), int):
            return await fail(400, "max_tokens: Field required")
        model, _, model_knobs = raw_model.partition("::")
        knobs = Knobs()
        try:
            for text in (
                self.state.scenario.get(provider, ""),
                model_knobs,
                req.headers.get("x-fake-scenario", ""),
            ):
                apply_scenario(knobs, text)
        except KnobError as exc:
            return await fail(400, str(exc))
        stream = body.get("stream") is True
        include_usage = bool((body.get("stream_options") or {}).get("include_usage")) and not knobs.no_usage
        record.update(
            model=model,
            stream=stream,
            include_usage=include_usage,
            knobs={k: v for k, v in asdict(knobs).items() if v != getattr(_DEFAULT_KNOBS, k)},
        )

        request_key = record["request_key"] or hashlib.sha256(provider.encode() + req.body).hexdigest()[:16]
        attempt = self.attempts.get(request_key, 0) + 1
        self.attempts[request_key] = attempt
        record["attempt"] = attempt
        response_headers.append(("x-fake-attempt", str(attempt)))

        try:
            await ex.pause_until(t0 + knobs.headers_ms / 1000)
        except ClientGone:
            record.update(outcome="client_closed")
            self.stats["client_disconnects"] += 1
            return False
        error = knobs.error
        if knobs.fail_first and attempt > knobs.fail_first:
            error = None
        elif knobs.fail_first and error is None:
            error = "529" if provider == "anthropic" else "503"
        if error == "disconnect":
            record.update(outcome="dropped")
            return False
        if error is not None:
            try:
                status = int(error)
            except ValueError:
                return await fail(400, f"bad value for fake scenario knob 'error': {error!r}")
            retry_after = (
                knobs.retry_after if knobs.retry_after is not None else ("1" if status == 429 else None)
            )
            return await fail(status, retry_after=retry_after)

        try:
            plan = make_plan(provider, body, knobs, model, self.seq)
        except (TypeError, AttributeError, ValueError):  # a body a real provider would refuse: so do we
            return await fail(400, "the request body has fields of the wrong type")
        record.update(
            prompt_tokens=plan.prompt_tokens, completion_tokens=plan.completion_tokens, chunks_sent=0
        )
        if stream:
            return await self._stream(provider, plan, knobs, include_usage, ex, record, response_headers)
        return await self._complete(provider, plan, knobs, ex, record, response_headers)

    def _content_deadline(self, knobs: Knobs, start: float, index: int) -> float:
        """When content chunk ``index`` (0-based) goes out: first token, interval steps, a stall."""
        offset = knobs.first_token_ms + index * knobs.interval_ms
        if knobs.stall_after is not None and index >= knobs.stall_after:
            offset += knobs.stall_ms
        return start + offset / 1000

    async def _complete(
        self,
        provider: str,
        plan: Plan,
        knobs: Knobs,
        ex: _Exchange,
        record: dict[str, Any],
        headers: list[tuple[str, str]],
    ) -> bool:
        """A non-stream reply, sent when the last chunk of the equivalent stream would have been."""
        start = asyncio.get_running_loop().time()
        n = plan.completion_tokens
        cut = min(
            (x for x in (knobs.disconnect_after, knobs.error_after) if x is not None and x < n), default=None
        )
        last = max((cut if cut is not None else n) - 1, 0)
        try:
            await ex.pause_until(self._content_deadline(knobs, start, last))
        except ClientGone:
            record.update(outcome="client_closed")
            self.stats["client_disconnects"] += 1
            return False
        if cut is not None and cut == knobs.disconnect_after:
            record.update(outcome="server_disconnect")
            return False
        if cut is not None:
            status = 529 if provider == "anthropic" else 500
            record.update(status=status, outcome="error")
            return await self._send_json(ex, status, error_body(provider, status), headers)
        record.update(status=200, outcome="completed")
        out = anthropic_json(plan) if provider == "anthropic" else openai_json(provider, plan)
        return await self._send_json(ex, 200, out, headers)

    async def _stream(
        self,
        provider: str,
        plan: Plan,
        knobs: Knobs,
        include_usage: bool,
        ex: _Exchange,
        record: dict[str, Any],
        headers: list[tuple[str, str]],
    ) -> bool:
        """Headers at once, then each SSE event in its own HTTP chunk, paced by the knobs."""
        stats = self.stats
        events = (
            anthropic_events(plan)
            if provider == "anthropic"
            else openai_events(provider, plan, include_usage)
        )
        head = _head(
            200,
            [
                ("content-type", SSE_CONTENT_TYPE),
                ("transfer-encoding", "chunked"),
                ("cache-control", "no-cache"),
                ("connection", "keep-alive"),
                *headers,
            ],
        )
        record["status"] = 200
        stats["responses_by_status"]["200"] = stats["responses_by_status"].get("200", 0) + 1
        stats["streams_started"] += 1
        stats["open_streams"] += 1
        stats["max_open_streams"] = max(stats["max_open_streams"], stats["open_streams"])
        start = asyncio.get_running_loop().time()
        sent = 0
        try:
            await ex.send(head)
            await ex.pause_until(self._content_deadline(knobs, start, 0))
            for tag, data in events:
                if tag != "pre":
                    if knobs.disconnect_after is not None and sent >= knobs.disconnect_after:
                        # Everything written so far is flushed first (close, not abort), so the
                        # client sees the chunks it was sent, then a body that never ends properly.
                        record.update(outcome="server_disconnect")
                        stats["streams_server_disconnected"] += 1
                        ex.writer.close()
                        return False
                    if knobs.error_after is not None and sent >= knobs.error_after:
                        await ex.send(_chunk(inband_error(provider)))
                        await ex.send(b"0\r\n\r\n")
                        record.update(outcome="error_event")
                        stats["streams_error_event"] += 1
                        return True
                if tag == "content":
                    await ex.pause_until(self._content_deadline(knobs, start, sent))
                await ex.send(_chunk(data))
                if tag == "content":
                    sent += 1
                    record["chunks_sent"] = sent
            await ex.send(b"0\r\n\r\n")
            record.update(outcome="completed")
            stats["streams_completed"] += 1
            return True
        except ClientGone:
            record.update(outcome="client_closed")
            stats["streams_client_closed"] += 1
            stats["client_disconnects"] += 1
            return False
        finally:
            record["t_end"] = time.time()
            stats["open_streams"] -= 1


# ------------------------------------------------------------------------------------ running it


async def _main(host: str, port: int) -> None:
    provider = FakeProvider()
    server = await provider.serve(host, port)
    bound = server.sockets[0].getsockname()[1]
    print(f"fake provider listening on http://{host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await provider.shutdown(server)  # open streams end now, not when their last chunk is due


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args(argv)
    asyncio.run(_main(args.host, args.port))


@contextlib.contextmanager
def running_fake_provider(*, port: int | None = None, in_thread: bool = False) -> Iterator[str]:
    """Run the fake on a free port for the block; yields its base URL (``http://127.0.0.1:PORT``).

    A subprocess by default, so the fake's CPU does not share the caller's GIL (timings stay
    honest); ``in_thread=True`` runs it on an event loop in a daemon thread instead (faster to start).
    """
    from infra.redis_server import free_port, stop_process

    port = port or free_port()
    if in_thread:
        loop = asyncio.new_event_loop()
        provider = FakeProvider()
        server = loop.run_until_complete(provider.serve("127.0.0.1", port))
        thread = threading.Thread(target=loop.run_forever, name="fake-provider", daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            asyncio.run_coroutine_threadsafe(provider.shutdown(server), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            loop.close()
        return
    proc = subprocess.Popen(
        [sys.executable, "-m", "localstack.fake_provider", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        line = proc.stdout.readline().decode() if ready else ""
        if "listening on" not in line:
            raise RuntimeError(f"fake provider did not start (exit {proc.poll()}): {line!r}")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc, timeout_s=5)


def fake_stats(base_url: str) -> dict[str, Any]:
    """The fake's counters (``GET /_fake/stats``)."""
    result: dict[str, Any] = httpx.get(f"{base_url}/_fake/stats", timeout=5).raise_for_status().json()
    return result


def set_fake_state(base_url: str, **update: Any) -> dict[str, Any]:
    """Change server-wide knobs, e.g. ``set_fake_state(url, down={"openai": 503})`` or ``reset=True``."""
    result: dict[str, Any] = (
        httpx.post(f"{base_url}/_fake/state", json=update, timeout=5).raise_for_status().json()
    )
    return result


if __name__ == "__main__":
    main()
