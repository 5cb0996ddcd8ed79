"""Translate OpenAI Chat Completions and Anthropic Messages: a client of either API reaches any model.

Pure functions and small stateful stream translators over plain JSON dicts (what arrives on the wire); no I/O.

Stop reasons (exact, both ways)::

    Anthropic stop_reason            -> OpenAI finish_reason
    end_turn                         -> stop
    stop_sequence                    -> stop            (OpenAI does not say which sequence matched)
    max_tokens                       -> length
    model_context_window_exceeded    -> length
    tool_use                         -> tool_calls
    pause_turn                       -> stop            (server tools only; those are not translated)
    refusal                          -> content_filter
    None / unknown                   -> stop

    OpenAI finish_reason             -> Anthropic stop_reason
    stop                             -> end_turn        (OpenAI's "stop" covers a stop sequence too; it
                                                         strips the sequence and never names it, so
                                                         stop_sequence cannot be recovered)
    length                           -> max_tokens
    tool_calls, function_call        -> tool_use
    content_filter                   -> refusal
    stop/tool_calls + tool calls     -> tool_use        (some providers say "stop" after tool calls, and
                                                         Anthropic clients loop on stop_reason == tool_use)
    stop with a refusal delta/message -> refusal
    None / unknown                   -> end_turn

Usage: OpenAI's ``prompt_tokens`` INCLUDES cached tokens (``prompt_tokens_details.cached_tokens``, a subset);
Anthropic's ``input_tokens`` EXCLUDES both ``cache_read_input_tokens`` and ``cache_creation_input_tokens``.
``TokenUsage`` holds the provider-neutral form (``input_tokens`` = every prompt token) and converts::

    OpenAI prompt_tokens     = Anthropic input_tokens + cache_read_input_tokens + cache_creation_input_tokens
    OpenAI cached_tokens     = Anthropic cache_read_input_tokens
    OpenAI completion_tokens = Anthropic output_tokens
    OpenAI total_tokens      = prompt_tokens + completion_tokens
    Anthropic input_tokens   = prompt_tokens - cached_tokens   (cache_creation_input_tokens = 0: OpenAI
                                                                does not report cache writes)

Tool calls: OpenAI ``function.arguments`` is a JSON *string*, Anthropic ``tool_use.input`` a JSON *object*.
Arguments that are not a JSON object (models do emit broken JSON, e.g. when cut by max_tokens) travel as
``{RAW_ARGUMENTS_KEY: "<the string>"}`` and are turned back into the same string the other way, so nothing
is lost or invented; empty arguments are ``{}``.

Deliberately dropped (no equivalent on the other side): OpenAI frequency/presence penalties, logit_bias, seed,
logprobs, service_tier, store, reasoning_effort, the free-form ``metadata``; Anthropic top_k, thinking,
cache_control, tool_result ``is_error``, thinking blocks in responses and streams. Things that would change
the answer if dropped (n > 1, response_format json, audio/file parts, server tools, images in tool results)
raise ``TranslationError`` so the proxy can answer 400.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

from shared.api.json_reader import loads as bounded_loads

from .sse import encode_event

__all__ = [
    "ANTHROPIC_TO_OPENAI_FINISH",
    "OPENAI_TO_ANTHROPIC_STOP",
    "RAW_ARGUMENTS_KEY",
    "AnthropicToOpenAIStream",
    "AnthropicUsage",
    "OpenAIToAnthropicStream",
    "OpenAIUsage",
    "TokenUsage",
    "TranslationError",
    "anthropic_error_event",
    "anthropic_error_payload",
    "anthropic_stop_to_openai",
    "anthropic_to_openai_request",
    "anthropic_to_openai_response",
    "client_wants_usage",
    "encode_anthropic_events",
    "encode_openai_chunks",
    "extract_openai_usage",
    "openai_chunk_for_client",
    "openai_error_chunk",
    "openai_error_event",
    "openai_finish_to_anthropic",
    "openai_to_anthropic_request",
    "openai_to_anthropic_response",
    "prepare_openai_stream_request",
]

JSON = dict[str, Any]

RAW_ARGUMENTS_KEY = "_raw_arguments"
"""Key under which tool arguments that are not a JSON object travel inside an Anthropic ``input``."""


class TranslationError(ValueError):
    """The body uses something the other API cannot express; the proxy should answer 400 with this message."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


# ---------------------------------------------------------------------------------------------------------
# stop reasons and usage


ANTHROPIC_TO_OPENAI_FINISH: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "pause_turn": "stop",
    "refusal": "content_filter",
}

