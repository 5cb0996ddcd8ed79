"""The fake provider speaks what the official SDKs expect, paces chunks for real, and fails on demand.

The proxy's tests and benchmark trust this server as "the provider", so these tests hold it to the
real clients: the ``openai`` and ``anthropic`` SDKs parse its bodies and streams, raw httpx sees its
timing and its broken connections, and its counters notice a client that leaves.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from localstack.fake_provider import (
    LOREM,
    PROMPT_OVERHEAD_TOKENS,
    count_prompt_tokens,
    fake_stats,
    running_fake_provider,
    set_fake_state,
)

MESSAGES: list[Any] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "what is the weather in Paris"},
]
PROMPT = PROMPT_OVERHEAD_TOKENS + 3 + 6
WEATHER_TOOL_OPENAI: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}
WEATHER_TOOL_ANTHROPIC: Any = {
    "name": "get_weather",
    "input_schema": WEATHER_TOOL_OPENAI["function"]["parameters"],
}
AUTH = {"Authorization": "Bearer sk-test"}


@pytest.fixture(scope="module")
def fake_server() -> Iterator[str]:
    with running_fake_provider() as url:
        yield url


@pytest.fixture
def fake(fake_server: str) -> str:
    """The module's fake, with its state and counters reset."""
    set_fake_state(fake_server, reset=True)
    return fake_server


def lorem(n: int) -> str:
    return " ".join(LOREM[i % len(LOREM)] for i in range(n))


def oai(url: str, scenario: str | None = None, provider: str = "openai", **kw: Any) -> openai.OpenAI:
    base = f"{url}/groq/openai/v1" if provider == "groq" else f"{url}/openai/v1"
    headers = {"x-fake-scenario": scenario} if scenario else None
    kw.setdefault("max_retries", 0)  # an SDK retry would hide a fake that broke a connection
    return openai.OpenAI(base_url=base, api_key="sk-test", default_headers=headers, **kw)


def claude(url: str, scenario: str | None = None, **kw: Any) -> anthropic.Anthropic:
    headers = {"x-fake-scenario": scenario} if scenario else None
    kw.setdefault("max_retries", 0)
    return anthropic.Anthropic(
        base_url=f"{url}/anthropic", api_key="sk-ant-test", default_headers=headers, **kw
    )


def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


# ------------------------------------------------------------------------------------------ OpenAI


def test_openai_sdk_non_stream_text_and_usage(fake: str) -> None:
    reply = oai(fake, "chunks=7;cached=4").chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert reply.object == "chat.completion"
    assert reply.model == "gpt-4o-mini"
    assert reply.choices[0].message.content == lorem(7)
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (
        PROMPT,
        7,
        PROMPT + 7,
    )
    assert reply.usage.prompt_tokens_details is not None
    assert reply.usage.prompt_tokens_details.cached_tokens == 4


def test_openai_sdk_stream_with_usage_chunk(fake: str) -> None:
    stream = oai(fake, "chunks=5").chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == lorem(5)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (PROMPT, 5)
    assert all(c.usage is None for c in chunks[:-1])


