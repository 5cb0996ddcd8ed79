"""The inference proxy end to end: the official SDKs -> Chalice's local server (streaming) -> the fake
provider, with a real Redis (budgets, ledger, breakers) and moto (provider keys)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import anthropic
import httpx
import openai
import psutil
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from localstack.bootstrap import bootstrap
from localstack.endpoint import Endpoint
from localstack.fake_provider import ROUTING_POLICY as POLICY
from localstack.fake_provider import fake_stats, provider_env, running_fake_provider, set_fake_state
from shared.auth import TokenStore
from shared.config import Settings
from shared.cost.budget import BudgetGuard, Period, worst_case_cost
from shared.cost.ledger import CostLedger
from shared.cost.prices import PriceTable, Usage
from shared.proxy.paced import PacedTransport
from shared.proxy.providers.base import UpstreamRequest
from shared.proxy.providers.openai import OpenAIProvider
from shared.proxy.routing import Route, Target, Timeouts
from shared.proxy.sse import SSEEvent
from shared.proxy.upstream import KEEPALIVE, UpstreamError, UpstreamStream
from tests.support.api import ensure_bucket, streaming_server


@pytest.fixture(scope="module")
def fake() -> Iterator[str]:
    with running_fake_provider() as url:
        yield url


@pytest.fixture(scope="module")
def proxy(
    redis_server: str, aws_endpoint: Endpoint, fake: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    scratch = tmp_path_factory.mktemp("proxy")
    policy = scratch / "routing.json"
    policy.write_text(json.dumps(POLICY))
    settings = Settings(broker_url=redis_server, aws_endpoint_url=aws_endpoint.url)
    ensure_bucket(settings)
    bootstrap(settings)  # provider keys in Secrets Manager
    env = {
        **provider_env(fake),
        "PRESSLINE_ROUTING_POLICY": str(policy),
        "PRESSLINE_PROXY_KEEPALIVE_S": "0.3",
        "PRESSLINE_PROXY_ATTEMPTS": "2",
        "PRESSLINE_PROXY_BACKOFF_BASE_S": "0.05",
        "PRESSLINE_BREAKER_FAIL_MAX": "3",
        "PRESSLINE_BREAKER_RESET_TIMEOUT_S": "60",
        "PRESSLINE_API_RATE_LIMIT": "1000/s:1000",
        "PRESSLINE_SERVE_WORKERS": "2",  # pre-forked, as make run serves on this 2-core machine
    }
    with streaming_server(redis_server, scratch / "serve.log", **env) as url:
        yield url


@pytest.fixture
def token(redis_url: str, fake: str) -> str:
    set_fake_state(fake, reset=True)
    tokens = TokenStore(redis.Redis.from_url(redis_url), "pressline")
    return tokens.mint("acme", "editor", name="proxy-test")[0]


@pytest.fixture
def ledger(redis_url: str) -> CostLedger:
    return CostLedger(redis.Redis.from_url(redis_url), "pressline")


def oai(proxy: str, token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy}/v1", api_key=token, max_retries=0, timeout=30)


def claude(proxy: str, token: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy, api_key=token, max_retries=0, timeout=30)


USER = [{"role": "user", "content": "Write one line about Pressline please"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


# -- the SDKs ----------------------------------------------------------------------------------------


def test_openai_sdk_streams_text_and_usage_chunk_by_chunk(proxy: str, token: str, fake: str) -> None:
    set_fake_state(fake, scenario={"openai": "chunks=8;interval_ms=60;first_token_ms=50"})
    arrivals: list[float] = []
    text = ""
    usage = None
    start = time.monotonic()
    stream = oai(proxy, token).chat.completions.create(
        model="gpt-4o-mini",
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},  # type: ignore[arg-type]
    )
    for chunk in stream:
        arrivals.append(time.monotonic() - start)
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        if chunk.usage:
            usage = chunk.usage
    assert len(text.split()) == 8
    assert usage is not None and usage.completion_tokens == 8 and usage.prompt_tokens > 0
    # Chunks came as the provider sent them, ~60 ms apart, not all at the end.
    spread = arrivals[-2] - arrivals[1]
    assert spread > 0.3, arrivals


def test_openai_sdk_without_include_usage_gets_no_usage_chunk(proxy: str, token: str) -> None:
    chunks = list(oai(proxy, token).chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True))  # type: ignore[arg-type]
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_openai_sdk_non_stream_and_tool_calls(proxy: str, token: str, fake: str) -> None:
    client = oai(proxy, token)
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=USER)  # type: ignore[arg-type]
    assert reply.choices[0].message.content and reply.usage and reply.usage.total_tokens > 0
    set_fake_state(fake, scenario={"openai": "tool_call"})
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in client.chat.completions.create(model="gpt-4o-mini", messages=USER, tools=TOOLS, stream=True):  # type: ignore[arg-type]
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for call in choice.delta.tool_calls or []:
                entry = calls.setdefault(call.index, {"name": "", "arguments": ""})
                if call.function and call.function.name:
                    entry["name"] = call.function.name
                if call.function and call.function.arguments:
                    entry["arguments"] += call.function.arguments
    assert finish == "tool_calls"
    assert calls[0]["name"] == "get_weather" and "city" in json.loads(calls[0]["arguments"])


def test_anthropic_sdk_streams_text_tool_use_and_usage(proxy: str, token: str, fake: str) -> None:
    client = claude(proxy, token)
    with client.messages.stream(model="claude-3-5-haiku", max_tokens=200, messages=USER) as stream:  # type: ignore[arg-type]
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.usage.output_tokens > 0 and final.usage.input_tokens > 0
    assert final.stop_reason == "end_turn"
    reply = client.messages.create(model="claude-3-5-haiku", max_tokens=200, messages=USER)  # type: ignore[arg-type]
    assert reply.content[0].type == "text"
    set_fake_state(fake, scenario={"anthropic": "tool_call"})
    tools = [{"name": "get_weather", "description": "w", "input_schema": TOOLS[0]["function"]["parameters"]}]  # type: ignore[index]
    with client.messages.stream(
        model="claude-3-5-haiku", max_tokens=200, messages=USER, tools=tools
    ) as stream:  # type: ignore[arg-type]
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    (block,) = [b for b in final.content if b.type == "tool_use"]
    assert block.name == "get_weather" and "city" in block.input  # type: ignore[operator]


def test_each_sdk_reaches_the_other_providers_models(proxy: str, token: str) -> None:
    """An OpenAI client on an Anthropic model, an Anthropic client on an OpenAI-shaped (Groq) model."""
    text, usage = "", None
    for chunk in oai(proxy, token).chat.completions.create(
        model="claude-3-5-haiku",
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},  # type: ignore[arg-type]
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        usage = chunk.usage or usage
    assert text and usage is not None and usage.completion_tokens > 0
    with claude(proxy, token).messages.stream(model="llama", max_tokens=100, messages=USER) as stream:  # type: ignore[arg-type]
        final = stream.get_final_message()
    assert final.content[0].type == "text" and final.usage.output_tokens > 0


def test_models_lists_the_route_aliases(proxy: str, token: str) -> None:
    ids = {m.id for m in oai(proxy, token).models.list()}
    assert ids == {"gpt-4o-mini", "claude-3-5-haiku", "llama"}


# -- failures ------------------------------------------------------------------------------------------


def test_429_is_retried_after_retry_after(proxy: str, token: str, fake: str) -> None:
    set_fake_state(fake, scenario={"openai": "fail_first=1;error=429;retry_after=1"})
    start = time.monotonic()
    reply = oai(proxy, token).chat.completions.create(model="gpt-4o-mini", messages=USER)  # type: ignore[arg-type]
    assert reply.choices[0].message.content
    assert time.monotonic() - start >= 1.0  # waited as told
    statuses = [r["status"] for r in fake_stats(fake)["recent"] if r["provider"] == "openai"]
    assert statuses[-2:] == [429, 200]


def test_provider_down_opens_the_breaker_and_fails_over(
    proxy: str, token: str, fake: str, redis_url: str
) -> None:
    redis.Redis.from_url(redis_url).delete(
        *redis.Redis.from_url(redis_url).keys("pressline.breaker.*") or ["x"]
    )
    set_fake_state(fake, down={"openai": 503})
    client = oai(proxy, token)
    served_by = []
    for _ in range(4):
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=USER)  # type: ignore[arg-type]
        served_by.append(raw.headers["x-pressline-provider"])
        assert raw.parse().choices[0].message.content
    assert served_by == ["groq"] * 4  # failed over to the route's next target
    openai_calls = fake_stats(fake)["requests"]["openai"]
    assert openai_calls == 3  # fail_max: after three failures the breaker is open...
    client.chat.completions.create(model="gpt-4o-mini", messages=USER)  # type: ignore[arg-type]
    assert fake_stats(fake)["requests"]["openai"] == openai_calls  # ...and openai is not called at all
    set_fake_state(fake, down={"openai": None})


def test_an_open_breaker_says_when_to_come_back(proxy: str, token: str, fake: str, redis_url: str) -> None:
    """Issue 15, point 3: the refusal carries the time until the breaker lets a trial through, so a
    job's retry waits for the provider instead of using up its retries while the circuit is open."""
    client = redis.Redis.from_url(redis_url)
    client.delete(*client.keys("pressline.breaker.*") or ["x"])
    set_fake_state(fake, down={"anthropic": 503})
    try:
        answers = [
            httpx.post(
                f"{proxy}/v1/chat/completions",
                json={"model": "claude-3-5-haiku", "messages": USER},
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            )
            for _ in range(3)  # two attempts each (PRESSLINE_PROXY_ATTEMPTS=2): open after the second
        ]
    finally:
        set_fake_state(fake, down={"anthropic": None})
    refused = answers[-1]
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "upstream_unavailable"
    assert "circuit is open" in refused.json()["error"]["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60  # PRESSLINE_BREAKER_RESET_TIMEOUT_S=60
    client.delete(*client.keys("pressline.breaker.*") or ["x"])


def test_a_stall_ends_the_stream_with_an_error_event_within_the_idle_timeout(
    proxy: str, token: str, fake: str
) -> None:
    set_fake_state(fake, scenario={"openai": "chunks=10;interval_ms=20;stall_after=3;stall_ms=20000"})
    received = 0
    with pytest.raises(openai.APIError) as error:
        for chunk in oai(proxy, token).chat.completions.create(
            model="gpt-4o-mini", messages=USER, stream=True
        ):  # type: ignore[arg-type]
            if chunk.choices and chunk.choices[0].delta.content:
                received += 1
    assert received == 3  # the stream ended in an error during the 20 s stall: the idle timeout cut it
    assert "sent nothing" in str(error.value)


def stream_request(fake: str, knobs: str) -> UpstreamRequest:
    """A streaming request to the fake's OpenAI API, the fake's knobs in the model name."""
    body = {"model": f"gpt-4o-mini::{knobs}", "messages": USER, "stream": True}
    return OpenAIProvider(f"{fake}/openai/v1").request(body, "k")


def paced_client() -> httpx.Client:
    return httpx.Client(transport=PacedTransport(limits=httpx.Limits(max_connections=4)))


def read_all(stream: UpstreamStream) -> tuple[list[SSEEvent], int]:
    """Every event and the number of keep-alives, until the end or an UpstreamError."""
    events: list[SSEEvent] = []
    keepalives = 0
    while (event := stream.next_event()) is not None:
        if event is KEEPALIVE:
            keepalives += 1
        else:
            assert isinstance(event, SSEEvent)
            events.append(event)
    return events, keepalives


def test_a_slow_first_token_times_out_at_first_token_s_and_is_retryable(fake: str) -> None:
    request = stream_request(fake, "first_token_ms=3000")
    timeouts = Timeouts(connect_s=2, first_token_s=0.4, idle_s=1.0, total_s=30)
    with paced_client() as client:
        started = time.monotonic()
        stream = UpstreamStream(client, request, timeouts, keepalive_s=0.1)
        with pytest.raises(UpstreamError) as caught:
            read_all(stream)
        waited = time.monotonic() - started
    assert caught.value.kind == "first_token_timeout" and caught.value.retryable
    assert 0.4 * 0.9 <= waited < 0.4 + 0.5


def test_a_stream_is_read_in_the_callers_thread_with_keepalives_across_a_gap(fake: str) -> None:
    request = stream_request(fake, "chunks=6;stall_after=3;stall_ms=700")
    timeouts = Timeouts(connect_s=2, first_token_s=2, idle_s=2, total_s=10)
    with paced_client() as client:
        threads = threading.active_count()
        stream = UpstreamStream(client, request, timeouts, keepalive_s=0.1)
        events, keepalives = read_all(stream)
        assert threading.active_count() == threads  # no reader thread: one wake-up per chunk
        # the connection went back to the pool whole: the next stream reuses it
        again, _ = read_all(UpstreamStream(client, request, timeouts, keepalive_s=0.1))
    texts = [e.data for e in events]
    assert texts[-1] == "[DONE]" and len(again) == len(events)
    assert 4 <= keepalives <= 8  # 0.7 s of silence, one keep-alive per 0.1 s


def test_an_idle_upstream_times_out_and_its_connection_is_closed(fake: str) -> None:
    request = stream_request(fake, "chunks=6;stall_after=2;stall_ms=5000")
    timeouts = Timeouts(connect_s=2, first_token_s=2, idle_s=0.3, total_s=10)
    before = fake_stats(fake)["streams_client_closed"]
    with paced_client() as client:
        stream = UpstreamStream(client, request, timeouts, keepalive_s=0.1)
        started = time.monotonic()
        with pytest.raises(UpstreamError) as caught:
            read_all(stream)
        waited = time.monotonic() - started
    assert caught.value.kind == "idle_timeout" and not caught.value.retryable
    assert waited < 0.3 + 0.5
    deadline = time.monotonic() + 5
    while fake_stats(fake)["streams_client_closed"] == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake_stats(fake)["streams_client_closed"] == before + 1


def test_closing_a_stream_mid_read_closes_the_upstream_connection(fake: str) -> None:
    request = stream_request(fake, "chunks=40;interval_ms=50")
    timeouts = Timeouts(connect_s=2, first_token_s=2, idle_s=2, total_s=10)
    before = fake_stats(fake)["streams_client_closed"]
    with paced_client() as client:
        stream = UpstreamStream(client, request, timeouts, keepalive_s=0.01)
        while stream.next_event() is not KEEPALIVE:
            pass  # the reader is now suspended inside a network read
        stream.close()
        deadline = time.monotonic() + 5
        while fake_stats(fake)["streams_client_closed"] == before and time.monotonic() < deadline:
            time.sleep(0.05)
    assert fake_stats(fake)["streams_client_closed"] == before + 1


def test_a_client_disconnect_closes_the_upstream_connection(
    proxy: str, token: str, fake: str, ledger: CostLedger
) -> None:
    set_fake_state(fake, scenario={"openai": "chunks=40;interval_ms=50"})
    before = fake_stats(fake)["streams_client_closed"]
    body = {"model": "gpt-4o-mini", "messages": USER, "stream": True}
    with httpx.stream(
        "POST", f"{proxy}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {token}"}
    ) as r:
        request_id = r.headers["x-pressline-request-id"]
        for i, _ in enumerate(r.iter_lines()):
            if i > 6:
                break
    deadline = time.monotonic() + 5
    while fake_stats(fake)["streams_client_closed"] == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake_stats(fake)["streams_client_closed"] == before + 1
    while (cost := ledger.request(request_id)) is None and time.monotonic() < deadline:
        time.sleep(0.05)  # settled just after the upstream closed, in whichever process served it
    assert cost is not None and cost.usage.estimated and cost.usage.output_tokens > 0