OPENAI_TO_ANTHROPIC_STOP: dict[str, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def anthropic_stop_to_openai(stop_reason: str | None) -> str:
    """Anthropic ``stop_reason`` -> OpenAI ``finish_reason`` (table in the module docstring)."""
    return ANTHROPIC_TO_OPENAI_FINISH.get(stop_reason or "", "stop")


def openai_finish_to_anthropic(
    finish_reason: str | None, *, has_tool_calls: bool = False, refusal: bool = False
) -> str:
    """OpenAI ``finish_reason`` -> Anthropic ``stop_reason`` (table in the module docstring)."""
    if has_tool_calls and finish_reason in (None, "stop", "tool_calls", "function_call"):
        return "tool_use"
    if refusal and finish_reason in (None, "stop"):
        return "refusal"
    return OPENAI_TO_ANTHROPIC_STOP.get(finish_reason or "", "end_turn")


class _PromptTokensDetails(TypedDict, total=False):
    cached_tokens: int


class OpenAIUsage(TypedDict, total=False):
    """OpenAI ``usage`` (Chat Completions)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: _PromptTokensDetails


class AnthropicUsage(TypedDict, total=False):
    """Anthropic ``usage`` (Messages)."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


@dataclass(slots=True)
class TokenUsage:
    """Provider-neutral token counts, for cost accounting. ``input_tokens`` counts EVERY prompt token; the two
    cache fields are subsets of it, so uncached input = input - cached - cache_creation."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_creation_input_tokens: int = 0

    @property
    def uncached_input_tokens(self) -> int:
        return max(0, self.input_tokens - self.cached_input_tokens - self.cache_creation_input_tokens)

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @classmethod
    def from_openai(cls, usage: Mapping[str, Any]) -> TokenUsage:
        details = usage.get("prompt_tokens_details") or {}
        return cls(
            input_tokens=_int(usage.get("prompt_tokens")),
            output_tokens=_int(usage.get("completion_tokens")),
            cached_input_tokens=_int(details.get("cached_tokens")) if isinstance(details, Mapping) else 0,
        )

    @classmethod
    def from_anthropic(cls, usage: Mapping[str, Any]) -> TokenUsage:
        read = _int(usage.get("cache_read_input_tokens"))
        write = _int(usage.get("cache_creation_input_tokens"))
        return cls(
            input_tokens=_int(usage.get("input_tokens")) + read + write,
            output_tokens=_int(usage.get("output_tokens")),
            cached_input_tokens=read,
            cache_creation_input_tokens=write,
        )

    def to_openai(self) -> OpenAIUsage:
        return {
            "prompt_tokens": self.input_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_input_tokens},
        }

    def to_anthropic(self) -> AnthropicUsage:
        return {
            "input_tokens": self.uncached_input_tokens,
            "output_tokens": self.output_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cached_input_tokens,
        }


def extract_openai_usage(chunk: Mapping[str, Any]) -> TokenUsage | None:
    """Usage carried by an OpenAI-format chunk or completion: ``usage`` (OpenAI, Groq with include_usage) or
    ``x_groq.usage`` (Groq's own field on its final chunk). None when the chunk carries none."""
    usage = chunk.get("usage")
    if not isinstance(usage, Mapping):
        groq = chunk.get("x_groq")
        usage = groq.get("usage") if isinstance(groq, Mapping) else None
    return TokenUsage.from_openai(usage) if isinstance(usage, Mapping) else None


# ---------------------------------------------------------------------------------------------------------
# OpenAI-format pass-through: always ask the upstream for usage, hide it again from clients that did not ask


def client_wants_usage(body: Mapping[str, Any]) -> bool:
    """Did the OpenAI-format client ask for the usage chunk (``stream_options.include_usage``)?"""
    options = body.get("stream_options")
    return bool(isinstance(options, Mapping) and options.get("include_usage"))


def prepare_openai_stream_request(body: Mapping[str, Any]) -> tuple[JSON, bool]:
    """(body for an OpenAI-format upstream with ``include_usage`` forced on when streaming, whether the
    client asked for usage). Cost needs the provider's count; ``openai_chunk_for_client`` hides it again."""
    wants = client_wants_usage(body)
    out = dict(body)
    if out.get("stream"):
        options = dict(out.get("stream_options") or {})
        options["include_usage"] = True
        out["stream_options"] = options
    return out, wants


def openai_chunk_for_client(chunk: JSON, *, client_wants_usage: bool) -> JSON | None:
    """The upstream chunk as the client should see it: None to drop it; the very same object when unchanged
    (so the proxy can forward the original bytes untouched). A client that did not ask loses the usage-only
    chunk (``choices: []``) and any non-null ``usage`` riding on a content chunk; ``"usage": null`` is left
    alone, as OpenAI's SDK ignores it and rewriting every chunk for it would cost CPU for nothing."""
    if client_wants_usage or chunk.get("usage") is None:
        return chunk
    if not chunk.get("choices"):
        return None
    return {k: v for k, v in chunk.items() if k != "usage"}


# ---------------------------------------------------------------------------------------------------------
# shared helpers

_DATA_URL = re.compile(r"^data:(?P<media>[\w.+-]+/[\w.+-]+);base64,(?P<data>.*)$", re.DOTALL)
_TOOL_ID_BAD = re.compile(r"[^a-zA-Z0-9_-]")


def _anthropic_tool_id(tool_id: Any) -> str:
    """Anthropic tool ids must match ``^[a-zA-Z0-9_-]+$``; other providers' ids may not (mapped the same way
    in tool_use and tool_result, so the pair still matches)."""
    return _TOOL_ID_BAD.sub("_", str(tool_id)) or "toolu_"


def _arguments_to_input(arguments: Any) -> JSON:
    if isinstance(arguments, Mapping):
        return dict(arguments)
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}
    try:
        value = bounded_loads(arguments)  # the client's own JSON, inside its body: bounded the same way
    except (TypeError, ValueError):
        return {RAW_ARGUMENTS_KEY: arguments}
    return value if isinstance(value, dict) else {RAW_ARGUMENTS_KEY: arguments}


def _input_to_arguments(value: Any) -> str:
    if isinstance(value, Mapping) and len(value) == 1 and isinstance(value.get(RAW_ARGUMENTS_KEY), str):
        return str(value[RAW_ARGUMENTS_KEY])
    return json.dumps(value if value is not None else {}, ensure_ascii=False)


def _openai_text(content: Any, where: str) -> str:
    """Text of an OpenAI message content (string or list of text/refusal parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for part in content:
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind == "text":
                texts.append(str(part.get("text") or ""))
            elif kind == "refusal":
                texts.append(str(part.get("refusal") or ""))
            else:
                raise TranslationError(f"{where}: content part of type {kind!r} is not supported here")
        return "".join(texts)
    raise TranslationError(f"{where}: content must be a string or a list of parts")


def _anthropic_text(content: Any, where: str) -> str:
    """Text of an Anthropic system/tool_result content (string or list of text blocks)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for block in content:
            kind = block.get("type") if isinstance(block, Mapping) else None
            if kind != "text":
                raise TranslationError(f"{where}: content block of type {kind!r} is not supported here")
            texts.append(str(block.get("text") or ""))
        return "".join(texts)
    raise TranslationError(f"{where}: content must be a string or a list of blocks")


def _openai_image_to_anthropic(part: Mapping[str, Any], where: str) -> JSON:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, Mapping) else image
    if not isinstance(url, str) or not url:
        raise TranslationError(f"{where}: image_url needs a url")
    m = _DATA_URL.match(url)
    if m:
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": m.group("media"), "data": m.group("data")},
        }
    return {"type": "image", "source": {"type": "url", "url": url}}