def test_openai_stream_without_include_usage_has_no_usage_chunk(fake: str) -> None:
    chunks = list(oai(fake).chat.completions.create(model="m", messages=MESSAGES, stream=True))
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)
    no_usage = oai(fake, "no_usage").chat.completions.create(
        model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    assert all(c.choices for c in no_usage)


def test_openai_sdk_tool_calls_stream_and_not(fake: str) -> None:
    client = oai(fake)
    kwargs: Any = {"model": "gpt-4o-mini", "messages": MESSAGES, "tools": [WEATHER_TOOL_OPENAI]}
    reply = client.chat.completions.create(tool_choice="required", **kwargs)
    call = reply.choices[0].message.tool_calls[0]
    assert reply.choices[0].finish_reason == "tool_calls"
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "test", "days": 1}
    args = call.function.arguments
    expected_tokens = 1 + -(-len(args) // 8)
    assert reply.usage is not None and reply.usage.completion_tokens == expected_tokens

    stream = oai(fake, "tool_call=2").chat.completions.create(
        stream=True, stream_options={"include_usage": True}, **kwargs
    )
    calls: dict[int, dict[str, str]] = {}
    finish = None
    usage = None
    for chunk in stream:
        usage = chunk.usage or usage
        if not chunk.choices:
            continue
        finish = chunk.choices[0].finish_reason or finish
        for delta in chunk.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            entry["id"] += delta.id or ""
            if delta.function is not None:
                entry["name"] += delta.function.name or ""
                entry["arguments"] += delta.function.arguments or ""
    assert finish == "tool_calls"
    assert sorted(calls) == [0, 1]
    assert all(json.loads(c["arguments"]) == {"city": "test", "days": 1} for c in calls.values())
    assert calls[0]["id"] != calls[1]["id"]
    assert usage is not None and usage.completion_tokens == 2 * expected_tokens


def test_groq_through_openai_sdk_has_x_groq_usage(fake: str) -> None:
    client = oai(fake, "chunks=4", provider="groq")
    chunks = list(
        client.chat.completions.create(
            model="llama-3.1-8b-instant",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == lorem(4)
    finish_chunk = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
    x_groq = (finish_chunk.model_extra or {})["x_groq"]
    assert x_groq["usage"]["prompt_tokens"] == PROMPT and x_groq["usage"]["completion_tokens"] == 4
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == PROMPT + 4
    reply = client.chat.completions.create(model="llama-3.1-8b-instant", messages=MESSAGES)
    assert reply.choices[0].message.content == lorem(4)
    assert reply.usage is not None and reply.usage.completion_tokens == 4
    assert [m.id for m in client.models.list()] == ["llama-3.1-8b-instant", "llama-3.3-70b-versatile"]


def test_reply_echo_max_tokens_and_model_suffix(fake: str) -> None:
    client = oai(fake)
    echo = client.chat.completions.create(model="gpt-4o-mini::reply=echo", messages=MESSAGES)
    assert echo.model == "gpt-4o-mini"
    assert echo.choices[0].message.content == "what is the weather in Paris"
    cut = client.chat.completions.create(model="m::chunks=9", messages=MESSAGES, max_tokens=3)
    assert cut.choices[0].message.content == lorem(3) and cut.choices[0].finish_reason == "length"
    with pytest.raises(openai.BadRequestError, match="unknown fake scenario knob"):
        client.chat.completions.create(model="m::chunk=9", messages=MESSAGES)


def test_prompt_tokens_are_the_same_in_either_shape() -> None:
    as_openai = {"messages": MESSAGES}
    as_anthropic = {
        "system": [{"type": "text", "text": "You are terse."}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "what is the weather in Paris"}]}],
    }
    assert count_prompt_tokens(as_openai) == count_prompt_tokens(as_anthropic) == PROMPT


# --------------------------------------------------------------------------------------- Anthropic


def test_anthropic_sdk_non_stream_and_stream_text(fake: str) -> None:
    client = claude(fake, "chunks=6;cached=2")
    message = client.messages.create(
        model="claude-haiku-4-5", max_tokens=100, system="You are terse.", messages=MESSAGES[1:]
    )
    assert message.content[0].type == "text" and message.content[0].text == lorem(6)
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens) == (PROMPT - 2, 2)
    assert message.usage.output_tokens == 6

    with client.messages.stream(
        model="claude-haiku-4-5", max_tokens=100, system="You are terse.", messages=MESSAGES[1:]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == lorem(6)
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (PROMPT - 2, 6)


def test_anthropic_raw_event_order(fake: str) -> None:
    stream = claude(fake, "chunks=2").messages.create(
        model="claude-haiku-4-5", max_tokens=100, messages=MESSAGES[1:], stream=True
    )
    assert [e.type for e in stream] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]  # the ping after content_block_start is sent, and the SDK skips it


def test_anthropic_sdk_tool_use(fake: str) -> None:
    client = claude(fake)
    kwargs: Any = {
        "model": "claude-haiku-4-5",
        "max_tokens": 100,
        "messages": MESSAGES[1:],
        "tools": [WEATHER_TOOL_ANTHROPIC],
        "tool_choice": {"type": "any"},
    }
    message = client.messages.create(**kwargs)
    block = message.content[0]
    assert message.stop_reason == "tool_use"
    assert block.type == "tool_use" and block.name == "get_weather" and block.id.startswith("toolu_")
    assert block.input == {"city": "test", "days": 1}
    with client.messages.stream(**kwargs) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert final.content[0].type == "tool_use" and final.content[0].input == {"city": "test", "days": 1}
    assert final.usage.output_tokens == message.usage.output_tokens


# ------------------------------------------------------------------------------------------ timing


def _content_arrivals(url: str, scenario: str) -> tuple[float, list[float]]:
    """(headers time, arrival time of each content chunk), seconds from the request start."""
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    arrivals = []
    start = time.perf_counter()
    with httpx.stream(
        "POST",
        f"{url}/openai/v1/chat/completions",
        json=body,
        headers={**AUTH, "x-fake-scenario": scenario},
        timeout=30,
    ) as response:
        headers_at = time.perf_counter() - start
        for line in response.iter_lines():
            if line.startswith("data: {") and '"content":"' in line and '"content":""' not in line:
                arrivals.append(time.perf_counter() - start)
    return headers_at, arrivals


