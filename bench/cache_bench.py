"""Response-cache benchmark: lookup latency, embedding time, memory, and hit / false-hit rates.

* Embedding: one prompt at a time through the offline embedder (cold load and p50/p99).
* Exact lookup p50: a Redis GET of the canonical key (the redis-server is started here).
* Semantic lookup p50/p99 at 10,000 and 100,000 entries (``--sizes``): the full path a miss of
  the exact layer takes — embed the conversation, filtered search in Qdrant, the precise check —
  in embedded mode (Qdrant Edge in this process, HNSW built after the fill), against a Qdrant
  server when ``QDRANT_URL`` is set, and with ``--qdrant-client-local`` in qdrant-client's local
  mode too (the Python brute force the embedded backend replaced).
* Quality: the labelled pairs (tests/data/cache_pairs.json) through the real ResponseCache at
  several thresholds: store ``a``, look up ``b``; a hit on a must-not-match pair is a false hit.

Prints a table; writes JSON to bench/results/cache_bench.json.  ``make bench-cache``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import redis
from prometheus_client import CollectorRegistry
from qdrant_client import QdrantClient

from infra.redis_server import free_port, start_redis, stop_process
from shared.cache import CacheConfig, Completion, Directives, ResponseCache, canonicalize
from shared.cache.edge_index import EdgeIndex
from shared.cache.embedder import MiniLMEmbedder
from shared.cache.exact import ExactLayer
from shared.cache.metrics import CacheMetrics
from shared.cache.precision import compare_turns
from shared.cache.semantic import SemanticLayer, collection_name
from shared.cache.server_index import ServerIndex
from shared.cache.vector_index import VectorIndex
from shared.cost.ledger import CostLedger
from shared.cost.prices import PriceTable

ROOT = Path(__file__).resolve().parent.parent
PAIRS = ROOT / "tests" / "data" / "cache_pairs.json"
RESULTS = ROOT / "bench" / "results" / "cache_bench.json"
ANSWER = Completion(text="A cached answer.", finish="stop", input_tokens=20, output_tokens=5)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q)) * 1000


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def body(text: str, system: str = "") -> dict[str, Any]:
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": text}
    ]
    return {"model": "gpt-4o-mini", "messages": messages, "temperature": 0}


def make_cache(
    client: redis.Redis, index: VectorIndex, embedder: MiniLMEmbedder, threshold: float
) -> ResponseCache:
    return ResponseCache(
        CacheConfig(threshold=threshold, sweep_interval_s=1e9),
        ExactLayer(client, f"bench{uuid.uuid4().hex[:6]}"),
        SemanticLayer(index),
        embedder,
        CostLedger(client, "bench"),
        PriceTable.load(),
        CacheMetrics(CollectorRegistry()),
    )


def lookup(cache: ResponseCache, b: dict[str, Any], tenant: str = "acme") -> Any:
    return cache.lookup(
        tenant=tenant, wire="openai", body=b, route="gpt-4o-mini", provider="openai", model="gpt-4o-mini",
        directives=Directives(), request_id="bench",
    )  # fmt: skip


def quality(
    client: redis.Redis, embedder: MiniLMEmbedder, thresholds: list[float], scratch: Path
) -> list[dict[str, Any]]:
    """Each pair under its own tenant, so pairs never see each other's entries."""
    pairs = json.loads(PAIRS.read_text())["pairs"]
    rows = []
    for threshold in thresholds:
        true_hits = false_hits = positives = negatives = 0
        by_kind: dict[str, int] = {}
        index = EdgeIndex(scratch / f"quality-{threshold}", embedder.dimension)
        cache = make_cache(client, index, embedder, threshold)
        for n, pair in enumerate(pairs):
            tenant = f"pair{n}"
            _, probe = lookup(cache, body(pair["a"], pair.get("system_a", "")), tenant)
            cache.store(probe, ANSWER)
            hit, _ = lookup(cache, body(pair["b"], pair.get("system_b", "")), tenant)
            if pair["match"]:
                positives += 1
                true_hits += hit is not None
            else:
                negatives += 1
                if hit is not None:
                    false_hits += 1
                    by_kind[pair["kind"]] = by_kind.get(pair["kind"], 0) + 1
            client.delete(cache.exact.key(tenant, probe.canonical.exact_key()))
        index.close()
        rows.append(
            {
                "threshold": threshold,
                "paraphrase_hit_rate": true_hits / positives,
                "false_hit_rate": false_hits / negatives,
                "false_hits_by_kind": by_kind,
                "pairs": len(pairs),
            }
        )
    return rows