def test_an_upstream_cut_gives_an_error_event_no_end_marker_and_an_estimated_cost(
    proxy: str, token: str, fake: str, ledger: CostLedger
) -> None:
    set_fake_state(fake, scenario={"openai": "chunks=30;interval_ms=5;disconnect_after=12"})
    body = {
        "model": "gpt-4o-mini",
        "messages": USER,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream(
        "POST", f"{proxy}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {token}"}
    ) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
        request_id = r.headers["x-pressline-request-id"]
    assert "[DONE]" not in lines[-1] and '"error"' in lines[-1]
    assert not any('"finish_reason":"stop"' in line for line in lines)
    # settled before the body ended; looked up by id: another test's request may settle later
    cost = ledger.request(request_id)
    assert cost is not None
    assert cost.usage.estimated and cost.usage.output_tokens >= 12 and cost.cost_pico > 0
    set_fake_state(fake, scenario={"anthropic": "chunks=30;interval_ms=5;disconnect_after=12"})
    with (
        pytest.raises(anthropic.APIError),
        claude(proxy, token).messages.stream(
            model="claude-3-5-haiku",
            max_tokens=100,
            messages=USER,  # type: ignore[arg-type]
        ) as stream,
    ):
        for _ in stream.text_stream:
            pass


# -- cost and budgets -----------------------------------------------------------------------------------