def _anthropic_image_to_openai(block: Mapping[str, Any], where: str) -> JSON:
    source = block.get("source") or {}
    kind = source.get("type")
    if kind == "base64":
        url = f"data:{source.get('media_type')};base64,{source.get('data')}"
    elif kind == "url":
        url = str(source.get("url"))
    else:
        raise TranslationError(f"{where}: image source of type {kind!r} is not supported")
    return {"type": "image_url", "image_url": {"url": url}}


# ---------------------------------------------------------------------------------------------------------
# requests: OpenAI -> Anthropic


def _openai_user_blocks(content: Any, where: str) -> str | list[JSON]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise TranslationError(f"{where}: content must be a string or a list of parts")
    blocks: list[JSON] = []
    for part in content:
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text":
            text = str(part.get("text") or "")
            if text:  # Anthropic rejects empty text blocks
                blocks.append({"type": "text", "text": text})
        elif kind == "image_url":
            blocks.append(_openai_image_to_anthropic(part, where))
        else:
            raise TranslationError(f"{where}: content part of type {kind!r} cannot be sent to this model")
    return blocks


def _as_blocks(content: str | list[JSON]) -> list[JSON]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return content


def _openai_tool_to_anthropic(tool: Mapping[str, Any], where: str) -> JSON:
    if tool.get("type", "function") != "function":
        raise TranslationError(
            f"{where}: tools of type {tool.get('type')!r} are not supported", param="tools"
        )
    fn = tool.get("function") if "function" in tool else tool  # legacy `functions` entries are bare
    if not isinstance(fn, Mapping) or not fn.get("name"):
        raise TranslationError(f"{where}: a function tool needs a name", param="tools")
    schema = fn.get("parameters") or {"type": "object", "properties": {}}
    out: JSON = {"name": fn["name"], "input_schema": schema}
    if fn.get("description"):
        out["description"] = fn["description"]
    return out


def _openai_tool_choice_to_anthropic(choice: Any, parallel: Any) -> JSON | None:
    result: JSON
    if choice is None:
        if parallel is not False:
            return None
        result = {"type": "auto"}
    elif choice == "auto":
        result = {"type": "auto"}
    elif choice == "none":
        return {"type": "none"}
    elif choice == "required":
        result = {"type": "any"}
    elif isinstance(choice, Mapping):
        fn = choice.get("function") if "function" in choice else choice  # legacy function_call={"name": ...}
        name = fn.get("name") if isinstance(fn, Mapping) else None
        if not name:
            raise TranslationError("tool_choice: a specific choice needs function.name", param="tool_choice")
        result = {"type": "tool", "name": name}
    else:
        raise TranslationError(f"tool_choice {choice!r} is not supported", param="tool_choice")
    if parallel is False:
        result["disable_parallel_tool_use"] = True
    return result


