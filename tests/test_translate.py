"""OpenAI <-> Anthropic translation: golden examples, round trips, stream translators, and the official SDKs
reading what the translators produce (served over a local HTTP socket, as the proxy will)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from shared.proxy.sse import DONE, SSEEvent, SSEParser
from shared.proxy.translate import (
    RAW_ARGUMENTS_KEY,
    AnthropicToOpenAIStream,
    OpenAIToAnthropicStream,
    TokenUsage,
    TranslationError,
    anthropic_error_event,
    anthropic_stop_to_openai,
    anthropic_to_openai_request,
    anthropic_to_openai_response,
    client_wants_usage,
    encode_anthropic_events,
    encode_openai_chunks,
    extract_openai_usage,
    openai_chunk_for_client,
    openai_error_event,
    openai_finish_to_anthropic,
    openai_to_anthropic_request,
    openai_to_anthropic_response,
    prepare_openai_stream_request,
)

JSON = dict[str, Any]

# ------------------------------------------------------------------------------------------ stop reasons


@pytest.mark.parametrize(
    ("anthropic", "openai"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("pause_turn", "stop"),
        ("refusal", "content_filter"),
        (None, "stop"),
        ("something_new", "stop"),
    ],
)
def test_anthropic_stop_to_openai(anthropic: str | None, openai: str) -> None:
    assert anthropic_stop_to_openai(anthropic) == openai


@pytest.mark.parametrize(
    ("finish", "tools", "refusal", "expected"),
    [
        ("stop", False, False, "end_turn"),
        ("length", False, False, "max_tokens"),
        ("tool_calls", True, False, "tool_use"),
        ("function_call", True, False, "tool_use"),
        ("content_filter", False, False, "refusal"),
        ("stop", True, False, "tool_use"),  # providers that say "stop" after tool calls
        ("length", True, False, "max_tokens"),  # a cut tool call is still a cut
        ("stop", False, True, "refusal"),
        (None, False, False, "end_turn"),
        ("weird", False, False, "end_turn"),
    ],
)
def test_openai_finish_to_anthropic(finish: str | None, tools: bool, refusal: bool, expected: str) -> None:
    assert openai_finish_to_anthropic(finish, has_tool_calls=tools, refusal=refusal) == expected


# ----------------------------------------------------------------------------------------------- usage


def test_usage_cached_tokens_are_inside_openai_prompt_tokens_but_outside_anthropic_input_tokens() -> None:
    anthropic = {
        "input_tokens": 100,
        "cache_read_input_tokens": 1000,
        "cache_creation_input_tokens": 50,
        "output_tokens": 7,
    }
    usage = TokenUsage.from_anthropic(anthropic)
    assert usage == TokenUsage(
        input_tokens=1150, output_tokens=7, cached_input_tokens=1000, cache_creation_input_tokens=50
    )
    assert usage.uncached_input_tokens == 100
    assert usage.to_openai() == {
        "prompt_tokens": 1150,
        "completion_tokens": 7,
        "total_tokens": 1157,
        "prompt_tokens_details": {"cached_tokens": 1000},
    }
    assert usage.to_anthropic() == anthropic

    openai = {
        "prompt_tokens": 16111,
        "completion_tokens": 20,
        "total_tokens": 16131,
        "prompt_tokens_details": {"cached_tokens": 15872, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }
    usage = TokenUsage.from_openai(openai)
    assert usage.to_anthropic() == {
        "input_tokens": 239,
        "output_tokens": 20,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 15872,
    }
    assert TokenUsage.from_anthropic(usage.to_anthropic()) == usage


def test_usage_tolerates_nulls_and_missing_details() -> None:
    assert TokenUsage.from_openai(
        {"prompt_tokens": 5, "completion_tokens": 1, "prompt_tokens_details": None}
    ) == (TokenUsage(5, 1))
    assert TokenUsage.from_anthropic(
        {"input_tokens": 3, "output_tokens": 2, "cache_read_input_tokens": None}
    ) == TokenUsage(3, 2)


def test_extract_usage_from_openai_and_groq() -> None:
    assert extract_openai_usage({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2}}) == (
        TokenUsage(4, 2)
    )
    groq_final = {
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        "x_groq": {"id": "req_1", "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}},
    }
    assert extract_openai_usage(groq_final) == TokenUsage(9, 3)
    assert extract_openai_usage({"choices": [], "usage": None}) is None
    assert extract_openai_usage({"choices": [{"delta": {"content": "x"}}]}) is None


# ------------------------------------------------------------------------------------- requests: golden

OPENAI_REQUEST: JSON = {
    "model": "gpt-4o",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather here?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg", "detail": "low"}},
            ],
        },
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                },
                {"id": "call.2", "type": "function", "function": {"name": "get_time", "arguments": ""}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "call.2", "content": [{"type": "text", "text": "12:00"}]},
        {"role": "user", "content": "Thanks"},
        {"role": "assistant", "content": "You're welcome."},
        {"role": "user", "content": "Bye"},
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        },
        {"type": "function", "function": {"name": "get_time"}},
    ],
    "tool_choice": "required",
    "parallel_tool_calls": False,
    "max_completion_tokens": 300,
    "max_tokens": 999,
    "temperature": 1.7,
    "top_p": 0.9,
    "stop": "END",
    "stream": True,
    "stream_options": {"include_usage": True},
    "user": "tenant-7",
    "seed": 3,
    "frequency_penalty": 0.5,
}

ANTHROPIC_FROM_OPENAI: JSON = {
    "model": "gpt-4o",
    "max_tokens": 300,
    "system": [{"type": "text", "text": "You are terse."}, {"type": "text", "text": "Use tools."}],
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather here?"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
                },
                {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                {
                    "type": "tool_result",
                    "tool_use_id": "call_2",
                    "content": [{"type": "text", "text": "12:00"}],
                },
                {"type": "text", "text": "Thanks"},
            ],
        },
        {"role": "assistant", "content": "You're welcome."},
        {"role": "user", "content": "Bye"},
    ],
    "tools": [
        {
            "name": "get_weather",
            "input_schema": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
            "description": "Weather for a city",
        },
        {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
    ],
    "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
    "temperature": 1.0,
    "top_p": 0.9,
    "stop_sequences": ["END"],
    "stream": True,
    "metadata": {"user_id": "tenant-7"},
}


def test_openai_to_anthropic_request_golden() -> None:
    assert openai_to_anthropic_request(OPENAI_REQUEST, default_max_tokens=4096) == ANTHROPIC_FROM_OPENAI


def test_openai_to_anthropic_request_minimal() -> None:
    body = {"model": "m", "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}]}
    assert openai_to_anthropic_request(body, default_max_tokens=1024) == {
        "model": "m",
        "max_tokens": 1024,
        "system": "S",
        "messages": [{"role": "user", "content": "hi"}],
    }
    assert openai_to_anthropic_request({**body, "max_tokens": 5}, default_max_tokens=1)["max_tokens"] == 5


ANTHROPIC_REQUEST: JSON = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 1024,
    "system": [
        {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Use tools."},
    ],
    "messages": [
        {"role": "user", "content": "What's the weather?"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C", "is_error": False},
                {"type": "text", "text": "And tomorrow?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/"}},
            ],
        },
    ],
    "tools": [
        {
            "name": "get_weather",
            "description": "Weather",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
            "cache_control": {"type": "ephemeral"},
        }
    ],
    "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
    "temperature": 0.2,
    "top_k": 5,
    "stop_sequences": ["###"],
    "stream": True,
    "metadata": {"user_id": "u-1"},
    "thinking": {"type": "enabled", "budget_tokens": 1024},
}

OPENAI_FROM_ANTHROPIC: JSON = {
    "model": "claude-sonnet-4-5",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "What's the weather?"},
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "And tomorrow?"},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/"}},
            ],
        },
    ],
    "max_completion_tokens": 1024,
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                "description": "Weather",
            },
        }
    ],
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "parallel_tool_calls": False,
    "temperature": 0.2,
    "stop": ["###"],
    "stream": True,
    "stream_options": {"include_usage": True},
    "user": "u-1",
}


def test_anthropic_to_openai_request_golden() -> None:
    assert anthropic_to_openai_request(ANTHROPIC_REQUEST) == OPENAI_FROM_ANTHROPIC


@pytest.mark.parametrize(
    ("openai_choice", "parallel", "anthropic_choice"),
    [
        ("auto", None, {"type": "auto"}),
        ("none", None, {"type": "none"}),
        ("required", None, {"type": "any"}),
        ({"type": "function", "function": {"name": "f"}}, None, {"type": "tool", "name": "f"}),
        ("auto", False, {"type": "auto", "disable_parallel_tool_use": True}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        (None, None, None),
    ],
)
def test_tool_choice_both_ways(openai_choice: Any, parallel: Any, anthropic_choice: JSON | None) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    body: JSON = {"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": tools}
    if openai_choice is not None:
        body["tool_choice"] = openai_choice
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    anthropic = openai_to_anthropic_request(body, default_max_tokens=10)
    assert anthropic.get("tool_choice") == anthropic_choice
    back = anthropic_to_openai_request(anthropic)
    expected = openai_choice if openai_choice is not None else ("auto" if parallel is False else None)
    assert back.get("tool_choice") == expected
    assert back.get("parallel_tool_calls") == parallel


def test_assistant_turn_of_only_thinking_has_empty_content() -> None:
    body = {
        "model": "c",
        "max_tokens": 5,
        "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "t", "signature": "s"}]},
            {"role": "user", "content": "y"},
        ],
    }
    assert anthropic_to_openai_request(body)["messages"][1] == {"role": "assistant", "content": ""}


def test_stream_request_always_asks_for_usage() -> None:
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "stream": True}
    assert anthropic_to_openai_request(body)["stream_options"] == {"include_usage": True}
    assert "stream_options" not in anthropic_to_openai_request({**body, "stream": False})


# ----------------------------------------------------------------------------------- requests: round trips

OPENAI_ROUND_TRIPS: list[JSON] = [
    {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 10},
    {
        "model": "m",
        "messages": [
            {"role": "system", "content": "A"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": [1, 2]}'}},
                    {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{oops"}},
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "r1"},
            {"role": "tool", "tool_call_id": "c2", "content": "r2"},
            {"role": "assistant", "content": "done"},
        ],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "max_completion_tokens": 10,
        "temperature": 0.5,
        "top_p": 1,
        "stop": ["a", "b"],
        "user": "u",
    },
]


@pytest.mark.parametrize("body", OPENAI_ROUND_TRIPS)
def test_openai_request_round_trip(body: JSON) -> None:
    anthropic = openai_to_anthropic_request(body, default_max_tokens=99)
    assert anthropic_to_openai_request(anthropic) == body


ANTHROPIC_ROUND_TRIPS: list[JSON] = [
    {"model": "c", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
    {
        "model": "c",
        "max_tokens": 8,
        "system": "sys",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "q"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "t"},
                    {"type": "tool_use", "id": "toolu_a", "name": "f", "input": {"k": "v"}},
                    {
                        "type": "tool_use",
                        "id": "toolu_b",
                        "name": "f",
                        "input": {RAW_ARGUMENTS_KEY: "not json"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_a", "content": "ok"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_b",
                        "content": [{"type": "text", "text": "x"}],
                    },
                    {"type": "text", "text": "next"},
                ],
            },
        ],
        "tools": [{"name": "f", "description": "d", "input_schema": {"type": "object", "properties": {}}}],
        "tool_choice": {"type": "any"},
        "temperature": 0.3,
        "stop_sequences": ["z"],
        "stream": True,
        "metadata": {"user_id": "u"},
    },
]


@pytest.mark.parametrize("body", ANTHROPIC_ROUND_TRIPS)
def test_anthropic_request_round_trip(body: JSON) -> None:
    openai = anthropic_to_openai_request(body)
    assert openai_to_anthropic_request(openai, default_max_tokens=1) == body


@pytest.mark.parametrize(
    "body",
    [
        {"n": 2, "messages": []},
        {"response_format": {"type": "json_schema", "json_schema": {}}, "messages": []},
        {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
        {"messages": [{"role": "tool", "content": "x"}]},
        {"messages": [{"role": "wizard", "content": "x"}]},
        {"messages": [], "tools": [{"type": "custom", "custom": {"name": "x"}}]},
    ],
)
def test_openai_request_untranslatable(body: JSON) -> None:
    with pytest.raises(TranslationError):
        openai_to_anthropic_request({"model": "m", **body}, default_max_tokens=1)


@pytest.mark.parametrize(
    "body",
    [
        {"messages": [], "tools": [{"type": "web_search_20250305", "name": "web_search"}]},
        {"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "image"}]}],
                }
            ]
        },
    ],
)
def test_anthropic_request_untranslatable(body: JSON) -> None:
    with pytest.raises(TranslationError):
        anthropic_to_openai_request({"model": "m", "max_tokens": 1, **body})


def test_prepare_openai_stream_request_and_chunk_filter() -> None:
    body = {"model": "m", "messages": [], "stream": True}
    upstream, wants = prepare_openai_stream_request(body)
    assert upstream["stream_options"] == {"include_usage": True} and not wants
    assert "stream_options" not in body  # the caller's body is not mutated
    _, wants = prepare_openai_stream_request({**body, "stream_options": {"include_usage": True}})
    assert wants and client_wants_usage({"stream_options": {"include_usage": True}})
    assert "stream_options" not in prepare_openai_stream_request({"stream": False})[0]

    content = {"choices": [{"index": 0, "delta": {"content": "x"}}], "usage": None}
    usage_only = {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}
    riding = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 1}}
    assert openai_chunk_for_client(content, client_wants_usage=False) is content
    assert openai_chunk_for_client(usage_only, client_wants_usage=False) is None
    assert openai_chunk_for_client(usage_only, client_wants_usage=True) is usage_only
    stripped = openai_chunk_for_client(riding, client_wants_usage=False)
    assert stripped == {"choices": riding["choices"]} and "usage" in riding


# -------------------------------------------------------------------------------- non-stream responses

ANTHROPIC_MESSAGE: JSON = {
    "id": "msg_01",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5",
    "content": [
        {"type": "thinking", "thinking": "...", "signature": "s"},
        {"type": "text", "text": "Let me check. "},
        {"type": "text", "text": "One moment."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris", "n": [1]}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 10,
        "cache_read_input_tokens": 90,
        "cache_creation_input_tokens": 0,
        "output_tokens": 5,
    },
}


def test_anthropic_to_openai_response_golden() -> None:
    assert anthropic_to_openai_response(ANTHROPIC_MESSAGE, model="claude-x", created=1700000000) == {
        "id": "msg_01",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "claude-x",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Let me check. One moment.",
                    "refusal": None,
                    "tool_calls": [
                        {
                            "id": "toolu_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Paris", "n": [1]}'},
                        }
                    ],
                },
                "logprobs": None,
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {
            "prompt_tokens": 100,
            "completion_tokens": 5,
            "total_tokens": 105,
            "prompt_tokens_details": {"cached_tokens": 90},
        },
    }


OPENAI_COMPLETION: JSON = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Sure.",
                "refusal": None,
                "tool_calls": [
                    {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}},
                    {"id": "call_b", "type": "function", "function": {"name": "g", "arguments": ""}},
                    {"id": "call_c", "type": "function", "function": {"name": "h", "arguments": '{"cut": '}},
                ],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {
        "prompt_tokens": 50,
        "completion_tokens": 9,
        "total_tokens": 59,
        "prompt_tokens_details": {"cached_tokens": 32},
    },
}


def test_openai_to_anthropic_response_golden() -> None:
    assert openai_to_anthropic_response(OPENAI_COMPLETION, model="gpt-x") == {
        "id": "chatcmpl-1",
        "type": "message",
        "role": "assistant",
        "model": "gpt-x",
        "content": [
            {"type": "text", "text": "Sure."},
            {"type": "tool_use", "id": "call_a", "name": "f", "input": {"a": 1}},
            {"type": "tool_use", "id": "call_b", "name": "g", "input": {}},
            {"type": "tool_use", "id": "call_c", "name": "h", "input": {RAW_ARGUMENTS_KEY: '{"cut": '}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 18,
            "output_tokens": 9,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 32,
        },
    }


@pytest.mark.parametrize(
    ("finish", "stop"), [("stop", "end_turn"), ("length", "max_tokens"), ("content_filter", "refusal")]
)
def test_openai_response_stop_reasons_and_groq_usage(finish: str, stop: str) -> None:
    completion = {
        "id": "x",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": finish}],
        "x_groq": {"usage": {"prompt_tokens": 3, "completion_tokens": 1}},
    }
    message = openai_to_anthropic_response(completion, model="llama", message_id="msg_x")
    assert message["stop_reason"] == stop and message["id"] == "msg_x"
    assert message["usage"]["input_tokens"] == 3 and message["usage"]["output_tokens"] == 1


def test_response_round_trips() -> None:
    openai = anthropic_to_openai_response(ANTHROPIC_MESSAGE, model="claude-sonnet-4-5", created=1)
    back = openai_to_anthropic_response(openai, model="claude-sonnet-4-5")
    expected = {
        **ANTHROPIC_MESSAGE,
        "content": [{"type": "text", "text": "Let me check. One moment."}, ANTHROPIC_MESSAGE["content"][3]],
    }
    assert back == expected
    anthropic = openai_to_anthropic_response(OPENAI_COMPLETION, model="gpt-4o")
    again = anthropic_to_openai_response(anthropic, model="gpt-4o", created=1)
    expected_calls = OPENAI_COMPLETION["choices"][0]["message"]["tool_calls"]
    assert again["choices"][0]["message"]["tool_calls"][0] == expected_calls[0]
    assert again["choices"][0]["message"]["tool_calls"][1]["function"]["arguments"] == "{}"
    assert again["choices"][0]["message"]["tool_calls"][2] == expected_calls[2]  # broken JSON kept verbatim
    assert again["usage"] == OPENAI_COMPLETION["usage"]


# ------------------------------------------------------------------------------------------- streams

ANTHROPIC_EVENTS: list[tuple[str, JSON]] = [
    (
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_01",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-5",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": 472,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 1024,
                    "output_tokens": 2,
                },
            },
        },
    ),
    ("ping", {"type": "ping"}),
    (
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}},
    ),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hm"}},
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    (
        "content_block_start",
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
    ),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Let me"}},
    ),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": " check."}},
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 1}),
    (
        "content_block_start",
        {
            "type": "content_block_start",
            "index": 2,
            "content_block": {"type": "tool_use", "id": "toolu_A", "name": "get_weather", "input": {}},
        },
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 2,
            "delta": {"type": "input_json_delta", "partial_json": ""},
        },
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 2,
            "delta": {"type": "input_json_delta", "partial_json": '{"city":'},
        },
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 2,
            "delta": {"type": "input_json_delta", "partial_json": ' "Paris", "unit": "c"}'},
        },
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 2}),
    (
        "content_block_start",
        {
            "type": "content_block_start",
            "index": 3,
            "content_block": {"type": "tool_use", "id": "toolu_B", "name": "get_time", "input": {}},
        },
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 3}),
    (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"output_tokens": 89},
        },
    ),
    ("message_stop", {"type": "message_stop"}),
]


def _choice_delta(chunk: JSON) -> JSON:
    delta: JSON = chunk["choices"][0]["delta"]
    return delta


def test_anthropic_to_openai_stream_golden() -> None:
    stream = AnthropicToOpenAIStream("claude-x", "chatcmpl-9", include_usage=True, created=7)
    per_event = [stream.feed(name, data) for name, data in ANTHROPIC_EVENTS]
    chunks = [c for out in per_event for c in out]
    assert all(c["id"] == "chatcmpl-9" and c["object"] == "chat.completion.chunk" for c in chunks)
    assert all(c["model"] == "claude-x" and c["created"] == 7 for c in chunks)
    # emitted immediately: each content event gives its chunk at once
    assert [len(out) for out in per_event] == [1, 0, 0, 0, 0, 0, 1, 1, 0, 1, 0, 1, 1, 0, 1, 1, 2, 0]
    assert _choice_delta(chunks[0]) == {"role": "assistant", "content": ""}
    assert [_choice_delta(c) for c in chunks[1:-2]] == [
        {"content": "Let me"},
        {"content": " check."},
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "toolu_A",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": ' "Paris", "unit": "c"}'}}]},
        {
            "tool_calls": [
                {
                    "index": 1,
                    "id": "toolu_B",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]},
    ]
    assert all(c["usage"] is None for c in chunks[:-1])
    finish = chunks[-2]
    assert finish["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "tool_calls"}]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 1496,
        "completion_tokens": 89,
        "total_tokens": 1585,
        "prompt_tokens_details": {"cached_tokens": 1024},
    }
    assert stream.done and not stream.errored
    assert stream.usage == TokenUsage(1496, 89, 1024, 0)
    assert stream.feed("ping", {"type": "ping"}) == [] and stream.finish() == []


def test_anthropic_to_openai_stream_without_usage_and_cut() -> None:
    stream = AnthropicToOpenAIStream("m", "id", include_usage=False)
    chunks = [c for name, data in ANTHROPIC_EVENTS for c in stream.feed(name, data)]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert all("usage" not in c for c in chunks)

    cut = AnthropicToOpenAIStream("m", "id", include_usage=True)
    for name, data in ANTHROPIC_EVENTS[:8]:
        cut.feed(name, data)
    assert not cut.done
    assert cut.usage == TokenUsage(1496, 2, 1024, 0)  # message_start usage is kept for cost accounting


def test_anthropic_to_openai_stream_error_event() -> None:
    stream = AnthropicToOpenAIStream("m", "id", include_usage=True)
    stream.feed(*ANTHROPIC_EVENTS[0])
    out = stream.feed(
        "error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    )
    assert out == [
        {"error": {"message": "Overloaded", "type": "overloaded_error", "param": None, "code": None}}
    ]
    assert stream.errored and not stream.done
    assert stream.feed(*ANTHROPIC_EVENTS[-1]) == [] and stream.finish() == []


def _openai_chunk(delta: JSON | None = None, finish: str | None = None, **extra: Any) -> JSON:
    choices = (
        [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    )
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o",
        "choices": choices,
        **extra,
    }


OPENAI_CHUNKS: list[JSON] = [
    _openai_chunk({"role": "assistant", "content": "", "refusal": None}, usage=None),
    _openai_chunk({"content": "Hel"}, usage=None),
    _openai_chunk({"content": "lo"}, usage=None),
    _openai_chunk(
        {
            "content": None,
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ],
        },
        usage=None,
    ),
    _openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"loc'}}]}, usage=None),
    _openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ation": "Paris"}'}}]}, usage=None),
    _openai_chunk(
        {
            "tool_calls": [
                {
                    "index": 1,
                    "id": "call_b",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": "{}"},
                }
            ]
        },
        usage=None,
    ),
    _openai_chunk({}, "tool_calls", usage=None),
    _openai_chunk(
        None,
        usage={
            "prompt_tokens": 100,
            "completion_tokens": 20,
            "total_tokens": 120,
            "prompt_tokens_details": {"cached_tokens": 64, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
    ),
]


def test_openai_to_anthropic_stream_golden() -> None:
    stream = OpenAIToAnthropicStream("gpt-x", "msg_1")
    per_chunk = [stream.feed(c) for c in OPENAI_CHUNKS]
    assert stream.finish() == []  # everything was already sent with the usage chunk
    events = [e for out in per_chunk for e in out]
    zeros = {
        "input_tokens": 0,
        "output_tokens": 0,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }
    assert events == [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "model": "gpt-x",
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": zeros,
                },
            },
        ),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}},
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}},
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {}},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": '{"loc'},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": 'ation": "Paris"}'},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 2,
                "content_block": {"type": "tool_use", "id": "call_b", "name": "get_time", "input": {}},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 2,
                "delta": {"type": "input_json_delta", "partial_json": "{}"},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 2}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                "usage": {
                    "input_tokens": 36,
                    "output_tokens": 20,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 64,
                },
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    # nothing held back but message_delta: the finish chunk closes the block at once, usage ends the message
    assert [len(out) for out in per_chunk] == [1, 2, 1, 2, 1, 1, 3, 1, 2]
    assert stream.usage == TokenUsage(100, 20, 64, 0) and stream.done


def test_openai_to_anthropic_stream_groq_usage_on_finish_chunk() -> None:
    stream = OpenAIToAnthropicStream("llama", "msg_g")
    stream.feed(_openai_chunk({"role": "assistant", "content": ""}))
    stream.feed(_openai_chunk({"content": "Hi"}))
    groq_usage = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15, "queue_time": 0.01}
    out = stream.feed(_openai_chunk({}, "stop", x_groq={"id": "req_1", "usage": groq_usage}))
    assert [name for name, _ in out] == ["content_block_stop", "message_delta", "message_stop"]
    assert out[1][1]["usage"]["input_tokens"] == 12 and out[1][1]["delta"]["stop_reason"] == "end_turn"
    assert stream.feed(_openai_chunk(None, usage=groq_usage)) == [] and stream.finish() == []


def test_openai_to_anthropic_stream_without_usage_then_done() -> None:
    stream = OpenAIToAnthropicStream("m", "msg")
    stream.feed(_openai_chunk({"content": "x"}))
    assert [n for n, _ in stream.feed(_openai_chunk({}, "length"))] == ["content_block_stop"]
    out = stream.finish()
    assert [n for n, _ in out] == ["message_delta", "message_stop"]
    assert out[0][1]["delta"]["stop_reason"] == "max_tokens"
    assert stream.usage is None  # never reported: the proxy must estimate


def test_openai_to_anthropic_stream_empty_and_refusal() -> None:
    empty = OpenAIToAnthropicStream("m", "msg")
    assert [n for n, _ in empty.finish()] == ["message_start", "message_delta", "message_stop"]
    refusal = OpenAIToAnthropicStream("m", "msg")
    refusal.feed(_openai_chunk({"refusal": "I can't"}))
    refusal.feed(_openai_chunk({}, "stop"))
    assert refusal.finish()[0][1]["delta"]["stop_reason"] == "refusal"


def test_openai_to_anthropic_stream_upstream_error_and_interleaving() -> None:
    stream = OpenAIToAnthropicStream("m", "msg")
    stream.feed(_openai_chunk({"content": "x"}))
    out = stream.feed({"error": {"message": "boom", "type": "rate_limit_error", "code": None}})
    assert out == [("error", {"type": "error", "error": {"type": "rate_limit_error", "message": "boom"}})]
    assert stream.errored and stream.finish() == []

    mixed = OpenAIToAnthropicStream("m", "msg")
    mixed.feed(
        _openai_chunk({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": ""}}]})
    )
    mixed.feed(
        _openai_chunk({"tool_calls": [{"index": 1, "id": "b", "function": {"name": "g", "arguments": ""}}]})
    )
    with pytest.raises(TranslationError):
        mixed.feed(_openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}))


def test_streams_compose_back_to_the_same_openai_content() -> None:
    """OpenAI chunks -> Anthropic events -> OpenAI chunks keeps text, tool calls, finish reason and usage."""
    to_anthropic = OpenAIToAnthropicStream("m", "msg")
    events = [e for c in OPENAI_CHUNKS for e in to_anthropic.feed(c)]
    back = AnthropicToOpenAIStream("m", "id", include_usage=True)
    chunks = [c for name, data in events for c in back.feed(name, data)]
    text = "".join(_choice_delta(c).get("content") or "" for c in chunks if c["choices"])
    args: dict[int, str] = {}
    for c in chunks:
        for call in (_choice_delta(c).get("tool_calls") or []) if c["choices"] else []:
            args[call["index"]] = args.get(call["index"], "") + call["function"]["arguments"]
    assert text == "Hello"
    assert {k: json.loads(v) for k, v in args.items()} == {0: {"location": "Paris"}, 1: {}}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 100,
        "completion_tokens": 20,
        "total_tokens": 120,
        "prompt_tokens_details": {"cached_tokens": 64},
    }


def test_error_events_are_complete_sse_events() -> None:
    raw = openai_error_event("the provider sent nothing for 30s", "timeout", "idle_timeout")
    (event,) = SSEParser().feed(raw)
    assert event.event is None
    assert event.json() == {
        "error": {
            "message": "the provider sent nothing for 30s",
            "type": "timeout",
            "param": None,
            "code": "idle_timeout",
        }
    }
    raw = anthropic_error_event("upstream closed the stream", "api_error")
    assert SSEParser().feed(raw) == [
        SSEEvent(
            "error", '{"type":"error","error":{"type":"api_error","message":"upstream closed the stream"}}'
        )
    ]


# ------------------------------------------------------------------------------------ official SDKs


class _Canned:
    """What the local server answers next: (status, content type, body bytes)."""

    status = 200
    content_type = "text/event-stream"
    body = b""
    requests: list[JSON] = []


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        _Canned.requests.append(json.loads(self.rfile.read(length) or b"{}"))
        self.send_response(_Canned.status)
        self.send_header("content-type", _Canned.content_type)
        self.send_header("content-length", str(len(_Canned.body)))
        self.end_headers()
        self.wfile.write(_Canned.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def canned_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _serve(body: bytes, content_type: str = "text/event-stream") -> None:
    _Canned.body, _Canned.content_type = body, content_type


def _openai_client(base: str) -> Any:
    import openai

    return openai.OpenAI(base_url=f"{base}/v1", api_key="test", max_retries=0, timeout=10)


def _anthropic_client(base: str) -> Any:
    import anthropic

    return anthropic.Anthropic(base_url=base, api_key="test", max_retries=0, timeout=10)


def _translated_openai_stream(include_usage: bool) -> bytes:
    stream = AnthropicToOpenAIStream("claude-x", "chatcmpl-sdk", include_usage=include_usage)
    chunks = [c for name, data in ANTHROPIC_EVENTS for c in stream.feed(name, data)]
    assert stream.done
    return encode_openai_chunks(chunks) + DONE


def test_openai_sdk_reads_translated_stream(canned_server: str) -> None:
    client = _openai_client(canned_server)
    _serve(_translated_openai_stream(include_usage=True))
    chunks = list(
        client.chat.completions.create(
            model="claude-x",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Let me check."
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["tool_calls"]
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (1496, 89, 1585)
    assert usage.prompt_tokens_details.cached_tokens == 1024

    # the SDK's own accumulator assembles the tool calls from the deltas
    _serve(_translated_openai_stream(include_usage=True))
    with client.chat.completions.stream(
        model="claude-x", messages=[{"role": "user", "content": "hi"}], stream_options={"include_usage": True}
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    message = final.choices[0].message
    assert message.content == "Let me check."
    assert [(t.id, t.function.name, json.loads(t.function.arguments)) for t in message.tool_calls] == [
        ("toolu_A", "get_weather", {"city": "Paris", "unit": "c"}),
        ("toolu_B", "get_time", {}),
    ]
    assert final.choices[0].finish_reason == "tool_calls"
    assert final.usage is not None and final.usage.completion_tokens == 89


def test_openai_sdk_raises_on_error_event(canned_server: str) -> None:
    import openai

    client = _openai_client(canned_server)
    stream = AnthropicToOpenAIStream("m", "id", include_usage=False)
    chunks = [c for name, data in ANTHROPIC_EVENTS[:8] for c in stream.feed(name, data)]
    _serve(encode_openai_chunks(chunks) + openai_error_event("upstream closed the stream", "server_error"))
    received: list[str] = []
    with pytest.raises(openai.APIError, match="upstream closed the stream"):
        for chunk in client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}], stream=True
        ):
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "Let me check."


def test_openai_sdk_reads_translated_completion(canned_server: str) -> None:
    client = _openai_client(canned_server)
    _serve(
        json.dumps(anthropic_to_openai_response(ANTHROPIC_MESSAGE, model="claude-x")).encode(),
        "application/json",
    )
    completion = client.chat.completions.create(
        model="claude-x", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.choices[0].message.tool_calls[0].function.name == "get_weather"
    assert completion.usage.prompt_tokens_details.cached_tokens == 90


def _translated_anthropic_stream(chunks: list[JSON]) -> bytes:
    stream = OpenAIToAnthropicStream("gpt-x", "msg_sdk")
    events = [e for c in chunks for e in stream.feed(c)] + stream.finish()
    return encode_anthropic_events(events)


def test_anthropic_sdk_reads_translated_stream(canned_server: str) -> None:
    client = _anthropic_client(canned_server)
    _serve(_translated_anthropic_stream(OPENAI_CHUNKS))
    with client.messages.stream(
        model="gpt-x", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        text = "".join(stream.text_stream)
        message = stream.get_final_message()
    assert text == "Hello"
    assert message.id == "msg_sdk" and message.stop_reason == "tool_use"
    assert next((b.type, getattr(b, "text", None)) for b in message.content) == ("text", "Hello")
    tools = [(b.id, b.name, b.input) for b in message.content if b.type == "tool_use"]
    assert tools == [("call_a", "get_weather", {"location": "Paris"}), ("call_b", "get_time", {})]
    usage = message.usage
    assert (usage.input_tokens, usage.output_tokens, usage.cache_read_input_tokens) == (36, 20, 64)
    assert usage.cache_creation_input_tokens == 0


def test_anthropic_sdk_reads_groq_stream(canned_server: str) -> None:
    client = _anthropic_client(canned_server)
    groq = [
        _openai_chunk({"role": "assistant", "content": ""}),
        _openai_chunk({"content": "Hi there"}),
        _openai_chunk(
            {},
            "stop",
            x_groq={"id": "req", "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}},
        ),
    ]
    _serve(_translated_anthropic_stream(groq))
    with client.messages.stream(
        model="llama", max_tokens=10, messages=[{"role": "user", "content": "x"}]
    ) as stream:
        message = stream.get_final_message()
    assert message.content[0].text == "Hi there" and message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (7, 2)


def test_anthropic_sdk_raises_on_error_event(canned_server: str) -> None:
    import anthropic

    client = _anthropic_client(canned_server)
    stream = OpenAIToAnthropicStream("gpt-x", "msg_e")
    events = [e for c in OPENAI_CHUNKS[:3] for e in stream.feed(c)]
    _serve(encode_anthropic_events(events) + anthropic_error_event("the provider stalled", "timeout_error"))
    seen: list[str] = []
    with pytest.raises(anthropic.APIError, match="the provider stalled"):  # noqa: SIM117
        with client.messages.stream(
            model="gpt-x", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        ) as s:
            for piece in s.text_stream:
                seen.append(piece)
    assert "".join(seen) == "Hello"


def test_anthropic_sdk_reads_translated_message(canned_server: str) -> None:
    client = _anthropic_client(canned_server)
    _serve(
        json.dumps(openai_to_anthropic_response(OPENAI_COMPLETION, model="gpt-x")).encode(),
        "application/json",
    )
    message = client.messages.create(
        model="gpt-x", max_tokens=10, messages=[{"role": "user", "content": "x"}]
    )
    assert message.stop_reason == "tool_use"
    assert next(b.input for b in message.content if b.type == "tool_use") == {"a": 1}
    assert message.usage.cache_read_input_tokens == 32


def test_sdk_requests_translate(canned_server: str) -> None:
    """What each SDK actually sends translates (the proxy receives exactly these bodies)."""
    _Canned.requests.clear()
    _serve(_translated_openai_stream(include_usage=False))
    list(
        _openai_client(canned_server).chat.completions.create(
            model="m",
            messages=[{"role": "system", "content": "S"}, {"role": "user", "content": "x"}],
            tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            tool_choice="required",
            stream=True,
        )
    )
    sent = _Canned.requests[-1]
    anthropic = openai_to_anthropic_request(sent, default_max_tokens=256)
    assert (
        anthropic["system"] == "S"
        and anthropic["tool_choice"] == {"type": "any"}
        and anthropic["stream"] is True
    )

    _serve(_translated_anthropic_stream(OPENAI_CHUNKS))
    with _anthropic_client(canned_server).messages.stream(
        model="c", max_tokens=9, system="S", messages=[{"role": "user", "content": "x"}]
    ) as stream:
        stream.get_final_message()
    openai = anthropic_to_openai_request(_Canned.requests[-1])
    assert openai["messages"][0] == {"role": "system", "content": "S"}
    assert openai["stream_options"] == {"include_usage": True} and openai["max_completion_tokens"] == 9
