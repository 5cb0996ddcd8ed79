"""The response cache end to end: the official SDKs -> Chalice's local server -> the fake provider,
with a real Redis (exact layer, ledger, prompt library), embedded Qdrant on disk (semantic layer)
and moto (provider keys).  The fake provider counts upstream calls, so a hit is a request that
never reached it."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
import redis

from localstack.bootstrap import bootstrap
from localstack.endpoint import Endpoint
from localstack.fake_provider import ROUTING_POLICY as POLICY
from localstack.fake_provider import fake_stats, provider_env, running_fake_provider, set_fake_state
from shared.auth import TokenStore
from shared.config import Settings
from shared.cost.ledger import CostLedger
from shared.cost.prices import PriceTable, Usage
from tests.support.api import ensure_bucket, streaming_server

TTL_ROUTE = "llama"  # its entries live 2 s


@pytest.fixture(scope="module")
def fake() -> Iterator[str]:
    with running_fake_provider() as url:
        yield url


@pytest.fixture(scope="module")
def proxy(
    redis_server: str, aws_endpoint: Endpoint, fake: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    with serve(redis_server, aws_endpoint, fake, tmp_path_factory.mktemp("cache")) as url:
        yield url


@pytest.fixture(scope="module")
def provider_proxy(
    redis_server: str, aws_endpoint: Endpoint, fake: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    """The proxy with the provider's embeddings API (the fake's /v1/embeddings) as the embedder."""
    scratch = tmp_path_factory.mktemp("cache-provider")
    embedder = {"PRESSLINE_CACHE_EMBEDDER": "provider:text-embedding-3-small:1536"}
    with serve(redis_server, aws_endpoint, fake, scratch, **embedder) as url:
        yield url, scratch


@contextlib.contextmanager
def serve(redis_server: str, aws_endpoint: Endpoint, fake: str, scratch: Path, **extra: str) -> Iterator[str]:
    policy = scratch / "routing.json"
    policy.write_text(json.dumps(POLICY))
    settings = Settings(broker_url=redis_server, aws_endpoint_url=aws_endpoint.url)
    ensure_bucket(settings)
    bootstrap(settings)
    env = {
        **provider_env(fake),
        "PRESSLINE_ROUTING_POLICY": str(policy),
        "PRESSLINE_PROXY_ATTEMPTS": "1",
        "PRESSLINE_API_RATE_LIMIT": "1000/s:1000",
        "PRESSLINE_CACHE_ENABLED": "1",
        "PRESSLINE_DATA_DIR": str(scratch),  # embedded Qdrant in <data dir>/qdrant
        "PRESSLINE_CACHE_ROUTE_TTLS": f"{TTL_ROUTE}=2",
        **extra,
    }
    with streaming_server(redis_server, scratch / "serve.log", **env) as url:
        yield url


@pytest.fixture
def token(redis_url: str, fake: str) -> str:
    set_fake_state(fake, reset=True)
    return TokenStore(redis.Redis.from_url(redis_url), "pressline").mint("acme", "editor", name="t")[0]


def oai(proxy: str, token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy}/v1", api_key=token, max_retries=0, timeout=30)


def claude(proxy: str, token: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy, api_key=token, max_retries=0, timeout=30)


def ask(proxy: str, token: str, text: str, model: str = "gpt-4o-mini", **extra: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}", **extra.pop("headers", {})}
    body = {"model": model, "messages": [{"role": "user", "content": text}], "temperature": 0, **extra}
    return httpx.post(f"{proxy}/v1/chat/completions", json=body, headers=headers, timeout=30)


def upstream_calls(fake: str) -> int:
    return sum(fake_stats(fake)["requests"].values())


def test_identical_then_paraphrase_hit_and_another_question_misses(proxy: str, token: str, fake: str) -> None:
    first = ask(proxy, token, "Write a headline for an article about WordPress security")
    assert first.status_code == 200 and first.headers["x-pressline-cache"] == "miss"
    calls = upstream_calls(fake)
    again = ask(proxy, token, "Write a headline for an article about WordPress security")
    assert again.headers["x-pressline-cache"] == "hit-exact"
    assert (
        again.json()["choices"][0]["message"]["content"] == first.json()["choices"][0]["message"]["content"]
    )
    paraphrase = ask(proxy, token, "Please write a headline for an article about WordPress security.")
    assert paraphrase.headers["x-pressline-cache"] == "hit-semantic"
    assert float(paraphrase.headers["x-pressline-cache-similarity"]) >= 0.85
    assert upstream_calls(fake) == calls  # neither reached the provider
    for other in (
        "Write a headline for an article about WordPress performance",  # near-miss: another entity
        "Write a headline for an article that is not about WordPress security",  # negation
        "How do I reset my WordPress password?",  # another question
    ):
        assert ask(proxy, token, other).headers["x-pressline-cache"] == "miss", other
    assert upstream_calls(fake) == calls + 3


def test_tool_use_and_structured_output_are_never_cached(proxy: str, token: str, fake: str) -> None:
    tools = [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    ]
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    for extra in (
        {"tools": tools},
        {"response_format": schema},
        {"response_format": {"type": "json_object"}},
    ):
        calls = upstream_calls(fake)
        for _ in range(2):
            response = ask(proxy, token, "List the plugins we use on the shop site", **extra)
            assert response.status_code == 200 and response.headers["x-pressline-cache"] == "bypass"
        assert upstream_calls(fake) == calls + 2, extra


def test_the_client_can_opt_out(proxy: str, token: str, fake: str) -> None:
    ask(proxy, token, "Suggest tags for a post about image compression")
    for headers in ({"Cache-Control": "no-store"}, {"x-pressline-cache": "bypass"}):
        got = ask(proxy, token, "Suggest tags for a post about image compression", headers=headers)
        assert got.headers["x-pressline-cache"] == "bypass"


def test_entries_expire_at_their_route_ttl(proxy: str, token: str) -> None:
    text = "Write a short intro about the block editor's history"
    assert ask(proxy, token, text, model=TTL_ROUTE).headers["x-pressline-cache"] == "miss"
    assert ask(proxy, token, text, model=TTL_ROUTE).headers["x-pressline-cache"] == "hit-exact"
    time.sleep(2.3)
    assert ask(proxy, token, text, model=TTL_ROUTE).headers["x-pressline-cache"] == "miss"


def test_a_new_prompt_version_misses_and_purges_the_old_entries(proxy: str, token: str, fake: str) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    created = httpx.post(
        f"{proxy}/v1/prompts", json={"name": "intro", "text": "You write {{tone}} intros."}, headers=auth
    )
    assert created.status_code == 201 and created.json()["current_version"] == 1
    request: dict[str, Any] = {"prompt": "intro", "prompt_variables": {"tone": "warm"}}
    text = "Introduce our guide to backups"
    assert ask(proxy, token, text, **request).headers["x-pressline-cache"] == "miss"
    sent = fake_stats(fake)["recent"][-1]
    assert sent["status"] == 200
    assert ask(proxy, token, text, **request).headers["x-pressline-cache"] == "hit-exact"
    published = httpx.post(
        f"{proxy}/v1/prompts/intro/versions", json={"text": "You write {{tone}}, short intros."}, headers=auth
    )
    assert published.status_code == 201 and published.json()["ref"] == "intro@2"
    assert ask(proxy, token, text, **request).headers["x-pressline-cache"] == "miss"  # version 2
    pinned: dict[str, Any] = {"prompt": "intro@1", "prompt_variables": {"tone": "warm"}}
    assert ask(proxy, token, text, **pinned).headers["x-pressline-cache"] == "miss"  # purged on publish
    rolled = httpx.post(f"{proxy}/v1/prompts/intro/rollback", json={"version": 1}, headers=auth)
    assert rolled.status_code == 200 and rolled.json()["current_version"] == 1
    assert ask(proxy, token, text, **request).headers["x-pressline-cache"] == "miss"  # purged on rollback
    listed = httpx.get(f"{proxy}/v1/prompts", headers=auth).json()["prompts"]
    assert [p["name"] for p in listed] == ["intro"]
    missing = ask(proxy, token, text, prompt="nope")
    assert missing.status_code == 404


def test_prompt_routes_need_their_scopes(proxy: str, redis_url: str) -> None:
    reader = TokenStore(redis.Redis.from_url(redis_url), "pressline").mint("acme", "reader", name="r")[0]
    auth = {"Authorization": f"Bearer {reader}"}
    assert httpx.get(f"{proxy}/v1/prompts", headers=auth).status_code == 200
    denied = httpx.post(f"{proxy}/v1/prompts", json={"name": "x", "text": "y"}, headers=auth)
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "forbidden"


def test_tenant_a_never_gets_tenant_b_entries(proxy: str, token: str, redis_url: str) -> None:
    text = "Summarize our comment moderation policy in three bullet points"
    assert ask(proxy, token, text).headers["x-pressline-cache"] == "miss"
    other = TokenStore(redis.Redis.from_url(redis_url), "pressline").mint("globex", "editor", name="g")[0]
    assert ask(proxy, other, text).headers["x-pressline-cache"] == "miss"
    assert ask(proxy, token, text).headers["x-pressline-cache"] == "hit-exact"


def test_streamed_replays_parse_in_both_sdks(proxy: str, token: str, fake: str) -> None:
    text = "Describe the new navigation block in two sentences"
    messages: Any = [{"role": "user", "content": text}]
    stored = ""
    for chunk in oai(proxy, token).chat.completions.create(
        model="gpt-4o-mini",
        messages=messages,
        stream=True,
        temperature=0,
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            stored += chunk.choices[0].delta.content
    calls = upstream_calls(fake)
    raw = oai(proxy, token).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=messages, stream=True, temperature=0,
        stream_options={"include_usage": True},
    )  # fmt: skip
    assert raw.headers["x-pressline-cache"] == "hit-exact"
    replayed, usage, finish = "", None, None
    for chunk in raw.parse():
        if chunk.choices:
            replayed += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        usage = chunk.usage or usage
    assert replayed == stored and finish == "stop" and usage is not None and usage.completion_tokens > 0
    # An Anthropic client asking the same of the same routed model: same entry, Anthropic's events.
    with claude(proxy, token).messages.stream(
        model="gpt-4o-mini",
        max_tokens=4096,
        messages=messages,
        extra_body={"temperature": 0},
    ) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == stored and final.stop_reason == "end_turn" and final.usage.output_tokens > 0
    assert upstream_calls(fake) == calls


def test_an_anthropic_stream_is_stored_and_replayed_as_json(proxy: str, token: str, fake: str) -> None:
    messages: Any = [{"role": "user", "content": "Draft a caption for the team photo"}]
    with claude(proxy, token).messages.stream(
        model="claude-3-5-haiku", max_tokens=300, messages=messages
    ) as s:
        stored = "".join(s.text_stream)
    calls = upstream_calls(fake)
    raw = claude(proxy, token).messages.with_raw_response.create(
        model="claude-3-5-haiku", max_tokens=300, messages=messages
    )
    assert raw.headers["x-pressline-cache"] == "hit-exact"
    reply = raw.parse()
    assert reply.content[0].type == "text" and reply.content[0].text == stored
    assert upstream_calls(fake) == calls


@pytest.mark.parametrize(
    "scenario", ["chunks=30;interval_ms=2;disconnect_after=5", "chunks=10;error_after=4", "error=500"]
)
def test_a_failed_or_cut_upstream_response_is_not_stored(
    proxy: str, token: str, fake: str, scenario: str
) -> None:
    set_fake_state(fake, scenario={"openai": scenario})
    text = f"Write a teaser for the podcast episode {scenario.split(';')[-1]}"
    headers = {"Authorization": f"Bearer {token}"}
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], "stream": True}
    with httpx.stream("POST", f"{proxy}/v1/chat/completions", json=body, headers=headers, timeout=30) as r:
        for _ in r.iter_lines():
            pass
    set_fake_state(fake, scenario={"openai": None})
    again = ask(proxy, token, text, stream=False)
    assert again.status_code == 200 and again.headers["x-pressline-cache"] == "miss"


def test_the_ledger_records_a_hit_at_zero_cost_with_the_saving(
    proxy: str, token: str, redis_url: str
) -> None:
    text = "Explain what a child theme is"
    first = ask(proxy, token, text).json()
    hit = ask(proxy, token, text)
    assert hit.headers["x-pressline-cache"] == "hit-exact"
    ledger = CostLedger(redis.Redis.from_url(redis_url), "pressline")
    entry = ledger.request(hit.headers["x-pressline-request-id"]).entries[0]  # type: ignore[union-attr]
    usage = Usage(
        input_tokens=first["usage"]["prompt_tokens"], output_tokens=first["usage"]["completion_tokens"]
    )
    assert entry.cache_hit and entry.cost_pico == 0
    assert entry.saved_pico == PriceTable.load().price("openai", "gpt-4o-mini").cost(usage) > 0
    metrics = httpx.get(f"{proxy}/metrics").text
    assert 'pressline_cache_lookups_total{layer="exact",outcome="hit"}' in metrics
    assert 'pressline_cache_saved_usd_total{tenant="acme"}' in metrics
    assert 'pressline_cache_entries{layer="semantic"}' in metrics


def test_the_provider_embedder_finds_paraphrases_through_the_embeddings_api(
    provider_proxy: tuple[str, Path], token: str, fake: str
) -> None:
    proxy, scratch = provider_proxy
    first = ask(proxy, token, "Write a headline for an article about caching plugins")
    assert first.status_code == 200 and first.headers["x-pressline-cache"] == "miss"
    assert fake_stats(fake)["embeddings"] == 1  # the store reuses the lookup's vector
    paraphrase = ask(proxy, token, "Please write a headline for an article about caching plugins.")
    assert paraphrase.headers["x-pressline-cache"] == "hit-semantic"
    assert float(paraphrase.headers["x-pressline-cache-similarity"]) >= 0.85
    for other in (
        "Write a headline for an article about security plugins",  # another entity
        "Write a headline for an article that is not about caching plugins",  # a negation
    ):
        assert ask(proxy, token, other).headers["x-pressline-cache"] == "miss", other
    # the vectors live in the collection named for the provider's model and dimensions
    assert (scratch / "qdrant" / "pressline_cache__provider-text-embedding-3-small-1536").is_dir()
    set_fake_state(
        fake, down={"openai": 500}
    )  # the embeddings API (and chat) failing is a miss, not an error
    try:
        failed = ask(proxy, token, "Please write a headline for an article about caching plugins!")
        assert failed.headers.get("x-pressline-cache") == "miss"  # answered upstream (a fallback route)
    finally:
        set_fake_state(fake, down={"openai": None})