def test_chunks_arrive_separately_over_time(fake: str) -> None:
    # Lower bounds only: the fake sends chunk i no earlier than first_token_ms + i * interval_ms
    # after it starts answering, which is after the request left; a loaded machine only adds delay.
    headers_at, arrivals = _content_arrivals(fake, "chunks=8;interval_ms=40;first_token_ms=1500")
    assert len(arrivals) == 8
    assert headers_at < 1.5 <= arrivals[0]  # headers go out at once; the first token is what is slow
    assert all(at >= 1.5 + i * 0.04 for i, at in enumerate(arrivals))  # paced, not one burst


def test_slow_headers_and_a_connection_dropped_before_any_response(fake: str) -> None:
    headers_at, arrivals = _content_arrivals(fake, "chunks=2;headers_ms=200")
    assert headers_at >= 0.19 and len(arrivals) == 2
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(
            f"{fake}/openai/v1/chat/completions",
            json={"model": "m", "messages": MESSAGES},
            headers={**AUTH, "x-fake-scenario": "error=disconnect"},
        )


def test_stall_then_resume(fake: str) -> None:
    # The stall sits before chunk 2: it cannot arrive before stall_ms has passed; the stream then
    # resumes. Only lower bounds and order: a late read (load) can only add to an arrival time.
    _, arrivals = _content_arrivals(fake, "chunks=4;stall_after=2;stall_ms=1500")
    assert len(arrivals) == 4
    assert arrivals == sorted(arrivals) and arrivals[2] >= 1.5


def test_fifty_concurrent_streams(fake: str) -> None:
    async def one(client: httpx.AsyncClient) -> int:
        body = {"model": "m", "messages": MESSAGES, "stream": True}
        headers = {**AUTH, "x-fake-scenario": "chunks=10;interval_ms=20;first_token_ms=200"}
        n = 0
        async with client.stream(
            "POST", f"{fake}/openai/v1/chat/completions", json=body, headers=headers
        ) as r:
            async for line in r.aiter_lines():
                n += line == "data: [DONE]"
        return n

    async def run() -> list[int]:
        limits = httpx.Limits(max_connections=60)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:
            return await asyncio.gather(*(one(client) for _ in range(50)))

    assert asyncio.run(run()) == [1] * 50
    stats = fake_stats(fake)
    assert stats["streams_completed"] == 50 and stats["max_open_streams"] == 50 and stats["open_streams"] == 0


# ---------------------------------------------------------------------------------- errors, faults


def test_429_carries_retry_after_in_both_shapes(fake: str) -> None:
    with pytest.raises(openai.RateLimitError) as oai_err:
        oai(fake, "error=429;retry_after=2", max_retries=0).chat.completions.create(
            model="m", messages=MESSAGES
        )
    assert oai_err.value.response.headers["retry-after"] == "2"
    assert oai_err.value.code == "rate_limit_exceeded"
    assert set(oai_err.value.response.json()["error"]) == {"message", "type", "param", "code"}

    with pytest.raises(anthropic.RateLimitError) as ant_err:
        claude(fake, "error=429", max_retries=0).messages.create(
            model="claude-haiku-4-5", max_tokens=10, messages=MESSAGES[1:]
        )
    assert ant_err.value.response.headers["retry-after"] == "1"
    body = ant_err.value.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"

    with pytest.raises(anthropic.OverloadedError):
        claude(fake, "error=529", max_retries=0).messages.create(
            model="claude-haiku-4-5", max_tokens=10, messages=MESSAGES[1:]
        )


def test_auth_and_required_headers(fake: str) -> None:
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{fake}/openai/v1", api_key="bad-key").models.list()
    no_version = httpx.post(
        f"{fake}/anthropic/v1/messages",
        headers={"x-api-key": "k"},
        json={"model": "c", "max_tokens": 5, "messages": MESSAGES[1:]},
    )
    assert no_version.status_code == 400
    assert no_version.json()["error"]["type"] == "invalid_request_error"
    set_fake_state(fake, require_key={"anthropic": "sk-ant-real"})
    with pytest.raises(anthropic.AuthenticationError):
        claude(fake).messages.create(model="c", max_tokens=5, messages=MESSAGES[1:])