def test_ledger_cost_is_reported_usage_times_the_price_table(
    proxy: str, token: str, ledger: CostLedger
) -> None:
    for model, provider, name in (
        ("gpt-4o-mini", "openai", "gpt-4o-mini"),
        ("claude-3-5-haiku", "anthropic", "claude-3-5-haiku"),
    ):
        if provider == "openai":
            raw = oai(proxy, token).chat.completions.with_raw_response.create(model=model, messages=USER)  # type: ignore[arg-type]
            reply = raw.parse()
            assert reply.usage
            usage = Usage.from_openai(reply.usage.model_dump())
        else:
            raw = claude(proxy, token).messages.with_raw_response.create(  # type: ignore[assignment]
                model=model,
                max_tokens=100,
                messages=USER,  # type: ignore[arg-type]
            )
            usage = Usage.from_anthropic(raw.parse().usage.model_dump())  # type: ignore[attr-defined]
        # by request id: the newest ledger entry may be another test's, settled later by another process
        cost = ledger.request(raw.headers["x-pressline-request-id"])
        assert cost is not None and len(cost.entries) == 1
        price = PriceTable.load().price(provider, name)
        assert not cost.usage.estimated
        assert cost.cost_pico == cost.entries[0].cost_pico == price.cost(usage) > 0