def openai_to_anthropic_request(body: Mapping[str, Any], *, default_max_tokens: int) -> JSON:
    """An OpenAI Chat Completions request as an Anthropic Messages request.

    System and developer messages (wherever they stand) become ``system``: a string for one, text blocks for
    several. Consecutive tool results, and a user message right after them, merge into one user message whose
    ``tool_result`` blocks come first, as Anthropic requires. ``max_tokens`` is required by Anthropic, hence
    ``default_max_tokens``; ``temperature`` is clamped to Anthropic's 0..1 (OpenAI allows up to 2)."""
    n = body.get("n")
    if n not in (None, 1):
        raise TranslationError("n > 1 is not supported for this model", param="n")
    fmt = body.get("response_format")
    if isinstance(fmt, Mapping) and fmt.get("type") not in (None, "text"):
        raise TranslationError(
            f"response_format {fmt.get('type')!r} is not supported for this model", param="response_format"
        )

    system: list[str] = []
    messages: list[JSON] = []
    tool_results: JSON | None = None  # the open user message collecting tool results, if the last one is
    for i, msg in enumerate(body.get("messages") or []):
        where = f"messages[{i}]"
        if not isinstance(msg, Mapping):
            raise TranslationError(f"{where}: must be an object", param="messages")
        role = msg.get("role")
        if role in ("system", "developer"):
            text = _openai_text(msg.get("content"), where)
            if text:
                system.append(text)
        elif role == "user":
            content = _openai_user_blocks(msg.get("content"), where)
            if tool_results is not None:
                tool_results["content"].extend(_as_blocks(content))
                tool_results = None
            else:
                messages.append({"role": "user", "content": content})
        elif role == "assistant":
            tool_results = None
            text = _openai_text(msg.get("content"), where)
            calls = msg.get("tool_calls") or []
            if msg.get("function_call"):  # legacy single function call
                calls = [*calls, {"id": f"call_{i}", "type": "function", "function": msg["function_call"]}]
            if not calls:
                if text:  # Anthropic rejects empty assistant turns; an empty one says nothing anyway
                    messages.append({"role": "assistant", "content": text})
                continue
            blocks: list[JSON] = [{"type": "text", "text": text}] if text else []
            for call in calls:
                fn = call.get("function") or {}
                if call.get("type", "function") != "function" or not fn.get("name"):
                    raise TranslationError(
                        f"{where}: only function tool calls are supported", param="messages"
                    )
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": _anthropic_tool_id(call.get("id")),
                        "name": fn["name"],
                        "input": _arguments_to_input(fn.get("arguments")),
                    }
                )
            messages.append({"role": "assistant", "content": blocks})
        elif role in ("tool", "function"):
            tool_id = msg.get("tool_call_id")
            if role == "function":  # legacy: results name the function, matching the synthetic call id
                tool_id = tool_id or _last_call_id(messages, msg.get("name"))
            if not tool_id:
                raise TranslationError(f"{where}: a tool message needs tool_call_id", param="messages")
            raw = msg.get("content")
            block: JSON = {
                "type": "tool_result",
                "tool_use_id": _anthropic_tool_id(tool_id),
                "content": raw if isinstance(raw, str) else _openai_tool_result_blocks(raw, where),
            }
            if tool_results is None:
                tool_results = {"role": "user", "content": [block]}
                messages.append(tool_results)
            else:
                tool_results["content"].append(block)
        else:
            raise TranslationError(f"{where}: unknown role {role!r}", param="messages")

    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or default_max_tokens
    out: JSON = {"model": body.get("model"), "max_tokens": max_tokens, "messages": messages}
    if system:
        out["system"] = system[0] if len(system) == 1 else [{"type": "text", "text": t} for t in system]

    tools = body.get("tools")
    if tools is None and body.get("functions"):
        tools = [{"type": "function", "function": f} for f in body["functions"]]
    choice = body.get("tool_choice", body.get("function_call"))
    if tools:
        out["tools"] = [_openai_tool_to_anthropic(t, f"tools[{k}]") for k, t in enumerate(tools)]
        tool_choice = _openai_tool_choice_to_anthropic(choice, body.get("parallel_tool_calls"))
        if tool_choice is not None:
            out["tool_choice"] = tool_choice

    temperature = body.get("temperature")
    if temperature is not None:
        out["temperature"] = min(1.0, max(0.0, float(temperature)))
    if body.get("top_p") is not None:
        out["top_p"] = body["top_p"]
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("stream"):
        out["stream"] = True
    user = body.get("user") or body.get("safety_identifier")
    if user:
        out["metadata"] = {"user_id": str(user)}
    return out


def _last_call_id(messages: list[JSON], name: Any) -> str | None:
    for msg in reversed(messages):
        if msg["role"] == "assistant" and isinstance(msg["content"], list):
            for block in reversed(msg["content"]):
                if block.get("type") == "tool_use" and block.get("name") == name:
                    return str(block["id"])
            return None
    return None


def _openai_tool_result_blocks(content: Any, where: str) -> list[JSON]:
    if content is None:
        return []
    if not isinstance(content, list):
        raise TranslationError(f"{where}: tool content must be a string or a list of text parts")
    blocks: list[JSON] = []
    for part in content:
        if not isinstance(part, Mapping) or part.get("type") != "text":
            raise TranslationError(f"{where}: tool content parts must be text")
        if part.get("text"):
            blocks.append({"type": "text", "text": str(part["text"])})
    return blocks


# ---------------------------------------------------------------------------------------------------------
# requests: Anthropic -> OpenAI


def _anthropic_tool_to_openai(tool: Mapping[str, Any], where: str) -> JSON:
    if tool.get("type") not in (None, "custom"):
        raise TranslationError(
            f"{where}: Anthropic tools of type {tool.get('type')!r} have no equivalent here", param="tools"
        )
    fn: JSON = {"name": tool.get("name"), "parameters": tool.get("input_schema") or {"type": "object"}}
    if tool.get("description"):
        fn["description"] = tool["description"]
    return {"type": "function", "function": fn}


