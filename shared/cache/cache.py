"""The response cache as the proxy uses it: look up before the budget hold, store after success.

Order of a lookup: bypass rules (tools, structured output, n > 1, high temperature, the client's
``Cache-Control: no-store`` / ``x-pressline-cache: bypass``) -> the exact layer (Redis) -> the
semantic layer (Qdrant Edge in process, or a Qdrant server): embed the whole conversation, search
the request's scope for candidates above the route's threshold, and serve the first one the
precise check accepts.  A hit is recorded in the cost ledger at zero cost with the cost it saved.
Any cache failure is a miss: the cache never fails a request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis

from shared.cost.ledger import CostEntry, CostLedger
from shared.cost.prices import PriceTable, UnknownModel, Usage

from . import replay
from .bypass import Directives, bypass_reason
from .entry import Completion, StreamCollector, from_reply
from .exact import ExactLayer
from .metrics import CacheMetrics
from .precision import compare_turns
from .request import CanonicalRequest, canonicalize

if TYPE_CHECKING:  # numpy and qdrant-client load only where the semantic layer is built
    from .embedder import Embedder
    from .semantic import SemanticLayer

log = logging.getLogger(__name__)

HEADER = "x-pressline-cache"
SIMILARITY_HEADER = "x-pressline-cache-similarity"


@dataclass(frozen=True)
class CacheConfig:
    """Parameters:
    ttl_s(float): How long an entry lives, unless its route says otherwise.
    route_ttl_s(dict[str, float]): TTL per route alias.
    threshold(float): Cosine similarity a semantic candidate needs, unless its route says otherwise.
    route_threshold(dict[str, float]): Threshold per route alias (1.0 or more: exact layer only).
    max_temperature(float): A request above it is not cached.
    candidates(int): Semantic candidates checked per lookup.
    sweep_interval_s(float): How often expired entries are swept (on the store path).
    default_max_tokens(int): The proxy's output cap for requests that name none (it is in the key).
    """

    ttl_s: float = 3600.0
    route_ttl_s: dict[str, float] = field(default_factory=dict)
    threshold: float = 0.86
    route_threshold: dict[str, float] = field(default_factory=dict)
    max_temperature: float = 1.0
    candidates: int = 3
    sweep_interval_s: float = 60.0
    default_max_tokens: int = 4096


@dataclass
class Probe:
    """One request's cache state, from its lookup to its store."""

    canonical: CanonicalRequest
    route: str
    ttl_s: float
    prompt_name: str
    store: bool
    vector: list[float] | None = None


@dataclass(frozen=True)
class Hit:
    """A cached answer ready to send: a JSON body, or SSE chunks for a stream."""

    headers: dict[str, str]
    body: dict[str, Any] | None = None
    chunks: Iterator[bytes] | None = None


