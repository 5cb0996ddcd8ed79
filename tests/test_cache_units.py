"""The response cache's parts: canonical keys, the precise check, bypass rules, TTL, sweep, scoping.

The semantic layer runs on embedded Qdrant (Qdrant Edge, in a temporary directory) with the real
offline embedder (loaded once per session); the exact layer on the suite's real Redis.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry

from shared.cache import CacheConfig, Completion, Directives, ResponseCache, canonicalize, compare
from shared.cache.bypass import bypass_reason, header_directives
from shared.cache.edge_index import EdgeIndex, StoreBusy
from shared.cache.embedder import MiniLMEmbedder
from shared.cache.entry import StreamCollector, from_reply
from shared.cache.exact import ExactLayer
from shared.cache.metrics import CacheMetrics
from shared.cache.semantic import SemanticLayer, collection_name
from shared.cost.ledger import CostLedger
from shared.cost.prices import PriceTable, Usage
from shared.prompts import PromptError, PromptStore

PAIRS = json.loads((Path(__file__).parent / "data" / "cache_pairs.json").read_text())["pairs"]
ANSWER = Completion(text="An answer.", finish="stop", input_tokens=12, output_tokens=3)


@pytest.fixture(scope="session")
def embedder() -> MiniLMEmbedder:
    e = MiniLMEmbedder()
    e.load()
    return e


class Clock:
    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


def make_cache(redis_url: str, embedder: MiniLMEmbedder, clock: Clock, **config: Any) -> ResponseCache:
    client = redis.Redis.from_url(redis_url)
    directory = Path(tempfile.mkdtemp(prefix="pressline-test-qdrant-")) / collection_name(embedder.id)
    semantic = SemanticLayer(EdgeIndex(directory, embedder.dimension))
    return ResponseCache(
        CacheConfig(**config),
        ExactLayer(client, "pressline"),
        semantic,
        embedder,
        CostLedger(client, "pressline"),
        PriceTable.load(),
        CacheMetrics(CollectorRegistry()),
        clock=clock,
    )


def body(text: str, system: str | None = None, **extra: Any) -> dict[str, Any]:
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": text}
    ]
    return {"model": "gpt-4o-mini", "messages": messages, **extra}


def lookup(cache: ResponseCache, b: dict[str, Any], tenant: str = "acme", **kw: Any) -> Any:
    return cache.lookup(
        tenant=tenant, wire="openai", body=b, route="gpt-4o-mini", provider="openai", model="gpt-4o-mini",
        directives=kw.pop("directives", Directives()), request_id="r1", **kw,
    )  # fmt: skip


# -- canonical key ------------------------------------------------------------------------------------


def key(b: dict[str, Any], **kw: Any) -> str:
    args = {"tenant": "acme", "target": "openai/gpt-4o-mini", "default_max_tokens": 4096, **kw}
    return canonicalize(b, **args).exact_key()


def test_the_key_ignores_transport_fields_and_the_api_shape() -> None:
    openai_body = body("Hi there", "Be brief", temperature=0, max_tokens=50, stop=["b", "a"])
    assert key(openai_body) == key({**openai_body, "stream": True, "stream_options": {}, "user": "u1"})
    anthropic_body = {
        "model": "x",
        "system": [{"type": "text", "text": "Be brief"}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi there"}]}],
        "temperature": 0.0,
        "max_tokens": 50,
        "stop_sequences": ["a", "b"],
    }
    assert key(openai_body) == key(anthropic_body)


@pytest.mark.parametrize(
    "change",
    [
        {"temperature": 0.5},
        {"max_tokens": 51},
        {"stop": ["c"]},
        {"top_p": 0.9},
        {"seed": 7},
        {"messages": [{"role": "user", "content": "Hi there!"}]},
        {"messages": [{"role": "system", "content": "Be long"}, {"role": "user", "content": "Hi there"}]},
        {"some_new_param": 1},  # unknown parameters are assumed to change the answer
    ],
)
def test_every_answer_changing_field_changes_the_key(change: dict[str, Any]) -> None:
    base = body("Hi there", "Be brief", temperature=0, max_tokens=50)
    assert key(base) != key({**base, **change})


def test_tenant_target_and_prompt_version_are_in_the_key() -> None:
    b = body("Hi there")
    assert key(b) != key(b, tenant="globex")
    assert key(b) != key(b, target="groq/llama-3.1-8b-instant")
    assert key(b, prompt="intro@1") != key(b, prompt="intro@2")
    # the default output cap is part of the key when the request names none
    assert key(b) == key({**b, "max_tokens": 4096}) != key(b, default_max_tokens=100)


def test_the_semantic_scope_holds_the_system_prompt_exactly() -> None:
    def scope(b: dict[str, Any]) -> str:
        return canonicalize(b, tenant="acme", target="openai/gpt-4o-mini", default_max_tokens=1).scope()

    assert scope(body("Explain caching", "You are kind")) == scope(
        body("Explain caching, please", "You are kind")
    )
    assert scope(body("Explain caching", "You are kind")) != scope(body("Explain caching", "You are rude"))


# -- the precise check ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pair", [p for p in PAIRS if not p["match"] and "system_a" not in p], ids=lambda p: p["b"]
)
def test_the_precise_check_refuses_every_near_miss(pair: dict[str, Any]) -> None:
    assert not compare(pair["a"], pair["b"]).ok


def test_the_precise_check_accepts_most_paraphrases() -> None:
    paraphrases = [p for p in PAIRS if p["match"]]
    accepted = sum(compare(p["a"], p["b"]).ok for p in paraphrases)
    assert len(paraphrases) >= 100 and accepted / len(paraphrases) >= 0.9


def test_the_labelled_set_is_large_and_hard() -> None:
    kinds = {p["kind"] for p in PAIRS if not p["match"]}
    assert len(PAIRS) >= 200
    assert {"negation", "entity", "number", "direction", "format", "audience", "system_prompt"} <= kinds


def test_the_labelled_set_through_the_cache_with_default_settings(
    redis_url: str, embedder: MiniLMEmbedder
) -> None:
    """Store each pair's first prompt, look the second up: the default threshold, scope and
    precise check together keep false hits at most 1% and hit at least 60% of the paraphrases."""
    cache = make_cache(redis_url, embedder, Clock())
    hits = {True: 0, False: 0}
    for i, pair in enumerate(PAIRS):
        tenant = f"t{i}"  # one tenant per pair: the pairs never see each other's entries
        _, probe = lookup(cache, body(pair["a"], pair.get("system_a")), tenant=tenant)
        assert probe is not None and cache.store(probe, ANSWER)
        hit, _ = lookup(cache, body(pair["b"], pair.get("system_b")), tenant=tenant)
        hits[pair["match"]] += hit is not None
    paraphrases = sum(p["match"] for p in PAIRS)
    near_misses = len(PAIRS) - paraphrases
    assert near_misses >= 100 and paraphrases >= 100
    assert hits[False] / near_misses <= 0.01, f"{hits[False]} false hits of {near_misses}"
    assert hits[True] / paraphrases >= 0.60, f"{hits[True]} hits of {paraphrases} paraphrases"


@pytest.mark.parametrize(
    ("a", "b", "reason"),
    [
        ("Is this safe?", "Is this unsafe?", "opposite"),
        ("Convert Celsius to Fahrenheit", "Convert Fahrenheit to Celsius", "direction"),
        ("Write 3 tips", "Write three tips", None),
        ("Write 3 tips", "Write 4 tips", "numbers"),
        ("Explain caching", "Do not explain caching", "negation"),
        ("Write a headline about Paris", "Write a headline about London", "content"),
    ],
)
def test_the_precise_check_says_why(a: str, b: str, reason: str | None) -> None:
    verdict = compare(a, b)
    assert verdict.ok is (reason is None)
    assert reason is None or reason in verdict.reason


# -- bypass ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"tool_choice": "auto"}, "tools"),
        ({"response_format": {"type": "json_object"}}, "structured_output"),
        ({"response_format": {"type": "json_schema", "json_schema": {}}}, "structured_output"),
        ({"n": 2}, "n"),
        ({"temperature": 1.5}, "temperature"),
        ({"messages": [{"role": "tool", "tool_call_id": "x", "content": "42"}]}, "tools"),
    ],
)
def test_bypass_rules(extra: dict[str, Any], reason: str) -> None:
    assert bypass_reason({**body("Hi"), **extra}, max_temperature=1.0) == reason


def test_plain_requests_are_cacheable_and_headers_can_opt_out() -> None:
    assert bypass_reason(body("Hi", temperature=0.2, n=1), max_temperature=1.0) is None
    assert bypass_reason(body("Hi", response_format={"type": "text"}), max_temperature=1.0) is None
    assert header_directives("no-store", None) == Directives(False, False, "no-store")
    assert header_directives(None, "bypass") == Directives(False, False, "x-pressline-cache")
    assert header_directives("max-age=0, no-cache", None) == Directives(False, True, "no-cache")
    assert header_directives(None, None) == Directives()


# -- what is stored -----------------------------------------------------------------------------------


def test_only_complete_text_answers_are_storable() -> None:
    ok = {"choices": [{"message": {"content": "Hi"}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 3}}
    assert from_reply("openai", ok) == Completion("Hi", "stop", 3, 0)
    tool = {"choices": [{"message": {"content": None, "tool_calls": [{}]}, "finish_reason": "tool_calls"}]}
    assert from_reply("openai", tool) is None
    assert from_reply("openai", {"error": {"message": "boom"}}) is None
    anthropic_tool = {"type": "message", "stop_reason": "tool_use", "content": [{"type": "tool_use"}]}
    assert from_reply("anthropic", anthropic_tool) is None


def test_a_cut_or_failed_stream_is_not_collected() -> None:
    chunk = '{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}'
    finish = '{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}'
    complete = StreamCollector("openai")
    for data in (chunk, finish, "[DONE]"):
        complete.feed(None, data)
    assert complete.result() == Completion("Hi", "stop", 0, 0)
    cut = StreamCollector("openai")
    cut.feed(None, chunk)
    assert cut.result() is None
    errored = StreamCollector("openai")
    for data in (chunk, '{"error":{"message":"x"}}', "[DONE]"):
        errored.feed(None, data)
    assert errored.result() is None
    anthropic = StreamCollector("anthropic")
    anthropic.feed("content_block_start", '{"content_block":{"type":"tool_use"}}')
    anthropic.feed("message_stop", "{}")
    assert anthropic.result() is None


# -- the cache -----------------------------------------------------------------------------------------


def test_exact_then_semantic_then_refused(redis_url: str, embedder: MiniLMEmbedder) -> None:
    cache = make_cache(redis_url, embedder, Clock())
    hit, probe = lookup(cache, body("Write a headline for an article about page speed"))
    assert hit is None and probe is not None
    assert cache.store(probe, ANSWER)
    exact, _ = lookup(cache, body("Write a headline for an article about page speed"))
    assert exact.headers["x-pressline-cache"] == "hit-exact"
    assert exact.body["choices"][0]["message"]["content"] == "An answer."
    similar, _ = lookup(cache, body("Please write a headline for an article about page speed"))
    assert similar.headers["x-pressline-cache"] == "hit-semantic"
    assert float(similar.headers["x-pressline-cache-similarity"]) >= 0.85
    near_miss, _ = lookup(cache, body("Write a headline for an article about page weight"))
    assert near_miss is None


def test_entries_expire_at_their_ttl_and_are_swept(redis_url: str, embedder: MiniLMEmbedder) -> None:
    clock = Clock()
    cache = make_cache(redis_url, embedder, clock, ttl_s=60)
    _, probe = lookup(cache, body("Explain caching to beginners"))
    cache.store(probe, ANSWER)
    assert cache.entries("semantic") == 1
    clock.now += 61
    # the semantic layer refuses an expired entry on read, before any sweep
    hit, _ = lookup(cache, body("Could you explain caching to beginners?"))
    assert hit is None
    assert cache.sweep() == 1 and cache.entries("semantic") == 0


def test_a_route_ttl_overrides_the_default(redis_url: str, embedder: MiniLMEmbedder) -> None:
    cache = make_cache(redis_url, embedder, Clock(), ttl_s=3600, route_ttl_s={"gpt-4o-mini": 5})
    _, probe = lookup(cache, body("Hi"))
    assert probe.ttl_s == 5


def test_tenants_never_share_entries(redis_url: str, embedder: MiniLMEmbedder) -> None:
    cache = make_cache(redis_url, embedder, Clock())
    _, probe = lookup(cache, body("Explain caching to beginners"), tenant="acme")
    cache.store(probe, ANSWER)
    assert lookup(cache, body("Explain caching to beginners"), tenant="globex")[0] is None
    assert lookup(cache, body("Explain caching to beginners"), tenant="acme")[0] is not None


def test_a_hit_is_in_the_ledger_at_zero_cost_with_the_saving(
    redis_url: str, embedder: MiniLMEmbedder
) -> None:
    cache = make_cache(redis_url, embedder, Clock())
    _, probe = lookup(cache, body("Hi"))
    cache.store(probe, ANSWER)
    lookup(cache, body("Hi"))
    (entry,) = CostLedger(redis.Redis.from_url(redis_url), "pressline").entries("acme")
    price = PriceTable.load().price("openai", "gpt-4o-mini")
    assert entry.cache_hit and entry.cost_pico == 0
    assert entry.saved_pico == price.cost(Usage(12, 3)) > 0


def test_purging_a_prompt_drops_its_entries_in_both_layers(redis_url: str, embedder: MiniLMEmbedder) -> None:
    cache = make_cache(redis_url, embedder, Clock())
    _, probe = lookup(cache, body("Hi", "You write intros."), prompt="intro@1")
    cache.store(probe, ANSWER)
    assert cache.purge_prompt("acme", "intro") == 2
    assert lookup(cache, body("Hi", "You write intros."), prompt="intro@1")[0] is None


def test_a_purge_reaches_entries_in_another_process_store(redis_url: str, embedder: MiniLMEmbedder) -> None:
    """Embedded stores are per process: a purge made elsewhere is known through Redis."""
    clock = Clock()
    here, elsewhere = make_cache(redis_url, embedder, clock), make_cache(redis_url, embedder, clock)
    _, probe = lookup(elsewhere, body("Introduce our backup guide", "You write intros."), prompt="intro@1")
    elsewhere.store(probe, ANSWER)
    paraphrase = body("Please introduce our backup guide.", "You write intros.")
    assert lookup(elsewhere, paraphrase, prompt="intro@1")[0].headers["x-pressline-cache"] == "hit-semantic"
    clock.now += 1
    here.purge_prompt("acme", "intro")  # this process's store never held the entry
    assert elsewhere.semantic is not None and elsewhere.semantic.count(clock.now) == 1
    assert lookup(elsewhere, paraphrase, prompt="intro@1")[0] is None


def unit(seed: int, dimension: int = 384) -> list[float]:
    import numpy as np

    v = np.random.default_rng(seed).standard_normal(dimension)
    return (v / np.linalg.norm(v)).tolist()


def test_the_embedded_store_builds_hnsw_and_filters_through_payload_indexes(tmp_path: Path) -> None:
    index = EdgeIndex(tmp_path / "c", 384, indexing_threshold_kb=100)  # ~66 vectors
    now = 1_900_000_000.0
    points = [
        (str(uuid.UUID(int=i)), unit(i), {"tenant": f"t{i % 3}", "model": "m", "scope": "s", "prompt": "",
                                          "prompt_name": "", "expires_at": now + (10 if i % 2 else -10)})
        for i in range(600)
    ]  # fmt: skip
    index.upsert(points)
    assert set(index.info().payload_schema) >= {
        "tenant",
        "model",
        "scope",
        "prompt",
        "prompt_name",
        "expires_at",
    }
    assert index.sweep(now) == 300  # the expired half; then the tail is indexed
    info = index.info()
    assert info.points_count == 300 and info.indexed_vectors_count >= 300
    found = index.search(unit(7), match={"tenant": "t1", "model": "m"}, alive_at=now, threshold=0.5, limit=3)
    assert [round(c.score, 4) for c in found][:1] == [1.0] and found[0].payload["tenant"] == "t1"
    none = index.search(unit(7), match={"tenant": "t0", "model": "m"}, alive_at=now, threshold=0.5, limit=3)
    assert none == []  # point 7 belongs to t1
    assert index.delete({"tenant": "t1"}) == 100 and index.count(now) == 200
    index.close()
    reopened = EdgeIndex(tmp_path / "c", 384)
    assert reopened.count(now) == 200  # durable
    reopened.close()


def test_the_embedded_store_belongs_to_one_process(tmp_path: Path) -> None:
    index = EdgeIndex(tmp_path / "c", 384)
    other = subprocess.run(
        [sys.executable, "-c", "import sys; from pathlib import Path; from shared.cache.edge_index import "
         "EdgeIndex, StoreBusy\ntry: EdgeIndex(Path(sys.argv[1]), 384)\nexcept StoreBusy: sys.exit(7)",
         str(tmp_path / "c")],
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    assert other.returncode == 7, other.stderr
    index.close()
    with pytest.raises(StoreBusy):
        _open_twice(tmp_path / "d")  # in one process too: the factory keeps one per directory


def _open_twice(directory: Path) -> None:
    first = EdgeIndex(directory, 384)
    try:
        EdgeIndex(directory, 384)
    finally:
        first.close()


def test_the_collection_is_named_for_the_embedding_model(embedder: MiniLMEmbedder) -> None:
    assert collection_name(embedder.id) == f"pressline_cache__{embedder.id}"
    assert embedder.id.startswith("all-minilm-l6-v2-int8-")


# -- prompt library -------------------------------------------------------------------------------------


def test_prompt_versions_publish_and_rollback(redis_url: str) -> None:
    changed: list[tuple[str, str]] = []
    store = PromptStore(
        redis.Redis.from_url(redis_url), "pressline", on_change=lambda t, n: changed.append((t, n))
    )
    store.create("acme", "intro", "Write intros.")
    with pytest.raises(PromptError):
        store.create("acme", "intro", "again")
    assert store.publish("acme", "intro", "Write short intros.").version == 2
    assert store.resolve("acme", "intro").text == "Write short intros."
    assert store.resolve("acme", "intro@1").text == "Write intros."
    assert store.rollback("acme", "intro", 1).current == 1
    assert store.resolve("acme", "intro").ref == "intro@1"
    assert changed == [("acme", "intro"), ("acme", "intro")]
    assert store.get("globex", "intro") is None  # per tenant
    with pytest.raises(PromptError):
        store.rollback("acme", "intro", 9)