def _anthropic_tool_choice_to_openai(choice: Mapping[str, Any]) -> tuple[Any, bool]:
    """(OpenAI tool_choice or None, disable parallel tool use)."""
    kind = choice.get("type")
    disable = bool(choice.get("disable_parallel_tool_use"))
    if kind == "auto":
        return "auto", disable
    if kind == "any":
        return "required", disable
    if kind == "none":
        return "none", False
    if kind == "tool":
        return {"type": "function", "function": {"name": choice.get("name")}}, disable
    raise TranslationError(f"tool_choice of type {kind!r} is not supported", param="tool_choice")


def anthropic_to_openai_request(body: Mapping[str, Any]) -> JSON:
    """An Anthropic Messages request as an OpenAI Chat Completions request.

    ``system`` becomes one system message (a string) or one per text block; ``tool_result`` blocks become
    ``role: tool`` messages placed before the rest of their user turn (OpenAI wants them right after the
    assistant's tool calls). When streaming, ``stream_options.include_usage`` is always set: cost accounting
    needs the provider's own count."""
    messages: list[JSON] = []
    system = body.get("system")
    if isinstance(system, str):
        if system:
            messages.append({"role": "system", "content": system})
    elif isinstance(system, list):
        for k, block in enumerate(system):
            text = _anthropic_text([block], f"system[{k}]")
            if text:
                messages.append({"role": "system", "content": text})
    elif system is not None:
        raise TranslationError("system must be a string or a list of text blocks", param="system")

    for i, msg in enumerate(body.get("messages") or []):
        where = f"messages[{i}]"
        if not isinstance(msg, Mapping):
            raise TranslationError(f"{where}: must be an object", param="messages")
        role, content = msg.get("role"), msg.get("content")
        if role not in ("user", "assistant"):
            raise TranslationError(f"{where}: unknown role {role!r}", param="messages")
        if isinstance(content, str):
            messages.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            raise TranslationError(f"{where}: content must be a string or a list of blocks", param="messages")
        if role == "user":
            parts: list[JSON] = []
            for j, block in enumerate(content):
                kind = block.get("type") if isinstance(block, Mapping) else None
                bwhere = f"{where}.content[{j}]"
                if kind == "tool_result":
                    raw = block.get("content")
                    messages.append(
                        {
                            "role": "tool",
                            "tool_call_id": block.get("tool_use_id"),
                            "content": raw if isinstance(raw, str) else _tool_result_parts(raw, bwhere),
                        }
                    )
                elif kind == "text":
                    parts.append({"type": "text", "text": block.get("text") or ""})
                elif kind == "image":
                    parts.append(_anthropic_image_to_openai(block, bwhere))
                else:
                    raise TranslationError(
                        f"{bwhere}: block of type {kind!r} is not supported", param="messages"
                    )
            if parts:
                messages.append({"role": "user", "content": parts})
        else:
            texts: list[str] = []
            calls: list[JSON] = []
            for j, block in enumerate(content):
                kind = block.get("type") if isinstance(block, Mapping) else None
                if kind == "text":
                    texts.append(block.get("text") or "")
                elif kind == "tool_use":
                    calls.append(
                        {
                            "id": block.get("id"),
                            "type": "function",
                            "function": {
                                "name": block.get("name"),
                                "arguments": _input_to_arguments(block.get("input")),
                            },
                        }
                    )
                elif kind in ("thinking", "redacted_thinking"):
                    continue  # signed reasoning only Anthropic can verify; other models cannot use it
                else:
                    raise TranslationError(
                        f"{where}.content[{j}]: block of type {kind!r} is not supported", param="messages"
                    )
            # OpenAI takes null content only beside tool calls (a turn that was all thinking becomes "")
            out_msg: JSON = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
            if calls:
                out_msg["tool_calls"] = calls
            messages.append(out_msg)

    out: JSON = {"model": body.get("model"), "messages": messages}
    if body.get("max_tokens") is not None:
        out["max_completion_tokens"] = body["max_tokens"]
    tools = body.get("tools")
    if tools:
        out["tools"] = [_anthropic_tool_to_openai(t, f"tools[{k}]") for k, t in enumerate(tools)]
        choice = body.get("tool_choice")
        if isinstance(choice, Mapping):
            tool_choice, disable_parallel = _anthropic_tool_choice_to_openai(choice)
            out["tool_choice"] = tool_choice
            if disable_parallel:
                out["parallel_tool_calls"] = False
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            out[key] = body[key]
    if body.get("stop_sequences"):
        out["stop"] = list(body["stop_sequences"])
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    metadata = body.get("metadata")
    if isinstance(metadata, Mapping) and metadata.get("user_id"):
        out["user"] = str(metadata["user_id"])
    return out


def _tool_result_parts(content: Any, where: str) -> list[JSON]:
    if content is None:
        return []
    if not isinstance(content, list):
        raise TranslationError(f"{where}: tool_result content must be a string or a list of blocks")
    parts: list[JSON] = []
    for block in content:
        if not isinstance(block, Mapping) or block.get("type") != "text":
            kind = block.get("type") if isinstance(block, Mapping) else None
            raise TranslationError(
                f"{where}: tool_result blocks of type {kind!r} cannot be sent to this model"
            )
        parts.append({"type": "text", "text": block.get("text") or ""})
    return parts


# ---------------------------------------------------------------------------------------------------------
# non-streaming responses