def test_a_tenant_over_its_hard_budget_gets_402_with_no_upstream_call(
    proxy: str, token: str, fake: str, redis_url: str
) -> None:
    guard = BudgetGuard(redis.Redis.from_url(redis_url), "pressline")
    guard.set_budget("acme", Period.DAY, hard_pico=1)  # a millionth of a millionth of a dollar
    before = fake_stats(fake)["requests"]["openai"]
    with pytest.raises(openai.APIStatusError) as refused:
        oai(proxy, token).chat.completions.create(model="gpt-4o-mini", messages=USER)  # type: ignore[arg-type]
    assert refused.value.status_code == 402
    assert fake_stats(fake)["requests"]["openai"] == before


def test_20_concurrent_requests_just_under_the_hard_limit_never_overspend(
    proxy: str, token: str, fake: str, redis_url: str, ledger: CostLedger
) -> None:
    client = redis.Redis.from_url(redis_url)
    guard = BudgetGuard(client, "pressline")
    price = PriceTable.load().price("openai", "gpt-4o-mini")
    # What the proxy holds per request; the limit fits five and a half such holds.
    hold = worst_case_cost(price, USER[0]["content"], 64)
    hard = hold * 5 + hold // 2
    guard.set_budget("acme", Period.DAY, hard_pico=hard)
    set_fake_state(fake, scenario={"openai": "chunks=10;interval_ms=100"})  # ~1 s each: all 20 overlap
    statuses: list[int] = []
    lock = threading.Lock()

    def one() -> None:
        response = httpx.post(
            f"{proxy}/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": USER, "max_tokens": 64},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        with lock:
            statuses.append(response.status_code)

    threads = [threading.Thread(target=one) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spent = ledger.totals("acme", Period.DAY).cost_pico
    assert set(statuses) <= {200, 402} and 402 in statuses and 200 in statuses
    assert spent <= hard  # reserve-then-settle: never past the limit


# -- canary routing ------------------------------------------------------------------------------------


def test_canary_weights_hold_within_a_few_percent_and_stay_sticky() -> None:
    route = Route(
        "fast",
        (Target("openai", "gpt-4o-mini", 95), Target("groq", "llama-3.1-8b-instant", 5)),
    )
    chosen = [route.order(f"tenant-{i}")[0].provider for i in range(1000)]
    share = chosen.count("groq") / 1000
    assert 0.02 <= share <= 0.08, share
    assert all(route.order(f"tenant-{i}")[0].provider == chosen[i] for i in range(1000))  # sticky
    assert route.order("tenant-1")[1:] == [t for t in route.targets if t is not route.order("tenant-1")[0]]


def test_the_chosen_target_is_in_the_response_headers(proxy: str, token: str) -> None:
    raw = oai(proxy, token).chat.completions.with_raw_response.create(model="llama", messages=USER)  # type: ignore[arg-type]
    assert raw.headers["x-pressline-provider"] == "groq"
    assert raw.headers["x-pressline-model"] == "llama-3.1-8b-instant"


def test_costs_are_queryable_per_request_per_tenant_and_per_job(
    proxy: str, token: str, redis_url: str
) -> None:
    from shared.jobs import JobStore

    jobs = JobStore(redis.Redis.from_url(redis_url), "pressline", 3600)
    jobs.create("job-cost-1", tenant="acme", kind="workflow")
    raw = oai(proxy, token).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=USER,  # type: ignore[arg-type]
        extra_headers={"x-pressline-job-id": "job-cost-1"},
    )
    request_id = raw.headers["x-pressline-request-id"]
    auth = {"Authorization": f"Bearer {token}"}
    one = httpx.get(f"{proxy}/v1/costs/requests/{request_id}", headers=auth).json()
    assert one["job_id"] == "job-cost-1" and one["attempts"] == 1 and one["cost_pico_usd"] > 0
    summary = httpx.get(f"{proxy}/v1/costs?count=5", headers=auth).json()
    assert summary["periods"]["day"]["cost_pico_usd"] >= one["cost_pico_usd"]
    assert summary["entries"][0]["request_id"] == request_id
    job = httpx.get(f"{proxy}/v1/jobs/job-cost-1", headers=auth).json()
    assert job["cost"]["pico_usd"] == one["cost_pico_usd"]  # the job's record shows its cost
    other = TokenStore(redis.Redis.from_url(redis_url), "pressline").mint("globex", "reader")[0]
    hidden = httpx.get(
        f"{proxy}/v1/costs/requests/{request_id}", headers={"Authorization": f"Bearer {other}"}
    )
    assert hidden.status_code == 404