def populate(index: VectorIndex, embedder: MiniLMEmbedder, n: int, tenants: int = 50) -> str:
    """``n`` entries over ``tenants`` tenants (random unit vectors: population speed, not quality);
    returns the scope of tenant 0's entries, which the timed lookups search."""
    rng = np.random.default_rng(1)
    scope = canonicalize(body("x"), tenant="t0", target="openai/gpt-4o-mini", default_max_tokens=4096).scope()
    batch = 2000
    for start in range(0, n, batch):
        size = min(batch, n - start)
        vectors = rng.standard_normal((size, embedder.dimension)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        payloads = [
            {
                "tenant": f"t{(start + i) % tenants}",
                "model": "openai/gpt-4o-mini",
                "scope": scope if (start + i) % tenants == 0 else f"s{(start + i) % tenants}",
                "prompt": "",
                "prompt_name": "",
                "expires_at": time.time() + 86400,
                "turns": [f"stored prompt {start + i}"],
                "completion": ANSWER.to_json(),
            }
            for i in range(size)
        ]
        index.upsert([(str(uuid.uuid4()), v, p) for v, p in zip(vectors.tolist(), payloads, strict=True)])
    return scope


def open_index(mode: str, name: str, dimension: int, scratch: Path) -> VectorIndex:
    if mode == "embedded":
        return EdgeIndex(scratch / name, dimension)
    if mode == "server":
        return ServerIndex(QdrantClient(url=os.environ["QDRANT_URL"]), name, dimension)
    return ServerIndex(QdrantClient(location=":memory:"), name, dimension)  # qdrant-client local mode


def semantic_latency(
    embedder: MiniLMEmbedder, n: int, mode: str, queries: int, scratch: Path
) -> dict[str, Any]:
    before = rss_mb()
    warnings.simplefilter("ignore")  # qdrant-client local mode warns past 20,000 points
    index = open_index(mode, f"{collection_name(embedder.id)}-bench{n}", embedder.dimension, scratch)
    layer = SemanticLayer(index)
    started = time.monotonic()
    scope = populate(index, embedder, n)
    fill_s = time.monotonic() - started
    started = time.monotonic()
    if isinstance(index, EdgeIndex):
        index.optimize()  # what the sweep does: build HNSW over the plain segments
    index_s = time.monotonic() - started
    prompts = [f"Write a headline for an article about topic number {i}" for i in range(queries)]
    times: list[float] = []
    for text in prompts:
        t0 = time.perf_counter()
        vector = embedder.embed(text)
        candidates = layer.search(
            vector, tenant="t0", model="openai/gpt-4o-mini", scope=scope, prompt="", threshold=0.0, limit=3
        )
        for c in candidates:
            compare_turns(list(c.payload["turns"]), [text])
        times.append(time.perf_counter() - t0)
    result = {
        "mode": mode,
        "entries": n,
        "fill_s": round(fill_s, 1),
        "index_build_s": round(index_s, 1),
        "lookup_p50_ms": round(pct(times, 50), 2),
        "lookup_p99_ms": round(pct(times, 99), 2),
        "rss_delta_mb": round(rss_mb() - before, 1),
    }
    if isinstance(index, EdgeIndex):
        info = index.info()
        result["indexed_vectors"] = info.indexed_vectors_count
        result["segments"] = info.segments_count
    if mode == "server" and isinstance(index, ServerIndex):
        index.client.delete_collection(index.collection)
    index.close()
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--thresholds", default="0.75,0.80,0.85,0.90,0.95")
    parser.add_argument(
        "--qdrant-client-local", action="store_true", help="also time qdrant-client's local mode"
    )
    args = parser.parse_args(argv)
    report: dict[str, Any] = {"machine": {"cpus": os.cpu_count()}}

    embedder = MiniLMEmbedder()
    t0 = time.perf_counter()
    embedder.load()
    report["embedding"] = {"model": embedder.id, "cold_load_ms": round((time.perf_counter() - t0) * 1000, 1)}
    samples = [p["b"] for p in json.loads(PAIRS.read_text())["pairs"]]
    times = []
    for text in samples:
        t = time.perf_counter()
        embedder.embed(text)
        times.append(time.perf_counter() - t)
    report["embedding"].update(p50_ms=round(pct(times, 50), 2), p99_ms=round(pct(times, 99), 2))

    scratch_dir = Path(tempfile.mkdtemp(prefix="pressline-cache-bench-"))
    with tempfile.TemporaryDirectory() as scratch:
        port = free_port()
        proc = start_redis(port, Path(scratch), durable=False)
        try:
            client = redis.Redis(port=port)
            exact = ExactLayer(client, "bench")
            digests = [uuid.uuid4().hex for _ in range(2000)]
            for d in digests:
                exact.put("acme", d, ANSWER, 3600)
            times = []
            for d in digests:
                t = time.perf_counter()
                exact.get("acme", d)
                times.append(time.perf_counter() - t)
            report["exact_lookup"] = {"p50_ms": round(pct(times, 50), 3), "p99_ms": round(pct(times, 99), 3)}
            thresholds = [float(x) for x in args.thresholds.split(",")]
            report["quality"] = quality(client, embedder, thresholds, scratch_dir)
        finally:
            stop_process(proc)

    report["semantic_lookup"] = []
    modes = ["embedded"] + (["server"] if os.environ.get("QDRANT_URL") else [])
    modes += ["client-local"] if args.qdrant_client_local else []
    try:
        for n in (int(x) for x in args.sizes.split(",")):
            for mode in modes:
                report["semantic_lookup"].append(
                    semantic_latency(embedder, n, mode, args.queries, scratch_dir)
                )
                print(json.dumps(report["semantic_lookup"][-1]), flush=True)
    finally:
        shutil.rmtree(scratch_dir, ignore_errors=True)
    report["rss_mb"] = round(rss_mb(), 1)

    e = report["embedding"]
    print(
        f"\nembedding  {e['model']}: cold load {e['cold_load_ms']} ms, "
        f"p50 {e['p50_ms']} ms, p99 {e['p99_ms']} ms"
    )
    x = report["exact_lookup"]
    print(f"exact lookup (Redis GET): p50 {x['p50_ms']} ms, p99 {x['p99_ms']} ms")
    print("\nsemantic lookup (embed + filtered search + precise check)")
    print(f"{'mode':<14}{'entries':>9}{'p50 ms':>9}{'p99 ms':>9}{'fill s':>8}{'HNSW s':>8}{'RSS +MB':>9}")
    for r in report["semantic_lookup"]:
        print(
            f"{r['mode']:<14}{r['entries']:>9}{r['lookup_p50_ms']:>9}{r['lookup_p99_ms']:>9}"
            f"{r['fill_s']:>8}{r['index_build_s']:>8}{r['rss_delta_mb']:>9}"
        )
    print(f"\nhit rates on {report['quality'][0]['pairs']} labelled pairs (precise check on)")
    print(f"{'threshold':>10}{'paraphrases hit':>18}{'false hits':>12}")
    for q in report["quality"]:
        print(f"{q['threshold']:>10.2f}{q['paraphrase_hit_rate']:>18.1%}{q['false_hit_rate']:>12.1%}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