def anthropic_to_openai_response(msg: Mapping[str, Any], *, model: str, created: int | None = None) -> JSON:
    """An Anthropic Message as an OpenAI ``chat.completion`` (thinking and server-tool blocks are dropped)."""
    texts: list[str] = []
    calls: list[JSON] = []
    for block in msg.get("content") or []:
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "tool_use":
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {
                        "name": block.get("name"),
                        "arguments": _input_to_arguments(block.get("input")),
                    },
                }
            )
    message: JSON = {
        "role": "assistant",
        "content": "".join(texts) if texts else (None if calls else ""),
        "refusal": None,
    }
    if calls:
        message["tool_calls"] = calls
    return {
        "id": msg.get("id"),
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": anthropic_stop_to_openai(msg.get("stop_reason")),
            }
        ],
        "usage": TokenUsage.from_anthropic(msg.get("usage") or {}).to_openai(),
    }


def openai_to_anthropic_response(
    completion: Mapping[str, Any], *, model: str, message_id: str | None = None
) -> JSON:
    """An OpenAI ``chat.completion`` (first choice) as an Anthropic Message. Usage from ``usage`` or Groq's
    ``x_groq.usage``; absent usage gives zeros (the proxy should then mark its cost record estimated)."""
    choices = completion.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message") or {}
    content: list[JSON] = []
    text = _openai_text(message.get("content"), "choices[0].message")
    if text:
        content.append({"type": "text", "text": text})
    refusal = message.get("refusal")
    if refusal:
        content.append({"type": "text", "text": str(refusal)})
    calls = list(message.get("tool_calls") or [])
    if message.get("function_call"):
        calls.append({"id": "call_0", "type": "function", "function": message["function_call"]})
    for call in calls:
        fn = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": _anthropic_tool_id(call.get("id")),
                "name": fn.get("name"),
                "input": _arguments_to_input(fn.get("arguments")),
            }
        )
    usage = extract_openai_usage(completion) or TokenUsage()
    return {
        "id": message_id or completion.get("id"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": openai_finish_to_anthropic(
            choice.get("finish_reason"), has_tool_calls=bool(calls), refusal=bool(refusal)
        ),
        "stop_sequence": None,
        "usage": usage.to_anthropic(),
    }


# ---------------------------------------------------------------------------------------------------------
# error events (a stream that must end early: timeout, upstream cut); never followed by [DONE]/message_stop


_ANTHROPIC_ERROR_TYPES = frozenset(
    {
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "not_found_error",
        "request_too_large",
        "rate_limit_error",
        "api_error",
        "overloaded_error",
        "timeout_error",
    }
)


def openai_error_chunk(
    message: str, type: str = "server_error", code: str | None = None, param: str | None = None
) -> JSON:
    """The in-band error object OpenAI (and its SDK, which raises ``APIError`` on it) uses mid-stream."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def openai_error_event(message: str, type: str = "server_error", code: str | None = None) -> bytes:
    """``data: {"error": {...}}`` as a complete SSE event. Suggested types: ``server_error`` (upstream cut),
    ``timeout`` with code ``idle_timeout``/``first_token_timeout``; end the body after it, with no [DONE]."""
    return encode_event(openai_error_chunk(message, type, code))


def anthropic_error_payload(message: str, type: str = "api_error") -> JSON:
    """Anthropic's error event body; types as in its API: api_error, overloaded_error, timeout_error, ..."""
    return {"type": "error", "error": {"type": type, "message": message}}


def anthropic_error_event(message: str, type: str = "api_error") -> bytes:
    """``event: error`` as a complete SSE event (the SDK raises on it); no message_stop may follow."""
    return encode_event(anthropic_error_payload(message, type), event="error")


def encode_openai_chunks(chunks: Iterable[Mapping[str, Any]]) -> bytes:
    """Translated OpenAI chunks as SSE bytes (without [DONE]; the caller adds ``sse.DONE`` at a clean end)."""
    return b"".join(encode_event(chunk) for chunk in chunks)


def encode_anthropic_events(events: Iterable[tuple[str, Mapping[str, Any]]]) -> bytes:
    """Translated Anthropic ``(event, data)`` pairs as SSE bytes."""
    return b"".join(encode_event(data, event=name) for name, data in events)


# ---------------------------------------------------------------------------------------------------------
# streams: Anthropic upstream -> OpenAI client