class ResponseCache:
    """Parameters:
    config(CacheConfig)
    exact(ExactLayer)
    semantic(SemanticLayer | None): None: exact layer only.
    embedder(Embedder | None): Required with ``semantic``.
    ledger(CostLedger): Records each hit (zero cost, the cost saved).
    prices(PriceTable): Prices the saving.
    metrics(CacheMetrics | None)
    clock: Seconds since the epoch (a parameter for tests).
    """

    def __init__(
        self,
        config: CacheConfig,
        exact: ExactLayer,
        semantic: SemanticLayer | None,
        embedder: Embedder | None,
        ledger: CostLedger,
        prices: PriceTable,
        metrics: CacheMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.exact = exact
        self.semantic = semantic if embedder is not None else None
        self.embedder = embedder
        self.ledger = ledger
        self.prices = prices
        self.metrics = metrics
        self.clock = clock
        self._last_sweep = 0.0
        self._sweep_lock = threading.Lock()

    # -- lookup -----------------------------------------------------------------------------------

    def lookup(
        self,
        *,
        tenant: str,
        wire: str,
        body: dict[str, Any],
        route: str,
        provider: str,
        model: str,
        directives: Directives,
        prompt: str = "",
        request_id: str,
        job_id: str | None = None,
    ) -> tuple[Hit | None, Probe | None]:
        """(a hit to send, or None; the probe to store the answer with, or None when not cacheable)."""
        reason = directives.reason if not directives.store else None
        reason = reason or bypass_reason(body, max_temperature=self.config.max_temperature)
        if reason is not None:
            self._count("exact", "bypass")
            return None, None
        canonical = canonicalize(
            body,
            tenant=tenant,
            target=f"{provider}/{model}",
            default_max_tokens=self.config.default_max_tokens,
            prompt=prompt,
        )
        probe = Probe(
            canonical=canonical,
            route=route,
            ttl_s=self.config.route_ttl_s.get(route, self.config.ttl_s),
            prompt_name=prompt.split("@", 1)[0],
            store=directives.store,
        )
        if not directives.lookup:
            self._count("exact", "bypass")
            return None, probe
        headers = {
            "x-pressline-provider": provider,
            "x-pressline-model": model,
            "x-pressline-request-id": request_id,
        }
        stream = bool(body.get("stream"))
        include_usage = wire == "anthropic" or bool((body.get("stream_options") or {}).get("include_usage"))
        started = time.perf_counter()
        try:
            found = self.exact.get(tenant, canonical.exact_key())
        except redis.RedisError:
            log.warning("cache: the exact layer is unreachable; treating as a miss")
            self._count("exact", "error")
            return None, probe
        self._observe("exact", started, "hit" if found else "miss")
        if found is not None:
            self._record_hit(found, tenant, provider, model, request_id, job_id)
            return self._hit(
                wire, found, body, {**headers, HEADER: "hit-exact"}, stream, include_usage
            ), probe
        found_semantic = self._semantic_lookup(probe)
        if found_semantic is None:
            return None, probe
        completion, score = found_semantic
        self._record_hit(completion, tenant, provider, model, request_id, job_id)
        headers = {**headers, HEADER: "hit-semantic", SIMILARITY_HEADER: f"{score:.4f}"}
        return self._hit(wire, completion, body, headers, stream, include_usage), probe

    def _semantic_lookup(self, probe: Probe) -> tuple[Completion, float] | None:
        canonical = probe.canonical
        threshold = self.config.route_threshold.get(probe.route, self.config.threshold)
        if self.semantic is None or self.embedder is None or threshold >= 1.0 or not canonical.text_only:
            return None
        started = time.perf_counter()
        try:
            probe.vector = self.embedder.embed(canonical.conversation())
            candidates = self.semantic.search(
                probe.vector,
                tenant=canonical.tenant,
                model=canonical.target,
                scope=canonical.scope(),
                prompt=canonical.prompt,
                threshold=threshold,
                limit=self.config.candidates,
                now=self.clock(),
            )
            if candidates and probe.prompt_name:  # purged in another process's store?
                purged = self.exact.purged_at(canonical.tenant, probe.prompt_name)
                candidates = [c for c in candidates if float(c.payload.get("created_at", 0.0)) > purged]
        except Exception:  # an embedder or Qdrant failure must not fail the request
            log.warning("cache: the semantic layer failed; treating as a miss", exc_info=True)
            self._count("semantic", "error")
            return None
        new_turns = [t.text for t in canonical.turns]
        refused = False
        for candidate in candidates:
            verdict = compare_turns(list(candidate.payload.get("turns") or []), new_turns)
            if verdict.ok:
                self._observe("semantic", started, "hit")
                return Completion.from_json(candidate.payload["completion"]), candidate.score
            refused = True
            log.info("cache: semantic candidate refused (%.4f): %s", candidate.score, verdict.reason)
        self._observe("semantic", started, "refused" if refused else "miss")
        return None

    def _hit(
        self,
        wire: str,
        completion: Completion,
        body: dict[str, Any],
        headers: dict[str, str],
        stream: bool,
        include_usage: bool,
    ) -> Hit:
        model = str(body.get("model"))
        if not stream:
            return Hit(headers, body=replay.json_body(wire, completion, model))
        chunks = replay.sse_chunks(wire, completion, model, include_usage=include_usage)
        return Hit(
            {**headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"}, chunks=chunks
        )

    def _record_hit(
        self,
        completion: Completion,
        tenant: str,
        provider: str,
        model: str,
        request_id: str,
        job_id: str | None,
    ) -> None:
        """The ledger entry of a hit: zero upstream cost, and what the upstream call would have cost."""
        try:
            price = self.prices.price(provider, model)
        except UnknownModel:
            return
        saved = price.cost(
            Usage(
                input_tokens=completion.input_tokens,
                output_tokens=completion.output_tokens,
                cached_input_tokens=completion.cached_input_tokens,
            )
        )
        entry = CostEntry(
            request_id=request_id,
            tenant=tenant,
            provider=price.provider,
            model=price.model,
            usage=Usage(),
            cost_pico=0,
            job_id=job_id,
            target=f"{provider}/{model}",
            price_version=price.version,
            cache_hit=True,
            saved_pico=saved,
        )
        try:
            self.ledger.record(entry)
        except (redis.RedisError, ValueError):
            log.warning("cache: the hit could not be recorded in the ledger", exc_info=True)
        if self.metrics is not None:
            self.metrics.saved.labels(tenant).inc(saved / 1e12)

    # -- store ------------------------------------------------------------------------------------

    def store_reply(self, probe: Probe, wire: str, reply: dict[str, Any]) -> bool:
        """Store a non-streamed reply (in the client's shape) if it is a complete text answer."""
        completion = from_reply(wire, reply)
        return completion is not None and self.store(probe, completion)

    def collector(self, wire: str) -> StreamCollector:
        """Collects a stream's upstream events (provider ``wire``) for :meth:`store`."""
        return StreamCollector(wire)

    def store(self, probe: Probe, completion: Completion) -> bool:
        """Store ``completion`` in both layers; False when it is not stored (or storing failed)."""
        if not probe.store:
            return False
        canonical = probe.canonical
        digest = canonical.exact_key()
        try:
            self.exact.put(canonical.tenant, digest, completion, probe.ttl_s, probe.prompt_name)
            if self.semantic is not None and self.embedder is not None and canonical.text_only:
                vector = probe.vector or self.embedder.embed(canonical.conversation())
                now = self.clock()
                payload = {
                    "tenant": canonical.tenant,
                    "model": canonical.target,
                    "scope": canonical.scope(),
                    "prompt": canonical.prompt,
                    "prompt_name": probe.prompt_name,
                    "expires_at": now + probe.ttl_s,
                    "created_at": now,
                    "turns": [t.text for t in canonical.turns],
                    "completion": completion.to_json(),
                }
                self.semantic.upsert(digest, vector, payload)
        except Exception:
            log.warning("cache: the answer could not be stored", exc_info=True)
            return False
        self.maybe_sweep()
        return True

    # -- invalidation and expiry ---------------------------------------------------------------------

    def purge_prompt(self, tenant: str, prompt_name: str) -> int:
        """Drop every entry made under the prompt (both layers); how many."""
        longest = max([self.config.ttl_s, *self.config.route_ttl_s.values()])
        self.exact.mark_purged(tenant, prompt_name, self.clock(), longest + 60)
        removed = self.exact.purge_prompt(tenant, prompt_name)
        if self.semantic is not None:
            removed += self.semantic.purge_prompt(tenant, prompt_name)
        if self.metrics is not None and removed:
            self.metrics.evictions.labels("purged").inc(removed)
        return removed

    def maybe_sweep(self) -> None:
        """Sweep on a background thread when one is due, so no request waits for it (an
        embedded store's index build then runs there too)."""
        now = self.clock()
        if now - self._last_sweep < self.config.sweep_interval_s or not self._sweep_lock.acquire(
            blocking=False
        ):
            return
        self._last_sweep = now

        def run() -> None:
            try:
                self.sweep(now)
            finally:
                self._sweep_lock.release()

        threading.Thread(target=run, name="cache-sweep", daemon=True).start()

    def sweep(self, now: float | None = None) -> int:
        """Remove expired entries from both layers; how many."""
        now = self.clock() if now is None else now
        try:
            removed = self.exact.sweep(now)
            if self.semantic is not None:
                removed += self.semantic.sweep(now)
        except Exception:
            log.warning("cache: the sweep failed", exc_info=True)
            return 0
        if self.metrics is not None and removed:
            self.metrics.evictions.labels("expired").inc(removed)
        return removed

    def entries(self, layer: str) -> int:
        try:
            if layer == "exact":
                return self.exact.count(self.clock())
            return self.semantic.count(self.clock()) if self.semantic is not None else 0
        except Exception:
            return 0

    # -- metrics ----------------------------------------------------------------------------------

    def _count(self, layer: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.lookups.labels(layer, outcome).inc()

    def _observe(self, layer: str, started: float, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.lookup_seconds.labels(layer).observe(time.perf_counter() - started)
            self.metrics.lookups.labels(layer, outcome).inc()