def test_fail_first_then_succeed_per_request_key(fake: str) -> None:
    body = {"model": "m", "messages": MESSAGES}
    headers = {**AUTH, "x-fake-scenario": "fail_first=2", "x-fake-request-key": "abc"}
    statuses = []
    for _ in range(3):
        r = httpx.post(f"{fake}/openai/v1/chat/completions", json=body, headers=headers)
        statuses.append((r.status_code, r.headers["x-fake-attempt"]))
    assert statuses == [(503, "1"), (503, "2"), (200, "3")]
    other = httpx.post(
        f"{fake}/openai/v1/chat/completions", json=body, headers={**headers, "x-fake-request-key": "x"}
    )
    assert other.status_code == 503
    # The SDK's own retries get through: the request key is the body hash when no header is sent.
    anth = claude(fake, "fail_first=1", max_retries=2)
    assert anth.messages.create(model="c", max_tokens=50, messages=MESSAGES[1:]).stop_reason == "end_turn"


def test_provider_down_from_the_control_endpoint(fake: str) -> None:
    set_fake_state(fake, down={"openai": 503})
    with pytest.raises(openai.InternalServerError):
        oai(fake, max_retries=0).chat.completions.create(model="m", messages=MESSAGES)
    assert oai(fake, provider="groq").chat.completions.create(model="m", messages=MESSAGES).choices
    set_fake_state(fake, down={"openai": None})
    assert oai(fake).chat.completions.create(model="m", messages=MESSAGES).choices
    assert fake_stats(fake)["requests"]["openai"] == 2


def test_disconnect_mid_stream_is_a_protocol_error(fake: str) -> None:
    body = {"model": "m", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    lines = []
    headers = {**AUTH, "x-fake-scenario": "chunks=50;disconnect_after=20"}
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream("POST", f"{fake}/openai/v1/chat/completions", json=body, headers=headers) as response,
    ):
        for line in response.iter_lines():
            lines.append(line)
    data = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert sum(1 for d in data if d["choices"] and d["choices"][0]["delta"].get("content")) == 20
    assert not any(d["choices"] and d["choices"][0]["finish_reason"] for d in data)
    assert "data: [DONE]" not in lines and all(d.get("usage") is None for d in data)
    stats = fake_stats(fake)
    assert stats["streams_server_disconnected"] == 1
    assert stats["recent"][-1]["outcome"] == "server_disconnect" and stats["recent"][-1]["chunks_sent"] == 20


def test_error_event_mid_stream(fake: str) -> None:
    stream = oai(fake, "chunks=5;error_after=2").chat.completions.create(
        model="m", messages=MESSAGES, stream=True
    )
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass
    with (
        pytest.raises(anthropic.APIStatusError, match="Overloaded"),
        claude(fake, "chunks=5;error_after=2").messages.stream(
            model="c", max_tokens=50, messages=MESSAGES[1:]
        ) as astream,
    ):
        for _ in astream:
            pass


def test_stall_and_client_close_are_counted(fake: str) -> None:
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    headers = {**AUTH, "x-fake-scenario": "chunks=10;stall_after=2;stall_ms=20000"}
    got = 0
    with (
        pytest.raises(httpx.ReadTimeout),
        httpx.stream(
            "POST",
            f"{fake}/openai/v1/chat/completions",
            json=body,
            headers=headers,
            timeout=httpx.Timeout(5, read=0.5),
        ) as response,
    ):
        for line in response.iter_lines():
            got += '"content":"' in line and '"content":""' not in line
    assert got == 2
    # The fake notices at once (well before the 20 s stall ends) that the client went away.
    wait_for(lambda: fake_stats(fake)["streams_client_closed"] == 1)
    stats = fake_stats(fake)
    assert stats["open_streams"] == 0 and stats["recent"][-1]["outcome"] == "client_closed"

    # A client that simply stops reading and closes mid-stream is counted the same way.
    headers["x-fake-scenario"] = "chunks=50;interval_ms=20"
    with httpx.stream("POST", f"{fake}/openai/v1/chat/completions", json=body, headers=headers) as response:
        for n, _ in enumerate(response.iter_lines()):
            if n == 6:
                break
    wait_for(lambda: fake_stats(fake)["streams_client_closed"] == 2)
    assert fake_stats(fake)["open_streams"] == 0


def test_keep_alive_connection_is_reused_after_a_stream(fake: str) -> None:
    body = {"model": "m", "messages": MESSAGES}
    with httpx.Client(base_url=f"{fake}/openai/v1", headers=AUTH) as client:
        for stream in (True, False, True, True):
            with client.stream("POST", "/chat/completions", json={**body, "stream": stream}) as response:
                assert response.status_code == 200
                response.read()
    stats = fake_stats(fake)
    assert stats["connections_accepted"] == 2  # the client's one connection, and this stats call
    assert stats["streams_completed"] == 3


def test_in_thread_server_and_models() -> None:
    with running_fake_provider(in_thread=True) as url:
        assert next(m.id for m in claude(url).models.list()) == "claude-haiku-4-5"
        assert "gpt-4o-mini" in [m.id for m in oai(url).models.list()]