def test_a_job_id_is_charged_only_for_the_callers_own_running_job(
    proxy: str, token: str, redis_url: str
) -> None:
    """Issue 14, point 1: another tenant's job, a made-up id or a finished job is refused, and
    nothing is charged or created."""
    from shared.jobs import JobStore

    client = redis.Redis.from_url(redis_url)
    jobs = JobStore(client, "pressline", 3600)
    jobs.create("job-of-globex", tenant="globex", kind="workflow")
    jobs.create("job-done", tenant="acme", kind="workflow")
    jobs.succeeded("job-done")
    keys_before = set(client.keys("pressline.job.*"))
    cases = {
        "job-of-globex": (404, "job_not_found"),  # another tenant's job
        "ghost-job-123": (404, "job_not_found"),  # no such job
        "../../x": (404, "job_not_found"),  # not an id at all
        "j" * 3000: (404, "job_not_found"),
        "job-done": (409, "job_finished"),
    }
    for job_id, (status, code) in cases.items():
        answer = httpx.post(
            f"{proxy}/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": USER},
            headers={"Authorization": f"Bearer {token}", "x-pressline-job-id": job_id},
        )
        assert (answer.status_code, answer.json()["error"]["code"]) == (status, code), job_id
        assert job_id[:100] not in answer.text or job_id == "job-done"
    assert set(client.keys("pressline.job.*")) == keys_before  # nothing created
    assert jobs.get("job-of-globex").cost_pico_usd == 0  # type: ignore[union-attr]
    assert jobs.get("job-done").cost_pico_usd == 0  # type: ignore[union-attr]


