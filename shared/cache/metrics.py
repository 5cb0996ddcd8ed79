"""The response cache's Prometheus metrics, in the registry its owner passes in."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LOOKUP_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class CacheMetrics:
    """Hit rate by layer, lookup latency, dollars saved, live entries and evictions.

    Parameters:
      registry(CollectorRegistry)
      entries: Counts a layer's live entries (``exact`` / ``semantic``) at scrape time.
    """

    def __init__(self, registry: CollectorRegistry, entries: Callable[[str], int] | None = None) -> None:
        self.lookups = Counter(
            "pressline_cache_lookups_total",
            "Cache lookups by layer (exact, semantic) and outcome (hit, miss, refused, bypass, error).",
            ("layer", "outcome"),
            registry=registry,
        )
        self.lookup_seconds = Histogram(
            "pressline_cache_lookup_seconds",
            "Lookup time by layer (semantic: embedding, search and the precise check).",
            ("layer",),
            buckets=_LOOKUP_BUCKETS,
            registry=registry,
        )
        self.saved = Counter(
            "pressline_cache_saved_usd_total",
            "Upstream spend avoided by cache hits, in dollars (exact figures are in the ledger).",
            ("tenant",),
            registry=registry,
        )
        self.evictions = Counter(
            "pressline_cache_evictions_total",
            "Entries removed, by reason (expired, purged).",
            ("reason",),
            registry=registry,
        )
        if entries is not None:
            gauge = Gauge("pressline_cache_entries", "Live entries by layer.", ("layer",), registry=registry)
            for layer in ("exact", "semantic"):
                gauge.labels(layer).set_function(lambda layer=layer: float(entries(layer)))  # type: ignore[misc]