class AnthropicToOpenAIStream:
    """Feed Anthropic stream events one at a time; get the OpenAI ``chat.completion.chunk`` dicts to send now.

    The first chunk carries ``role: assistant``; text deltas become ``content`` deltas; each ``tool_use``
    block becomes a tool call (index counted over tool blocks only) whose first delta carries id/name and
    whose ``input_json_delta`` fragments follow as ``arguments`` fragments. ``message_delta`` gives the chunk
    with ``finish_reason`` and, if ``include_usage``, the usage chunk (``choices: []``) right after. The
    caller writes ``[DONE]`` once ``done`` is True, and an error event instead if the stream is cut before."""

    def __init__(
        self, model: str, completion_id: str, include_usage: bool, *, created: int | None = None
    ) -> None:
        self.model = model
        self.completion_id = completion_id
        self.include_usage = include_usage
        self.created = int(time.time()) if created is None else created
        self.stop_reason: str | None = None
        self.done = False  # message_stop seen: the caller may write [DONE]
        self.errored = False  # the upstream sent an error event: the caller must NOT write [DONE]
        self._started = False
        self._finished = False
        self._usage: dict[str, int] | None = None
        self._tools: dict[int, int] = {}  # Anthropic block index -> OpenAI tool call index
        self._tool_args: dict[int, bool] = {}  # Anthropic block index -> any arguments sent yet

    @property
    def usage(self) -> TokenUsage | None:
        """Usage seen so far (message_start, then message_delta's cumulative counts), even on a cut stream."""
        return TokenUsage.from_anthropic(self._usage) if self._usage is not None else None

    def _merge_usage(self, usage: Any) -> None:
        if not isinstance(usage, Mapping):
            return
        current = self._usage if self._usage is not None else {}
        for key in (
            "input_tokens",
            "output_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
        ):
            value = usage.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                current[key] = value  # message_delta counts are cumulative: overwrite, never add
        self._usage = current

    def _chunk(self, delta: JSON, finish_reason: str | None = None) -> JSON:
        chunk: JSON = {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if self.include_usage:
            chunk["usage"] = None  # as OpenAI does on every chunk but the last when usage was asked for
        return chunk

    def _start(self, out: list[JSON]) -> None:
        if not self._started:
            self._started = True
            out.append(self._chunk({"role": "assistant", "content": ""}))

    def _finish(self, out: list[JSON]) -> None:
        if self._finished:
            return
        self._finished = True
        self._start(out)
        out.append(self._chunk({}, anthropic_stop_to_openai(self.stop_reason)))
        if self.include_usage:
            out.append(
                {
                    "id": self.completion_id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "choices": [],
                    "usage": (self.usage or TokenUsage()).to_openai(),
                }
            )

    def feed(self, event_name: str | None, data: Mapping[str, Any]) -> list[JSON]:
        """One upstream event (SSE ``event`` name, parsed ``data``) -> the OpenAI chunks to send now."""
        kind = data.get("type") or event_name
        out: list[JSON] = []
        if self.done or self.errored:
            return out
        if kind == "message_start":
            message = data.get("message") or {}
            self._merge_usage(message.get("usage"))
            self._start(out)
        elif kind == "content_block_start":
            self._start(out)
            block = data.get("content_block") or {}
            index = data.get("index", 0)
            if block.get("type") == "text" and block.get("text"):
                out.append(self._chunk({"content": block["text"]}))
            elif block.get("type") == "tool_use":
                call_index = len(self._tools)
                self._tools[index] = call_index
                initial = block.get("input")
                arguments = json.dumps(initial, ensure_ascii=False) if initial else ""
                self._tool_args[index] = bool(arguments)
                call = {
                    "index": call_index,
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": arguments},
                }
                out.append(self._chunk({"tool_calls": [call]}))
        elif kind == "content_block_delta":
            self._start(out)
            delta = data.get("delta") or {}
            index = data.get("index", 0)
            dkind = delta.get("type")
            if dkind == "text_delta":
                if delta.get("text"):
                    out.append(self._chunk({"content": delta["text"]}))
            elif dkind == "input_json_delta" and index in self._tools:
                fragment = delta.get("partial_json") or ""
                if fragment:
                    self._tool_args[index] = True
                    call = {"index": self._tools[index], "function": {"arguments": fragment}}
                    out.append(self._chunk({"tool_calls": [call]}))
            # thinking_delta, signature_delta, citations_delta: no OpenAI equivalent
        elif kind == "content_block_stop":
            index = data.get("index", 0)
            if index in self._tools and not self._tool_args.get(index):
                # a tool without arguments: give OpenAI clients "{}" rather than "", which json.loads rejects
                self._tool_args[index] = True
                call = {"index": self._tools[index], "function": {"arguments": "{}"}}
                out.append(self._chunk({"tool_calls": [call]}))
        elif kind == "message_delta":
            delta = data.get("delta") or {}
            if delta.get("stop_reason"):
                self.stop_reason = delta["stop_reason"]
            self._merge_usage(data.get("usage"))
            self._finish(out)
        elif kind == "message_stop":
            self._finish(out)
            self.done = True
        elif kind == "error":
            error = data.get("error") or {}
            self.errored = True
            out.append(
                openai_error_chunk(
                    str(error.get("message") or "upstream error"), str(error.get("type") or "server_error")
                )
            )
        # ping and unknown (future) events: nothing to send
        return out

    def finish(self) -> list[JSON]:
        """The upstream ended cleanly without ``message_stop``: close the OpenAI stream as well as we can."""
        if self.done or self.errored:
            return []
        out: list[JSON] = []
        self._finish(out)
        self.done = True
        return out


# ---------------------------------------------------------------------------------------------------------
# streams: OpenAI-format upstream (OpenAI, Groq) -> Anthropic client


class OpenAIToAnthropicStream:
    """Feed OpenAI-format chunks one at a time; get the Anthropic ``(event, data)`` pairs to send now.

    Sequence: ``message_start`` (usage zeros: OpenAI reports usage only at the end), then per content block
    ``content_block_start``/``content_block_delta``.../``content_block_stop`` (text, tool_use; indexes count
    blocks in order), then ``message_delta`` (stop_reason and the final usage) and ``message_stop``.
    The one thing held back is ``message_delta``: it must carry usage, which OpenAI sends after the
    ``finish_reason`` chunk (a ``choices: []`` chunk), Groq on it (``x_groq.usage``). Call ``finish()`` on
    ``[DONE]``/clean end; on a cut or timeout send ``anthropic_error_event`` instead and never call it."""

    def __init__(self, model: str, message_id: str) -> None:
        self.model = model
        self.message_id = message_id
        self.finish_reason: str | None = None
        self.done = False  # message_stop sent
        self.errored = False  # the upstream sent an error chunk; an error event was produced
        self._usage: TokenUsage | None = None
        self._started = False
        self._next_index = 0
        self._open: Literal["text", "tool"] | None = None
        self._open_tool: int | None = None
        self._tools: dict[int, int] = {}  # OpenAI tool call index -> Anthropic block index
        self._refusal = False

    @property
    def usage(self) -> TokenUsage | None:
        """The provider-reported usage, once seen (None until then: a cut stream must be estimated)."""
        return self._usage

    @property
    def stop_reason(self) -> str:
        return openai_finish_to_anthropic(
            self.finish_reason, has_tool_calls=bool(self._tools), refusal=self._refusal
        )

    def _start(self, out: list[tuple[str, JSON]]) -> None:
        if self._started:
            return
        self._started = True
        usage = (self._usage or TokenUsage()).to_anthropic()
        message: JSON = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        }
        out.append(("message_start", {"type": "message_start", "message": message}))

    def _close_block(self, out: list[tuple[str, JSON]]) -> None:
        if self._open is not None:
            out.append(("content_block_stop", {"type": "content_block_stop", "index": self._next_index - 1}))
            self._open = None
            self._open_tool = None

    def _open_block(self, out: list[tuple[str, JSON]], block: JSON) -> int:
        self._close_block(out)
        index = self._next_index
        self._next_index += 1
        out.append(
            ("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})
        )
        return index

    def _text(self, text: str, out: list[tuple[str, JSON]]) -> None:
        if self._open != "text":
            self._open_block(out, {"type": "text", "text": ""})
            self._open = "text"
        delta = {"type": "text_delta", "text": text}
        out.append(
            (
                "content_block_delta",
                {"type": "content_block_delta", "index": self._next_index - 1, "delta": delta},
            )
        )

    def _tool(self, call: Mapping[str, Any], out: list[tuple[str, JSON]]) -> None:
        position = call.get("index")
        position = position if isinstance(position, int) else len(self._tools)
        fn = call.get("function") or {}
        if position not in self._tools:
            tool_id = call.get("id") or f"toolu_{self.message_id}_{position}"
            block: JSON = {
                "type": "tool_use",
                "id": _anthropic_tool_id(tool_id),
                "name": fn.get("name") or "",
                "input": {},
            }
            self._tools[position] = self._open_block(out, block)
            self._open = "tool"
            self._open_tool = position
        elif self._open != "tool" or self._open_tool != position:
            # Anthropic blocks are strictly sequential; a closed block cannot be reopened
            raise TranslationError(
                "the provider interleaved tool call deltas; they cannot be translated in order"
            )
        fragment = fn.get("arguments")
        if fragment:
            delta = {"type": "input_json_delta", "partial_json": fragment}
            event = {"type": "content_block_delta", "index": self._tools[position], "delta": delta}
            out.append(("content_block_delta", event))

    def _end(self, out: list[tuple[str, JSON]]) -> None:
        self._start(out)
        self._close_block(out)
        usage = (self._usage or TokenUsage()).to_anthropic()
        delta = {"stop_reason": self.stop_reason, "stop_sequence": None}
        out.append(("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}))
        out.append(("message_stop", {"type": "message_stop"}))
        self.done = True

    def feed(self, chunk: Mapping[str, Any]) -> list[tuple[str, JSON]]:
        """One parsed upstream chunk -> the Anthropic events to send now. Raises ``TranslationError`` on tool
        call deltas it cannot order (the caller then ends the stream with an error event)."""
        out: list[tuple[str, JSON]] = []
        usage = extract_openai_usage(chunk)
        if usage is not None:
            self._usage = usage
        if self.done or self.errored:
            return out
        error = chunk.get("error")
        if isinstance(error, Mapping) and not chunk.get("choices"):
            self.errored = True
            kind = str(error.get("type") or "")
            kind = kind if kind in _ANTHROPIC_ERROR_TYPES else "api_error"
            out.append(
                ("error", anthropic_error_payload(str(error.get("message") or "upstream error"), kind))
            )
            return out
        self._start(out)
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue  # n > 1 is refused at request time; ignore stray choices
            delta = choice.get("delta") or {}
            if delta.get("content"):
                self._text(delta["content"], out)
            if delta.get("refusal"):
                self._refusal = True
                self._text(delta["refusal"], out)
            for call in delta.get("tool_calls") or []:
                self._tool(call, out)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
                self._close_block(out)
        if self.finish_reason is not None and self._usage is not None:
            self._end(out)
        return out

    def finish(self) -> list[tuple[str, JSON]]:
        """The upstream ended cleanly ([DONE]): send what is still owed, with whatever usage was reported."""
        if self.done or self.errored:
            return []
        out: list[tuple[str, JSON]] = []
        self._end(out)
        return out