def test_metrics_report_latency_tokens_cost_and_breaker_state(proxy: str, token: str) -> None:
    oai(proxy, token).chat.completions.create(model="llama", messages=USER, stream=True).close()  # type: ignore[arg-type]
    oai(proxy, token).chat.completions.create(model="llama", messages=USER)  # type: ignore[arg-type]
    text = httpx.get(f"{proxy}/metrics").text
    labels = 'model="llama-3.1-8b-instant",provider="groq"'
    assert f"pressline_llm_time_to_first_token_seconds_count{{{labels}}}" in text
    assert f'pressline_llm_tokens_total{{kind="output",{labels}}}' in text
    assert f"pressline_llm_cost_usd_total{{{labels}}}" in text
    assert 'pressline_llm_breaker_state{provider="groq",state="closed"} 1.0' in text


def _count(text: str, name: str, labels: dict[str, str]) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def test_a_preforked_server_serves_from_every_process_and_its_metrics_sum_them(
    proxy: str, token: str
) -> None:
    port = httpx.URL(proxy).port
    ok = {"provider": "groq", "model": "llama-3.1-8b-instant", "outcome": "ok"}
    before = _count(httpx.get(f"{proxy}/metrics").text, "pressline_llm_attempts_total", ok)
    clients: list[httpx.Client] = []
    owners: set[int] = set()
    try:
        for _ in range(60):  # a new connection each time, kept open, until both processes hold one
            client = httpx.Client(base_url=proxy, headers={"Authorization": f"Bearer {token}"}, timeout=30)
            clients.append(client)
            reply = client.post("/v1/chat/completions", json={"model": "llama", "messages": USER})
            assert reply.status_code == 200
            owners = {
                c.pid
                for c in psutil.net_connections("tcp")
                if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port and c.pid
            }
            if len(owners) == 2:
                break
    finally:
        for client in clients:
            client.close()
    assert len(owners) == 2  # two processes accepted connections from the one socket
    text = httpx.get(f"{proxy}/metrics").text
    assert _count(text, "pressline_llm_attempts_total", ok) - before == len(clients)
    closed = 'pressline_llm_breaker_state{provider="groq",state="closed"}'
    assert text.count(closed) == 1  # read live by the scraping process, not one stale copy per process


def test_the_admission_gate_is_left_before_the_upstream_call(proxy: str, token: str, fake: str) -> None:
    """Six streams whose first token takes 0.6 s, at once: were the gate (two wide per process) held
    while the provider thinks, the last would wait for two others' first tokens."""
    set_fake_state(fake, reset=True, scenario={"openai": "first_token_ms=600;chunks=2"})  # counters from 0
    firsts: list[float] = []
    start = time.monotonic()

    def stream() -> None:
        for chunk in oai(proxy, token).chat.completions.create(
            model="gpt-4o-mini", messages=USER, stream=True
        ):  # type: ignore[arg-type]
            if chunk.choices and chunk.choices[0].delta.content:
                firsts.append(time.monotonic() - start)
                break

    threads = [threading.Thread(target=stream) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(firsts) == 6
    # All six were at the provider at once: with the gate held, at most two (per process) could be.
    assert fake_stats(fake)["max_open_streams"] == 6


def test_the_pool_reuses_live_connections_and_keeps_at_most_its_keepalive_limit(fake: str) -> None:
    request = stream_request(fake, "chunks=2")
    timeouts = Timeouts(connect_s=2, first_token_s=5, idle_s=5, total_s=10)
    limits = httpx.Limits(max_connections=6, max_keepalive_connections=2, keepalive_expiry=60)
    with httpx.Client(transport=PacedTransport(limits=limits)) as client:
        for _ in range(3):  # one after another: one connection, reused
            read_all(UpstreamStream(client, request, timeouts, keepalive_s=1))
        pool = client._transport._pool  # type: ignore[attr-defined]
        assert len(pool.connections) == 1
        streams = [UpstreamStream(client, request, timeouts, keepalive_s=1) for _ in range(5)]
        assert len(pool.connections) == 5  # five at once: five connections
        for s in streams:
            read_all(s)
        pool._next_sweep = 0.0  # the next request sweeps now, not within the second
        read_all(UpstreamStream(client, request, timeouts, keepalive_s=1))
        assert len(pool.connections) == 2 and all(c.is_idle() for c in pool.connections)


def test_the_pool_never_hands_out_a_connection_the_server_closed(fake: str) -> None:
    request = stream_request(fake, "chunks=2")
    timeouts = Timeouts(connect_s=2, first_token_s=5, idle_s=5, total_s=10)
    with paced_client() as client:
        read_all(UpstreamStream(client, request, timeouts, keepalive_s=1))
        pool = client._transport._pool  # type: ignore[attr-defined]
        (idle,) = pool.connections
        idle._connection._network_stream._stream._sock.shutdown(socket.SHUT_RD)  # reads as closed
        events, _ = read_all(UpstreamStream(client, request, timeouts, keepalive_s=1))
        assert events[-1].data == "[DONE]"
        assert idle not in pool.connections
